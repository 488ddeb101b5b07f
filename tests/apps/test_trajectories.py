"""Running a Riemannian model on sampled positions: sampling, context windows, trajectories, log det g."""
import numpy as np
import pytest

from geolm.apps import trajectories
from geolm.core.errors import DataError
from geolm.models import riemann
from tiny_riemann import stories as _stories, tiny_model as _tiny_model




def test_sample_positions_and_context(rng):
    st = _stories(rng)
    si, pos = trajectories.sample_positions(st, 40, seed=3)
    assert si.shape == pos.shape == (40,)
    assert all(0 <= p < len(st[s]) for s, p in zip(si, pos))
    assert np.all(pos[:5] == np.array([len(st[s]) - 1 for s in si[:5]]))  # end stratum first
    si2, pos2 = trajectories.sample_positions(st, 40, seed=3)
    assert np.array_equal(si, si2) and np.array_equal(pos, pos2)
    ids, col = trajectories.context_batch(st, si, pos, 16, pad_id=38)
    for i, (s, p) in enumerate(zip(si, pos)):
        assert ids[i, col[i]] == st[s][p]
        w = ids[i, :col[i] + 1]
        assert np.array_equal(w, st[s][p - col[i]:p + 1])
    with pytest.raises(DataError):
        trajectories.sample_positions([np.zeros(0, np.int32)], 5)


def test_next_tokens_reads_the_following_token_and_eos_after_the_last(rng):
    st = _stories(rng)
    si, pos = trajectories.sample_positions(st, 40, seed=3)
    nxt = trajectories.next_tokens(st, si, pos, eos_id=39)
    for s, p, t in zip(si, pos, nxt):
        assert t == (st[s][p + 1] if p + 1 < len(st[s]) else 39)
    assert np.all(nxt[:5] == 39) and np.any(nxt[5:] != 39)  # the end stratum is followed by the end token


def test_run_trajectories_matches_full_forward(rng):
    theta, cfg, spec = _tiny_model(rng)
    ids = rng.integers(0, 37, size=(3, 16)).astype(np.int32)
    col = np.array([0, 7, 15])
    run = trajectories.run_trajectories(theta, cfg, spec, ids, col)
    logits, cache = riemann.forward(spec.views(theta), ids, cfg)
    out = riemann.outputs(cache)
    rows = np.arange(3) * 16 + col
    np.testing.assert_allclose(run["zT"], out["zT"][rows], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(run["traj"], out["traj"][:, rows], rtol=1e-4, atol=1e-5)
    assert np.array_equal(run["pred"], logits[rows].argmax(1))
    assert run["traj"].shape == (cfg.ode_steps + 1, 3, cfg.dim)


def test_logdet_landscape(rng):
    theta, cfg, spec = _tiny_model(rng)
    pts = rng.normal(size=(7, cfg.dim))
    L = trajectories.logdet_landscape(theta, cfg, spec, pts, chunk=3)
    p = spec.views(theta)["field"]
    U = riemann.field_eval(pts.astype(np.float32), p, cfg)["U"].astype(np.float64)
    g = cfg.eps * np.eye(cfg.dim) + cfg.alpha * np.einsum("nrd,nre->nde", U, U)
    np.testing.assert_allclose(L, np.linalg.slogdet(g)[1], rtol=1e-4, atol=1e-3)
    assert trajectories.logdet_landscape(*_tiny_model(rng, metric="identity"), pts) is None


def test_point_logdet_per_metric(rng):
    import dataclasses
    theta, cfg, spec = _tiny_model(rng)
    pts = rng.normal(size=(5, cfg.dim))
    np.testing.assert_array_equal(trajectories.point_logdet(theta, cfg, spec, pts),
                                  trajectories.logdet_landscape(theta, cfg, spec, pts))
    assert "learned" in trajectories.metric_note(cfg)
    ident = _tiny_model(rng, metric="identity")
    assert np.array_equal(trajectories.point_logdet(*ident, pts), np.zeros(5))
    assert "g = I" in trajectories.metric_note(ident[1]) and "constant" in trajectories.metric_note(ident[1])
    a0 = dataclasses.replace(cfg, alpha=0.0)                         # g = eps I: log det g = D log eps everywhere
    np.testing.assert_allclose(trajectories.point_logdet(theta, a0, spec, pts), cfg.dim * np.log(cfg.eps),
                               rtol=1e-5)
    assert f"{cfg.dim * np.log(cfg.eps):.4g}" in trajectories.metric_note(a0)
    plain = _tiny_model(rng, no_ode=True)
    assert trajectories.point_logdet(*plain, pts) is None and "no metric" in trajectories.metric_note(plain[1])
