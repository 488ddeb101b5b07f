"""Telemetry: path/metric length, linearity, fDecay against hand computations."""
import math

import numpy as np
import pytest

from geolm.models import riemann
from geolm.apps import telemetry


def test_path_stats_by_hand():
    # token 0: (0,0) -> (3,0) -> (3,4): D = 5, P = 7; token 1: straight line (0,0) -> (1,0) -> (2,0): D = P = 2
    traj = np.array([[[0, 0], [0, 0]], [[3, 0], [1, 0]], [[3, 4], [2, 0]]], dtype=np.float32)  # [K+1=3, N=2, D=2]
    ps = telemetry.path_stats(traj)
    np.testing.assert_allclose(ps["displacement"], [5.0, 2.0])
    np.testing.assert_allclose(ps["path_length"], [7.0, 2.0])


def test_metric_length_by_hand(rng):
    traj = rng.standard_normal((3, 4, 5))  # K=2, N=4, D=5
    Us = rng.standard_normal((3, 4, 2, 5))
    eps, alpha = 0.3, 1.7
    got = telemetry.metric_length(traj, Us, eps, alpha)
    want = np.zeros(4)
    for n in range(4):
        for k in range(2):
            g = eps * np.eye(5) + alpha * Us[k, n].T @ Us[k, n]
            dz = traj[k + 1, n] - traj[k, n]
            want[n] += math.sqrt(dz @ g @ dz)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(telemetry.metric_length(traj, None, 1.0, 0.0),
                               telemetry.path_stats(traj)["path_length"], rtol=1e-12)


def _fake_fields(fs, vs, Us=None):
    return [{"f": f, "v": v, "U": None if Us is None else Us[k]} for k, (f, v) in enumerate(zip(fs, vs))]


def test_summarize_linearity_and_fdecay_by_hand():
    cfg = riemann.RiemannConfig(dim=2, heads=1, rank=1, eps=0.5)
    traj = np.array([[[0, 0], [0, 0]], [[3, 0], [1, 0]], [[3, 4], [2, 0]]], dtype=np.float64)
    fs = [np.array([[2.0, 0], [0, 4.0]]), np.array([[1.0, 0], [0, 1.0]]), np.array([[0, 1.0], [0, 2.0]])]
    vs = [2 * f for f in fs]
    Us = np.zeros((3, 2, 1, 2))
    aux = {"f2": np.ones((2, 4, 2)), "logdet": np.full((2, 4, 2), -1.0)}
    out = telemetry.summarize(traj, _fake_fields(fs, vs, Us), aux, cfg)
    assert out["ode_steps"] == 2
    assert out["displacement"] == pytest.approx(3.5)
    assert out["path_length"] == pytest.approx(4.5)
    assert out["linearity"] == pytest.approx((5 / 7 + 1.0) / 2)  # mean of per-trajectory ratios
    assert out["linearity_of_means"] == pytest.approx(3.5 / 4.5)  # ratio of means
    assert out["fdecay"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert out["fdecay_sq"] == pytest.approx((1 / 4 + 4 / 16) / 2)
    assert out["f_norm"] == pytest.approx(np.mean([2, 4, 1, 1, 1, 2]))
    assert out["speed"] == pytest.approx(2 * out["f_norm"])
    assert out["metric_length"] == pytest.approx(math.sqrt(0.5) * 4.5)  # U = 0: g = eps I
    assert out["logdet"] == pytest.approx(-1.0)
    assert out["logdet_const"] == pytest.approx(1 * math.log(0.5))
    assert out["logdet_K"] == pytest.approx(-1.0 - math.log(0.5))


def test_summarize_zero_motion_gives_nan_not_error():
    cfg = riemann.RiemannConfig(dim=2, heads=1, rank=1, metric="identity")
    traj = np.zeros((3, 4, 2))
    f = np.zeros((4, 2))
    out = telemetry.summarize(traj, _fake_fields([f] * 3, [f] * 3), {"f2": np.zeros((2, 4, 4))}, cfg)
    assert out["displacement"] == 0.0 and out["path_length"] == 0.0
    assert math.isnan(out["linearity"]) and math.isnan(out["fdecay"])
    assert "logdet" not in out


@pytest.mark.parametrize("metric", ["lowrank", "identity"])
def test_trajectory_telemetry_on_a_model(metric, rng):
    cfg = riemann.RiemannConfig(vocab_size=13, dim=8, layers=1, heads=2, ff_mult=2, seq_len=6, rank=3, hidden=5,
                                field_hidden=7, ode_steps=3, eps=0.2, metric=metric)
    spec, theta = riemann.init_params(cfg, rng, dtype=np.float64)
    theta += 0.3 * rng.standard_normal(theta.shape)
    p = spec.views(theta)
    ids = rng.integers(0, 13, (2, 6))
    tg = rng.integers(0, 13, (2, 6))
    tel = telemetry.trajectory_telemetry(p, ids, tg, cfg)
    loss, stats, _ = riemann.loss_forward(p, ids, tg, cfg)
    assert tel["tel_ce"] == pytest.approx(stats["ce"]) and tel["tel_loss"] == pytest.approx(loss)
    assert tel["tel_pen_field"] == pytest.approx(stats["pen_field"])
    _, cache = riemann.forward(p, ids, cfg)
    out = riemann.outputs(cache)
    traj = out["traj"]
    assert tel["ode_steps"] == 3
    assert tel["displacement"] == pytest.approx(np.mean(np.linalg.norm(traj[-1] - traj[0], axis=1)))
    assert 0 < tel["displacement"] <= tel["path_length"] + 1e-12
    assert 0 < tel["linearity"] <= 1.0
    f0 = riemann.field_eval(traj[0], p["field"], cfg)["f"]
    fT = riemann.field_eval(traj[-1], p["field"], cfg)["f"]
    assert tel["fdecay"] == pytest.approx(np.mean(np.linalg.norm(fT, axis=1) / np.linalg.norm(f0, axis=1)))
    if metric == "lowrank":
        assert tel["metric_length"] >= np.sqrt(0.2) * tel["path_length"] - 1e-12  # g >= eps I
        assert tel["logdet"] == pytest.approx(np.mean(out["aux"]["logdet"]))
        assert tel["speed"] > 0 and tel["tel_pen_metric"] > 0
    else:
        assert tel["metric_length"] == pytest.approx(tel["path_length"])
        assert tel["speed"] == pytest.approx(tel["f_norm"]) and "logdet" not in tel


def test_trajectory_telemetry_no_ode(rng):
    cfg = riemann.RiemannConfig(vocab_size=13, dim=8, layers=1, heads=2, ff_mult=2, seq_len=6, no_ode=True)
    spec, theta = riemann.init_params(cfg, rng)
    tel = telemetry.trajectory_telemetry(spec.views(theta), rng.integers(0, 13, (2, 6)), rng.integers(0, 13, (2, 6)),
                                         cfg)
    assert set(tel) == {"tel_loss", "tel_ce", "tel_pen_field", "tel_pen_metric"}
    assert tel["tel_pen_field"] == 0.0
