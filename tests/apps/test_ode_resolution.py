"""Re-running a Riemannian model at S, 2S, 4S RK4 steps (geolm.apps.ode_resolution, examples/ode_resolution.py)."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geolm.apps import ode_resolution
from geolm.apps.riemann_run import run as run_riemann
from geolm.apps.riemann_settings import resolve_configs
from geolm.core.errors import ConfigError
from geolm.models import riemann
from tiny_riemann import tiny_model as _tiny_model

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ode_resolution.py"
TINY_RUN = dict(data="builtin", max_train_stories=120, max_val_stories=20, batch_size=4, warmup=2, val_batches=2,
                gen_tokens=0, map_points=0, threads=1, eval_every=3, log_every=1, dim=16, layers=1, heads=2,
                seq_len=16, vocab_size=300, rank=2, hidden=8, field_hidden=16, ode_steps=2, steps=6)


def _batch(rng, B=3, T=16):
    return rng.integers(0, 37, size=(B, T)).astype(np.int32), rng.integers(0, 37, size=(B, T)).astype(np.int64)


@pytest.mark.parametrize("metric", ["lowrank", "identity"])
def test_rk4_fourth_order_on_a_smooth_field(rng, metric):
    # scale 0.1: a smooth field, h = 1/16 .. 1/128 inside RK4's asymptotic range. Z_T(n) - Z_T(128) ~ C h^4 shrinks
    # ~16x per doubling of n (exactly (1/16^j - 1/16^3) ratios: 17.0, 15.9 here), observed order ~ 4.
    theta, cfg, spec = _tiny_model(rng, metric=metric, scale=0.1)
    b = _batch(rng)
    res = ode_resolution.resolution(theta, dataclasses.replace(cfg, ode_steps=16), spec, b, [b],
                                    factors=(1, 2, 4, 8), float64=True)
    d = [r["dz_ref"] for r in res["rows"]]
    assert [r["ode_steps"] for r in res["rows"]] == [16, 32, 64, 128] and d[-1] == 0.0
    assert 13.0 < d[0] / d[1] < 20.0 and 13.0 < d[1] / d[2] < 20.0
    assert 3.7 < res["observed_order"] < 4.3
    assert res["dtype"] == "float64" and res["tokens"] == 48 and res["trained_steps"] == 16
    assert res["rows"][0]["dz_base"] == 0.0 and res["rows"][1]["dz_base"] > 0.0
    assert all(r["argmax_agree"] == 1.0 for r in res["rows"])        # changes ~1e-5 move no argmax here


def test_rows_match_the_model_at_each_step_count(rng):
    theta, cfg, spec = _tiny_model(rng, scale=0.1)
    before = theta.copy()
    b, v = _batch(rng), [_batch(rng, B=2), _batch(rng, B=1)]
    res = ode_resolution.resolution(theta, cfg, spec, b, v)
    assert np.array_equal(theta, before) and theta.dtype == np.float32 and res["dtype"] == "float32"
    for r in res["rows"]:
        c = dataclasses.replace(cfg, ode_steps=r["ode_steps"])
        nll = sum(riemann.eval_nll(theta, x, c, spec)[0] for x in v)
        assert r["val_nll"] == pytest.approx(nll / 48, rel=1e-12) and r["val_ppl"] == pytest.approx(np.exp(nll / 48))
        logits, cache = riemann.forward(spec.views(theta), b[0], c)
        out = riemann.outputs(cache)
        zS = riemann.forward(spec.views(theta), b[0], dataclasses.replace(cfg, ode_steps=4 * cfg.ode_steps))[1]
        ref = riemann.outputs(zS)["zT"].astype(np.float64)
        want = np.linalg.norm(out["zT"] - ref) / np.linalg.norm(ref - out["z0"])
        assert r["dz_ref"] == pytest.approx(want, rel=1e-5)
        f = riemann.field_eval(out["traj"][-1], spec.views(theta)["field"], c)
        assert np.isfinite(r["speed"]) and r["speed"] > r["f_norm"] > 0  # eps 0.1: |g^-1 f| > |f|
        assert np.isfinite(np.linalg.norm(f["v"]))
    assert res["val_targets"] == 48 and [r["ode_steps"] for r in res["rows"]] == [2, 4, 8]
    table = ode_resolution.format_resolution(res)
    assert "val ppl" in table and "observed order" in table and "--float64" in table


def test_with_steps_keeps_parameters_and_refusals(rng):
    theta, cfg, spec = _tiny_model(rng)
    c = ode_resolution.with_steps(cfg, 16)
    assert c.ode_steps == 16 and riemann.param_shapes(c) == riemann.param_shapes(cfg) and cfg.ode_steps == 2
    b = _batch(rng)
    with pytest.raises(ConfigError, match="no ODE"):
        ode_resolution.resolution(*_tiny_model(rng, no_ode=True), b, [b])
    for bad in ((2, 4), (1, 1, 2), ()):
        with pytest.raises(ConfigError, match="factors"):
            ode_resolution.resolution(theta, cfg, spec, b, [b], factors=bad)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("resolution") / "run"
    run_riemann(*resolve_configs(dict(TINY_RUN, output=str(out))), progress=False)
    return out


def _script(*args):
    return subprocess.run([sys.executable, str(EXAMPLE)] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=120)


def test_script_on_a_tiny_run_reproduces_its_numbers_at_S(tiny_run, tmp_path):
    js = tmp_path / "r.json"
    r = _script("--checkpoint", tiny_run, "--json", js)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "observed order" in r.stdout and "trained with S = 2" in r.stdout
    res = json.loads(js.read_text())
    assert [x["ode_steps"] for x in res["rows"]] == [2, 4, 8] and res["step"] == 6
    s = json.loads((tiny_run / "summary.json").read_text())
    first = res["rows"][0]  # the run's own validation subset and telemetry batch, at its own S
    assert first["val_ppl"] == pytest.approx(s["val_ppl_subset"], rel=1e-12)
    for k in ("speed", "f_norm", "logdet", "path_length"):
        assert first[k] == pytest.approx(s["telemetry"][k], rel=1e-12), k
    q = _script("--checkpoint", tiny_run, "--quick", "--float64")
    assert q.returncode == 0 and "float64, 32 tokens, 32 validation targets" in q.stdout, q.stderr[-2000:] + q.stdout


@pytest.mark.parametrize("how", ["missing", "empty", "file", "flags"])
def test_script_bad_run_one_line_exit_2(tmp_path, tiny_run, how):
    if how == "missing":
        args = ["--checkpoint", tmp_path / "nothere"]
    elif how == "empty":
        args = ["--checkpoint", tmp_path]
    elif how == "file":
        (tmp_path / "ckpt_000000001.npz").write_bytes(b"not a zip")
        args = ["--checkpoint", tmp_path / "ckpt_000000001.npz"]
    else:
        args = ["--checkpoint", tiny_run, "--quick", "--val-batches", "3"]
    r = _script(*args)
    assert r.returncode == 2 and r.stderr.startswith("error:"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
