"""riemann.grow_rank: the metric rank R1 -> R2 of a flat buffer. Zero rows get exactly zero gradient (so new rows
must not start at zero), the grown model is gradient-checked in float64, g barely changes, refusals are one line."""
import dataclasses

import numpy as np
import pytest

from geolm.core.errors import ConfigError
from geolm.core.gradcheck import check_grads_directional
from geolm.core.params import ParamSpec
from geolm.models import riemann


def _cfg(**kw):
    base = dict(vocab_size=11, dim=6, layers=1, heads=2, ff_mult=2, seq_len=3, rank=2, hidden=4, field_hidden=5,
                ode_steps=2, eps=0.5, alpha=1.0, lambda_field=0.05, lambda_metric=0.01)
    base.update(kw)
    return riemann.RiemannConfig(**base)


def _trained(cfg, rng, dtype=np.float64):
    """A model off its init (every path exercised) and a batch."""
    spec, theta = riemann.init_params(cfg, rng, dtype=dtype)
    theta += (0.3 * rng.standard_normal(theta.shape)).astype(dtype)
    ids = rng.integers(0, cfg.V, size=(2, cfg.seq_len))
    targets = rng.integers(0, cfg.V, size=(2, cfg.seq_len))
    return spec, theta, (ids, targets)


def _grads(theta, batch, cfg, spec):
    g = np.zeros_like(theta)
    loss, _ = riemann.loss_and_grads(theta, g, batch, cfg, spec)
    return loss, g


def _new_cols(spec, buf, cfg_old):
    """The new U rows' entries of a grown buffer: fc2.w columns and fc2.b entries past R1*D."""
    n = spec.named(buf)
    k = cfg_old.rank * cfg_old.dim
    return n["field.U.fc2.w"][:, k:], n["field.U.fc2.b"][k:]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("penalty", ["point", "batch_mean"])
def test_zero_rows_get_exactly_zero_gradient(dtype, penalty, rng):
    c1 = _cfg(metric_penalty=penalty)
    c2 = dataclasses.replace(c1, rank=5)
    s1, th1, batch = _trained(c1, rng, dtype)
    th2, _ = riemann.grow_rank(th1, {}, c1, c2, rng, scale=0.0)
    s2 = ParamSpec(riemann.param_shapes(c2))
    loss2, g2 = _grads(th2, batch, c2, s2)
    for a in _new_cols(s2, g2, c1):
        assert a.size and np.all(a == 0.0)  # exactly: t_i = s_i = (K^-1 U)_i = 0 for a zero row u_i
    loss1, _ = _grads(th1, batch, c1, s1)
    assert loss2 == pytest.approx(loss1, rel=1e-12 if dtype == np.float64 else 1e-5)  # the same g
    th2, _ = riemann.grow_rank(th1, {}, c1, c2, np.random.default_rng(1))  # the default: small, non-zero
    _, g2 = _grads(th2, batch, c2, s2)
    assert np.all(np.abs(_new_cols(s2, g2, c1)[0]).max(axis=0) > 0)  # every new weight column learns


def test_growth_copies_everything_else_and_is_pure(rng):
    c1, c2 = _cfg(), _cfg(rank=4)
    s1, th1, _ = _trained(c1, rng)
    m, v = rng.standard_normal(th1.shape), rng.random(th1.shape)
    before = [a.copy() for a in (th1, m, v)]
    th2, arr = riemann.grow_rank(th1, {"adam_m": m, "adam_v": v}, c1, c2, np.random.default_rng(3))
    for a, b in zip((th1, m, v), before):
        np.testing.assert_array_equal(a, b)  # inputs untouched
    s2 = ParamSpec(riemann.param_shapes(c2))
    k = c1.rank * c1.dim
    for old, new in ((th1, th2), (m, arr["adam_m"]), (v, arr["adam_v"])):
        no, nn = s1.named(old), s2.named(new)
        assert new.dtype == old.dtype and set(no) == set(nn)
        for key in no:
            np.testing.assert_array_equal(nn[key][..., :no[key].shape[-1]], no[key])
    for a in _new_cols(s2, arr["adam_m"], c1) + _new_cols(s2, arr["adam_v"], c1):
        assert np.all(a == 0.0)  # new Adam moments start at zero
    w, b = _new_cols(s2, th2, c1)
    lim = riemann.GROW_SCALE * np.sqrt(6.0 / (c2.hidden + c2.rank * c2.dim))
    assert np.all(b == 0.0) and 0 < np.abs(w).max() <= lim
    th2b, _ = riemann.grow_rank(th1, {}, c1, c2, np.random.default_rng(3))
    np.testing.assert_array_equal(th2, th2b)  # deterministic given the rng
    assert s2.named(th2)["field.U.fc2.w"].shape == (c1.hidden, k + 2 * c1.dim)


def test_g_barely_changes_at_growth(rng):
    """New rows at the init's scale: each adds ~alpha |u_i|^2 / eps << 1 to log det g; v = g^-1 f moves by < 2 %."""
    c1 = _cfg(dim=16, rank=3, hidden=8, eps=0.1, seq_len=4)
    c2 = dataclasses.replace(c1, rank=8)
    s1, th1 = riemann.init_params(c1, rng, dtype=np.float64)
    th1 += 0.05 * rng.standard_normal(th1.shape)
    z = rng.standard_normal((32, c1.dim))
    th2, _ = riemann.grow_rank(th1, {}, c1, c2, rng)
    s2 = ParamSpec(riemann.param_shapes(c2))
    f1 = riemann.field_eval(z, s1.views(th1)["field"], c1)
    f2 = riemann.field_eval(z, s2.views(th2)["field"], c2)
    assert np.max(np.abs(f2["logdet"] - f1["logdet"])) < 1e-2 * (c2.rank - c1.rank)
    rel = np.linalg.norm(f2["v"] - f1["v"], axis=1) / np.linalg.norm(f1["v"], axis=1)
    assert rel.max() < 2e-2


def test_grown_model_gradcheck(rng, strict_float):
    c1 = _cfg()
    c2 = dataclasses.replace(c1, rank=4)
    _, th1, batch = _trained(c1, rng)
    th2, _ = riemann.grow_rank(th1, {}, c1, c2, rng, scale=1.0)  # rows large enough to matter numerically
    s2 = ParamSpec(riemann.param_shapes(c2))

    def loss_fn(th):
        return _grads(th, batch, c2, s2)[0]

    def grad_fn(th):
        return _grads(th, batch, c2, s2)[1]

    check_grads_directional(loss_fn, grad_fn, th2, rng=rng, n_dirs=3)
    g = grad_fn(th2)
    off = dict((n, o) for n, _, o in s2.entries)["field.U.fc2.w"]
    k = c1.rank * c1.dim
    picks = [off + k, off + k + 1, off + c2.rank * c2.dim - 1]  # new columns, rows 0 of fc2.w
    h = 1e-6
    for i in picks:
        e = np.zeros_like(th2)
        e[i] = h
        num = (loss_fn(th2 + e) - loss_fn(th2 - e)) / (2 * h)
        assert abs(num - g[i]) <= 1e-6 * max(abs(num), abs(g[i]), 1e-3), (i, num, g[i])


@pytest.mark.parametrize("old, new, needle", [
    (dict(rank=4), dict(rank=2), "can only grow"),
    (dict(rank=4), dict(rank=4), "can only grow"),
    (dict(), dict(rank=4, dim=8), "dim"),
    (dict(), dict(rank=4, hidden=6), "hidden"),
    (dict(metric="identity"), dict(metric="identity", rank=4), "identity metric"),
    (dict(no_ode=True), dict(no_ode=True, rank=4), "no ODE"),
])
def test_refusals_are_one_line(old, new, needle, rng):
    c1, c2 = _cfg(**old), _cfg(**new)
    theta = riemann.init_params(c1, rng)[1]
    with pytest.raises(ConfigError, match=needle) as e:
        riemann.grow_rank(theta, {}, c1, c2, rng)
    assert "\n" not in str(e.value)
