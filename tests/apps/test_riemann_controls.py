import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import geolm.apps.riemann_controls as RC
from geolm.core.errors import ConfigError

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "riemann_controls.py"


def test_plan_runs_every_control_at_every_seed_and_the_sweep_at_the_first(tmp_path):
    table, cells, base = RC.plan({"dim": 32, "steps": 3, "data": "builtin"}, "3,1", output=str(tmp_path))
    assert [(j.name, j.seed) for j in table[:2]] == [("learned", 3), ("learned", 1)] and len(table) == 10
    by = {(j.name, j.seed): j.overrides for j in table}
    assert by[("alpha0", 1)]["alpha"] == 0.0 and by[("identity", 3)]["metric"] == "identity"
    assert by[("no_ode", 3)]["no_ode"] is True and by[("lambda0", 1)]["lambda_metric"] == 0.0
    assert {j.name for j in cells} == {"r1_eps0.1", "r1_eps1", "r4_eps0.1", "r4_eps1", "r16_eps0.1", "r16_eps1"}
    assert {j.seed for j in cells} == {3} and base["map_points"] == 0  # rank 64 > dim 32 is left out
    for bad in ({"alpha": 0.5}, {"seed": 2}, {"metric": "identity"}):
        with pytest.raises(ConfigError, match="is set by each run of this command"):
            RC.plan(bad)
    with pytest.raises(ConfigError, match="--controls: unknown nope"):
        RC.plan({}, controls=("nope",))


def test_compare_calls_a_difference_beyond_noise_only_past_two_standard_errors():
    a, b = {"mean": 10.0, "sd": 1.0, "n": 4}, {"mean": 11.5, "sd": 1.0, "n": 4}
    c = RC.compare(a, b)
    assert c["diff"] == -1.5 and c["se"] == pytest.approx(0.7071, abs=1e-4) and c["beyond_noise"] is True
    assert RC.compare(a, dict(b, mean=11.0))["beyond_noise"] is False
    assert RC.compare(a, dict(b, sd=None))["beyond_noise"] is None


def test_the_sweep_is_scored_on_heldout_training_stories_and_its_best_cell_runs_at_every_seed(tmp_path, monkeypatch):
    calls = []
    ppl = {"r1_eps0.1": 30.0, "r1_eps1": 20.0, "r4_eps0.1": 25.0, "r4_eps1": float("nan")}

    def fake(job, config_file=None, progress=True, say=print):
        calls.append(job)
        if job.group == "sweep":
            return {"val_ppl": ppl[job.name], "steps": 3}
        return {"val_ppl": 10.0 + job.seed + (job.name == "alpha0"), "steps": 3}

    monkeypatch.setattr(RC, "run_job", fake)
    table, cells, base = RC.plan({"data": "builtin", "dim": 8, "rank": 2, "max_train_stories": 30}, "0,1,2",
                                 controls=("learned", "alpha0"), output=str(tmp_path))
    res = RC.run_all(table, cells, base, tmp_path)
    sweep = [j for j in calls if j.group == "sweep"]
    assert sweep and all(j.overrides["val_data"] == str(tmp_path / "heldout.txt") for j in sweep)
    assert all("val_data" not in j.overrides for j in calls if j.group != "sweep")
    assert (tmp_path / "heldout.txt").read_text().count("<|endoftext|>") == RC.HELDOUT
    assert res["sweep"]["best"] == "r1_eps1" and res["sweep"]["heldout"] == "training stories 30..529"
    best = [j for j in calls if j.group == "best"]
    assert [j.seed for j in best] == [0, 1, 2] and {j.overrides["rank"] for j in best} == {1}
    assert res["controls"]["learned"]["mean"] == 11.0 and res["vs_alpha0"]["learned"]["diff"] == pytest.approx(-1.0)
    assert json.loads((tmp_path / "controls.json").read_text())["sweep"]["best"] == "r1_eps1"
    assert "within noise" in RC.format_result(res) or "beyond noise" in RC.format_result(res)


def test_a_best_cell_equal_to_the_learned_control_reuses_its_runs(tmp_path, monkeypatch):
    calls = []

    def fake(job, config_file=None, progress=True, say=print):
        calls.append(job)
        if job.group == "sweep":
            return {"val_ppl": 5.0 if job.name == "r4_eps0.1" else 9.0, "steps": 3}
        return {"val_ppl": 10.0 + job.seed, "steps": 3}

    monkeypatch.setattr(RC, "run_job", fake)
    table, cells, base = RC.plan({"data": "builtin", "dim": 8, "rank": 4, "eps": 0.1, "max_train_stories": 30},
                                 "0,1", controls=("learned", "alpha0"), output=str(tmp_path))
    res = RC.run_all(table, cells, base, tmp_path, say=lambda *a: None)
    assert res["sweep"]["best"] == "r4_eps0.1" and not [j for j in calls if j.group == "best"]
    assert res["controls"]["best_cell"]["mean"] == res["controls"]["learned"]["mean"] == 10.5
    assert "learned control's runs" in res["controls"]["best_cell"]["label"]
    assert RC.same_run(dict(base, rank=4, seed=1), dict(base, seed=1))
    assert not RC.same_run(dict(base, rank=1, seed=1), dict(base, seed=1))


def test_quick_script_runs_resumes_and_refuses_a_control_flag(tmp_path):
    env = {**os.environ, "GEOLM_MPI": "0"}
    args = [sys.executable, str(SCRIPT), "--quick", "--seeds", "0,1", "--controls", "alpha0", "--no-sweep",
            "--output", str(tmp_path)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=SCRIPT.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "controls.json").read_text())
    assert res["controls"]["alpha0"]["n"] == 2 and set(res["controls"]) == {"alpha0"} and "g = eps I" in r.stdout
    r2 = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=SCRIPT.parent)
    assert r2.returncode == 0 and r2.stdout.count("skipped") == 2
    assert json.loads((tmp_path / "controls.json").read_text())["controls"] == res["controls"]
    r3 = subprocess.run(args + ["--alpha", "0.5"], capture_output=True, text=True, timeout=60, env=env)
    assert r3.returncode != 0 and "--alpha is set by each run" in r3.stderr and r3.stderr.strip().count("\n") == 0
