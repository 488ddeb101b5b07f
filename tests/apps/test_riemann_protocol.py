"""examples/riemann_protocol.py --quick end to end (subprocess): the claim table, the figure, the growth record, a
rerun that trains nothing; a phase redone in-process ends bit-identical; the plan's layers and refusals; the
claim directions on made-up telemetry."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geolm.apps.riemann_protocol import (ProtocolConfig, claims_table, format_claims, marker_steps, plan_protocol,
                                         run_protocol)
from geolm.core.errors import ConfigError
from geolm.training.checkpoint import latest_checkpoint, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "riemann_protocol.py"
THIRD = ROOT / "examples" / "configs" / "riemann_third.toml"


def _run(args, timeout=240):
    return subprocess.run([sys.executable, str(SCRIPT)] + args, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def _metrics(d):
    return [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("protocol") / "p"
    args = ["--quick", "--seeds", "0,1", "--output", str(out)]
    r = _run(args)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, args, r


def test_quick_protocol_writes_the_table_the_figure_and_the_growth(quick):
    out, _, r = quick
    res = json.loads((out / "protocol.json").read_text())
    assert (out / "protocol.png").stat().st_size > 0
    assert res["settings"]["phase1_steps"] == 6 and res["settings"]["phase2_steps"] == 6
    assert res["settings"]["rank"] == 2 and res["settings"]["grow_to"] == 4 and set(res["seeds"]) == {"0", "1"}
    assert res["markers"]["same_steps"] is False and res["markers"]["steps"] == {"0": 0, "3000": 6, "12300": 12}
    for s in res["seeds"].values():
        assert s["trajectory"]["step"] == [3, 6, 9, 12] and len(s["trajectory"]["logdet_K"]) == 4
        assert s["end1_step"] == 6 and s["end2_step"] == 12 and s["phase2"]["steps"] == 12
        assert s["phase2"]["growth"] == [{"step": 6, "from": 2, "to": 4}]
    claims = {(c["key"], c["phase"], c["writeup_step"]): c for c in res["claims"]}
    assert claims[("linearity", 1, 3000)]["writeup"] == 0.646 and claims[("fdecay", 2, 12300)]["writeup"] == 0.02
    assert claims[("logdet", 1, 0)]["ours_mean"] == pytest.approx(16 * math.log(0.1))
    for c in res["claims"]:
        assert {"claim", "writeup", "ours_mean", "ours_sd", "ours_n", "direction", "reproduces"} <= set(c)
        assert c["ours_n"] == 2 and len(c["reproduces"]) == 2
        if c["direction"]:
            assert c["reproduced"].endswith("/2")
    for seed in (0, 1):
        d2 = out / f"seed{seed}" / "phase2"
        assert [r for r in _metrics(d2) if r["kind"] == "grow"] == [dict(kind="grow", step=6, **{"from": 2, "to": 4})]
        assert load_checkpoint(d2).meta["cfg"]["rank"] == 4
        assert load_checkpoint(out / f"seed{seed}" / "phase1").step == 6
    assert "linearity dips in phase 1" in r.stdout and "direction reproduces" in r.stdout


def test_rerun_trains_nothing(quick):
    out, args, _ = quick
    before = {p: p.read_bytes() for p in out.glob("seed*/phase*/*") if p.suffix in (".npz", ".jsonl")}
    r = _run(args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("skipped") == 4 and "step 1/" not in r.stderr
    assert before == {p: p.read_bytes() for p in out.glob("seed*/phase*/*") if p.suffix in (".npz", ".jsonl")}


def test_a_lost_phase_2_is_redone_bit_identical(quick, tmp_path):
    out, _, _ = quick
    shutil.copytree(out / "seed1", tmp_path / "p" / "seed1")
    shutil.rmtree(tmp_path / "p" / "seed1" / "phase2")
    plan = plan_protocol({}, ProtocolConfig(quick=True, seeds="1"), output=tmp_path / "p")
    res = run_protocol(plan, progress=False, say=lambda m: None)
    a, b = load_checkpoint(out / "seed1" / "phase2"), load_checkpoint(tmp_path / "p" / "seed1" / "phase2")
    assert a.step == b.step == 12
    assert latest_checkpoint(tmp_path / "p" / "seed1" / "phase1").name == "ckpt_000000006.npz"
    np.testing.assert_array_equal(a.theta, b.theta)
    assert res["seeds"]["1"]["end2"]["val_ppl"] == json.loads((out / "protocol.json").read_text())["seeds"]["1"][
        "end2"]["val_ppl"]


def test_plan_layers_defaults_and_refusals(tmp_path):
    plan = plan_protocol({"lambda_metric": 1e-5}, ProtocolConfig(), THIRD)
    assert (plan.phase1_steps, plan.phase2_steps, plan.rank, plan.grow_to) == (250, 775, 8, 21)
    assert plan.overrides["eval_every"] == 50 and plan.dim == 128 and plan.seeds == (0, 1, 2)
    cf = tmp_path / "c.toml"
    cf.write_text("[train]\neval_every = 7\nsteps = 40\n[model]\nrank = 24\ndim = 384\n")
    plan = plan_protocol({"eval_every": 9}, ProtocolConfig(phase2_steps=5, grow_to=30), cf)
    assert plan.overrides["eval_every"] == 9 and (plan.phase1_steps, plan.phase2_steps, plan.grow_to) == (40, 5, 30)
    assert "eval_every" not in plan_protocol({}, ProtocolConfig(), cf).overrides  # the file's 7 wins over 50
    assert plan_protocol({}, ProtocolConfig(), cf).grow_to == 64
    q = plan_protocol({"dim": 24}, ProtocolConfig(quick=True), THIRD)  # --quick over the file, flags over --quick
    assert (q.dim, q.rank, q.phase1_steps, q.grow_to) == (24, 2, 6, 4)
    for given, proto, needle in (({"steps": 5}, ProtocolConfig(), "--phase1-steps"),
                                 ({"seed": 1}, ProtocolConfig(), "--seeds"),
                                 ({"no_ode": True}, ProtocolConfig(), "--no-ode"),
                                 ({"metric": "identity"}, ProtocolConfig(), "--metric"),
                                 ({}, ProtocolConfig(grow_to=8), "--grow-to")):
        with pytest.raises(ConfigError, match=needle):
            plan_protocol(given, proto, THIRD)
    with pytest.raises(ConfigError, match="--seeds"):
        ProtocolConfig(seeds="0,0")
    with pytest.raises(ConfigError, match="--phase2-steps"):
        ProtocolConfig(phase2_steps=0)


def test_a_refused_flag_is_one_line():
    r = _run(["--steps", "5", "--quick"], timeout=120)
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "--phase1-steps" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _seed(first, end1, end2):
    keys = ("linearity", "displacement", "path_length", "logdet", "fdecay")
    return dict(first=dict(zip(keys, first)), end1=dict(zip(keys, end1)), end2=dict(zip(keys, end2)),
                start_logdet=128 * math.log(0.1))


def test_claim_directions():
    plan = plan_protocol({}, ProtocolConfig(), THIRD)
    like = _seed((0.95, 10, 11, -290, 1.1), (0.65, 50, 80, -100, 0.5), (0.8, 58, 72, 0.5, 0.02))  # the write-up's
    unlike = _seed((0.95, 10, 11, -290, 1.1), (0.97, 50, 52, -295, 1.2), (0.9, 40, 60, -200, 0.9))
    rows = {(r["key"], r["phase"], r["writeup_step"]): r for r in claims_table(plan, {0: like, 1: unlike})}
    assert rows[("linearity", 1, 3000)]["reproduces"] == [True, False]
    assert rows[("linearity", 2, 12300)]["reproduces"] == [True, False]
    assert rows[("logdet", 1, 3000)]["reproduces"] == [True, False]
    assert rows[("logdet", 2, 12300)]["reproduces"] == [True, False]
    assert rows[("logdet", 2, 12300)]["reproduced"] == "1/2"
    assert rows[("fdecay", 2, 12300)]["reproduces"] == [True, False]
    assert rows[("displacement", 2, 12300)]["reproduces"] == [True, False]
    assert rows[("path_length", 2, 12300)]["reproduces"] == [True, False]
    assert rows[("displacement", 1, 3000)]["direction"] is None
    r = rows[("linearity", 2, 12300)]
    assert r["ours_mean"] == pytest.approx(0.85) and r["ours_sd"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert r["ours_step"] == 1025 and rows[("logdet", 2, 12300)]["writeup_scaled"] == pytest.approx(
        0.003 * 128 * math.log(0.1) / -800)
    flat = _seed((0.9997, 10, 11, -290, 1.1), (0.9994, 10.05, 11.05, -294, 1.1), (0.9999, 10.04, 11.02, -290, 1.1))
    assert all(r["reproduces"] in ([False], [None]) for r in claims_table(plan, {0: flat}))  # within the 1% margin
    text = format_claims(claims_table(plan, {0: like, 1: unlike}))
    assert "fDecay << 1 after growth" in text and "1/2" in text
    assert marker_steps(plan)[0] == {0: 0, 3000: 250, 12300: 1025}
