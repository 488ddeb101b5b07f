"""Rank growth of a run (geolm.apps.riemann_grow through riemann_run.run): the grown checkpoint carries everything
over, growth is recorded, an interrupted-and-resumed grown run ends bit-identical to an uninterrupted one, and a
shrink is a one-line error."""
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geolm.apps.riemann_grow import grow_checkpoint
from geolm.apps.riemann_load import checkpoint_config
from geolm.apps.riemann_run import run
from geolm.apps.riemann_settings import resolve_configs, resume_configs
from geolm.core.errors import ConfigError
from geolm.training.checkpoint import load_checkpoint
from geolm.training.train import TrainingInterrupted

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_riemann.py"
MODEL = "[model]\ndim = 16\nlayers = 1\nheads = 2\nseq_len = 16\nvocab_size = 300\nrank = 2\nhidden = 8\n" \
        "field_hidden = 16\node_steps = 2\n"
TINY = dict(data="builtin", max_train_stories=120, max_val_stories=20, batch_size=4, warmup=2, val_batches=2,
            gen_tokens=0, map_points=0, threads=1, eval_every=3, log_every=1)


def _metrics(d):
    return [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def phase1(tmp_path_factory):
    """A 4-step run at rank 2, from a configuration file."""
    root = tmp_path_factory.mktemp("grow")
    cf = root / "tiny.toml"
    cf.write_text(MODEL)
    out = root / "phase1"
    s = run(*resolve_configs(dict(TINY, steps=4, output=str(out)), config_file=cf), progress=False, config_file=cf)
    assert s["config_file"] == str(cf.resolve()) and s["cfg"]["rank"] == 2 and s["growth"] == []
    assert s["tcfg"]["steps"] == 4 and s["run"]["max_train_stories"] == 120
    return out


def _copy(phase1, tmp_path, name):
    d = tmp_path / name
    shutil.copytree(phase1, d)
    return d


def test_grown_checkpoint_carries_everything_over(phase1, tmp_path):
    d = _copy(phase1, tmp_path, "c")
    ck1 = load_checkpoint(d)
    old = checkpoint_config(ck1)
    cfg = dataclasses.replace(old, rank=5)
    _, tcfg, _ = resume_configs(d)
    growth, rec = grow_checkpoint(d, cfg, tcfg)
    assert rec == {"step": 4, "from": 2, "to": 5} and growth == [rec]
    ck2 = load_checkpoint(d)
    assert ck2.step == ck1.step and ck2.train == ck1.train and ck2.meta["tcfg"] == ck1.meta["tcfg"]
    assert checkpoint_config(ck2) == cfg and ck2.extra["growth"] == [rec]
    assert ck2.theta.size == ck1.theta.size + (old.hidden + 1) * 3 * old.dim  # fc2.w and fc2.b of 3 rows
    assert [r for r in _metrics(d) if r["kind"] == "grow"] == [dict(kind="grow", **rec)]
    assert grow_checkpoint(d, cfg, tcfg) == ([rec], None)  # already grown: nothing to do
    for name in ("adam_m", "adam_v"):
        assert np.count_nonzero(ck2.arrays[name]) == np.count_nonzero(ck1.arrays[name])  # new moments are 0


def test_exact_resume_across_growth(phase1, tmp_path):
    a, b = _copy(phase1, tmp_path, "a"), _copy(phase1, tmp_path, "b")
    sa = run(*resume_configs(a, {"rank": 4, "steps": 9}), progress=False)  # grow at step 4, 5 steps at rank 4
    calls = []
    with pytest.raises(TrainingInterrupted) as e:  # the same, stopped after 2 steps at rank 4 ...
        run(*resume_configs(b, {"rank": 4, "steps": 9}), progress=False, should_stop=lambda: calls.append(1) or
            len(calls) >= 2)
    assert e.value.step == 6
    cfg, tcfg, rc = resume_configs(b)  # ... and resumed with the run's own settings
    assert (cfg.rank, tcfg.steps, rc.val_batches, rc.map_points, rc.max_train_stories) == (4, 9, 2, 0, 120)
    sb = run(cfg, tcfg, rc, progress=False)
    cka, ckb = load_checkpoint(a), load_checkpoint(b)
    assert cka.step == ckb.step == 9 and checkpoint_config(ckb).rank == 4
    np.testing.assert_array_equal(cka.theta, ckb.theta)
    for name in ("adam_m", "adam_v"):
        np.testing.assert_array_equal(cka.arrays[name], ckb.arrays[name])
    assert cka.train == {**ckb.train, "seconds": cka.train["seconds"]}
    rec = {"step": 4, "from": 2, "to": 4}
    assert sa["growth"] == sb["growth"] == [rec] and sa["val_ppl"] == sb["val_ppl"]
    for d in (a, b):
        assert [r for r in _metrics(d) if r["kind"] == "grow"] == [dict(kind="grow", **rec)]
        assert max(r["step"] for r in _metrics(d) if r["kind"] == "train") == 9


def test_shrink_and_other_changes_are_refused(phase1, tmp_path):
    d = _copy(phase1, tmp_path, "s")
    grown = run(*resume_configs(d, {"rank": 3, "steps": 5}), progress=False)
    assert grown["growth"] == [{"step": 4, "from": 2, "to": 3}]
    with pytest.raises(ConfigError, match="can only grow"):
        run(*resume_configs(d, {"rank": 2, "steps": 6}), progress=False)
    r = subprocess.run([sys.executable, str(SCRIPT), "--resume", str(d), "--rank", "1", "--steps", "6"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(err) == 1 and "--rank 1" in err[0] and "grow" in err[0], r.stderr
    assert r.stderr.strip().splitlines()[-1] == err[0] and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, str(SCRIPT), "--resume", str(d), "--rank", "4", "--hidden", "6"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    err = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and err.startswith("error:") and "hidden" in err and "Traceback" not in r.stderr
    assert load_checkpoint(d).step == 5 and checkpoint_config(load_checkpoint(d)).rank == 3
