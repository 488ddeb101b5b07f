import numpy as np
import pytest

from geolm.core.errors import ConfigError
from geolm.core.gradcheck import check_grads_directional
from geolm.core.params import ParamSpec, accumulate
from geolm.geometry.rotation import pole
from geolm.models import geo_attention, geo_mlp
from geolm.models.geometric import (MODELS, GeoModelConfig, backward, build_tables, eval_nll, featurize, forward,
                                    init_params, loss_and_grads, param_shapes)
from geolm.ops.losses import xent_backward, xent_forward


def _tiny_tables(rng, V=7, k=3, K=2, k2=4):
    X = rng.standard_normal((V, k))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    nbr = np.stack([rng.choice([u for u in range(V) if u != v], K, replace=False) for v in range(V)])
    nbr[0, -1] = -1  # a padded neighbour slot
    Xo = rng.standard_normal((V, k2))
    Xo /= np.linalg.norm(Xo, axis=1, keepdims=True)
    return build_tables(X, nbr, pad_id=V, Xout=Xo, n_succ=2)


def _ctx(rng, B, C, V):
    ctx = rng.integers(0, V, size=(B, C))
    ctx[0, : C // 2] = V  # left PAD
    if B > 1:
        ctx[1, :] = V  # first token of a story: all PAD
    return ctx.astype(np.int32), rng.integers(0, V, size=B).astype(np.int32)


def _cfg(name, V=7, **kw):
    return GeoModelConfig(name=name, Vi=V + 1, V=V, H=5, C=4, k=3, n_succ=2, k_succ=4, **kw)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("B", [1, 4])
def test_model_loss_gradcheck(rng, strict_float, name, B):
    """float64 directional gradcheck of every model through the pure backward + accumulate (loss_and_grads)."""
    V = 7
    tables = _tiny_tables(rng, V=V)
    mc = _cfg(name)
    spec, theta = init_params(mc, np.random.default_rng(0), np.float64)
    theta += 0.05 * rng.standard_normal(theta.shape)  # non-zero biases, generic point
    ctx, y = _ctx(rng, B, mc.C, V)
    if B == 1:
        ctx[0, -1] = 2  # a real current token
    else:
        ctx[3] = ctx[2]  # repeated ids and targets accumulate
        y[3] = y[2]

    def loss(th):
        s, n = eval_nll(th, (ctx, y), mc, spec, tables)
        assert n == B
        return s / n

    def grad(th):
        g = np.full_like(th, np.nan)  # loss_and_grads zeroes grad itself
        L, stats = loss_and_grads(th, g, (ctx, y), mc, spec, tables)
        assert abs(L - loss(th)) < 1e-10 and stats == {"n": B}
        return g

    check_grads_directional(loss, grad, theta, rng=rng, n_dirs=4)


@pytest.mark.parametrize("name", ["trigram", "geo_abs", "hybrid", "geo_attention_full"])
def test_backward_of_explicit_gradient_matches_loss_and_grads(rng, name):
    """backward(dlogits) with the explicit xent gradient == loss_and_grads' implicit form; params untouched."""
    V = 7
    tables = _tiny_tables(rng, V=V)
    mc = _cfg(name)
    spec, theta = init_params(mc, rng, np.float64)
    theta += 0.05 * rng.standard_normal(theta.shape)
    ctx, y = _ctx(rng, 5, mc.C, V)
    g = spec.zeros(np.float64)
    loss_and_grads(theta, g, (ctx, y), mc, spec, tables)
    before = theta.copy()
    logits, cache = forward(spec.views(theta), ctx, mc, tables)
    _, xc = xent_forward(logits, y)
    g2 = spec.zeros(np.float64)
    accumulate(spec.views(g2), backward(xent_backward(1.0, xc), cache))
    np.testing.assert_array_equal(theta, before)
    np.testing.assert_allclose(g2, g, rtol=1e-10, atol=1e-13)


def test_init_params_dtype_and_rng(rng):
    """The same rng draws in either dtype; float32 = the float64 draws rounded; shapes from param_shapes."""
    for name in ("hybrid", "geo_attention_full"):
        mc = _cfg(name)
        spec, t32 = init_params(mc, np.random.default_rng([3, 4]))
        _, t64 = init_params(mc, np.random.default_rng([3, 4]), np.float64)
        assert spec == ParamSpec(param_shapes(mc)) and t32.dtype == np.float32 and t64.dtype == np.float64
        np.testing.assert_array_equal(t32, t64.astype(np.float32))
    mc = _cfg("hybrid")
    spec, theta = init_params(mc, np.random.default_rng(5))
    p = spec.views(theta)
    q = ParamSpec(geo_mlp.param_shapes(mc.F, 2, mc.Vi, 5, 7)).views(np.zeros(spec.size, np.float32))
    geo_mlp.init_(q, np.random.default_rng(5))
    np.testing.assert_array_equal(p["fc1"]["w"], q["fc1"]["w"])
    assert np.all(p["fc1"]["b"] == 0) and np.all(p["fc2"]["b"] == 0)
    mc = _cfg("geo_attention")
    spec, theta = init_params(mc, np.random.default_rng(5))
    q = ParamSpec(geo_attention.param_shapes(8, 5, 5, 7, 4, False)).views(np.zeros(spec.size, np.float32))
    geo_attention.init_(q, np.random.default_rng(5))
    np.testing.assert_array_equal(spec.views(theta)["emb"]["w"], q["emb"]["w"])


@pytest.mark.parametrize("name", ["trigram", "geo_rot_nbrs", "geo_attention_full"])
def test_float32_step_stays_float32(rng, name):
    V = 7
    tables = _tiny_tables(rng, V=V)
    mc = GeoModelConfig(name=name, Vi=V + 1, V=V, H=5, C=4)
    spec, theta = init_params(mc, rng)
    g = np.zeros_like(theta)
    ctx, y = _ctx(rng, 3, 4, V)
    L, _ = loss_and_grads(theta, g, (ctx, y), mc, spec, tables)
    assert g.dtype == np.float32 and np.isfinite(L) and np.abs(g).sum() > 0
    logits, _ = forward(spec.views(theta), ctx, mc, tables)
    assert logits.dtype == np.float32
    s, n = eval_nll(theta, (ctx, y), mc, spec, tables)
    assert isinstance(s, float) and n == 3 and abs(s / n - L) < 1e-5


def test_one_hot_rows_equal_dense_one_hot_matmul(rng):
    V = 7
    tables = _tiny_tables(rng, V=V)
    mc = GeoModelConfig(name="hybrid", Vi=V + 1, V=V, H=5, C=4)
    spec = ParamSpec(param_shapes(mc))
    theta = rng.standard_normal(spec.size)
    p = spec.views(theta)
    ctx, y = _ctx(rng, 3, 4, V)
    x = featurize("abs", ctx, tables)
    onehot = np.zeros((3, 2 * mc.Vi))
    onehot[np.arange(3), ctx[:, -2]] = 1
    onehot[np.arange(3), mc.Vi + ctx[:, -1]] = 1
    h = np.maximum(np.concatenate([x, onehot], 1) @ p["fc1"]["w"] + p["fc1"]["b"], 0)
    dense = h @ p["fc2"]["w"] + p["fc2"]["b"]
    np.testing.assert_allclose(forward(p, ctx, mc, tables)[0], dense, atol=1e-10)


def test_rotated_features_put_current_token_on_pole(rng):
    tables = _tiny_tables(rng)
    ctx = np.array([[1, 2, 3, 4], [7, 7, 7, 5]], np.int32)
    f = featurize("rot", ctx, tables).reshape(2, 4, 3)
    np.testing.assert_allclose(f[:, -1], np.tile(pole(3), (2, 1)), atol=1e-6)
    np.testing.assert_allclose(f[1, :3], 0.0)  # PAD stays zero
    # rotations preserve the angle between context coordinates
    X = tables["X"]
    np.testing.assert_allclose(f[0, 0] @ f[0, 1], X[1] @ X[2], atol=1e-6)
    g = featurize("rot_nbrs", ctx, tables).reshape(2, 4, 6)
    np.testing.assert_allclose(np.linalg.norm(g[0, :, 3:], axis=1), np.linalg.norm(tables["O"][ctx[0]], axis=1),
                               atol=1e-6)


def test_unknown_model_name():
    with pytest.raises(ConfigError, match="unknown geometric model"):
        GeoModelConfig(name="nope", Vi=3, V=2)


@pytest.mark.parametrize("kw,match", [(dict(H=0), "--dim"), (dict(C=0), "--context"), (dict(k=0), "--coord-dim"),
                                      (dict(Vi=7), "Vi > V"), (dict(name="trigram", C=1), "last 2 context"),
                                      (dict(name="geo_successor", C=2, n_succ=3), "last 3 context")])
def test_bad_config_names_the_flag(kw, match):
    args = dict(name="hybrid", Vi=8, V=7, H=5, C=4) | kw
    with pytest.raises(ConfigError, match=match):
        GeoModelConfig(**args)
