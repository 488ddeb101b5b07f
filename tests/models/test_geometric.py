import numpy as np
import pytest

from geolm.core.errors import ConfigError
from geolm.models.geometric import (MODELS, GeoModelConfig, build_tables, featurize, mlp_lm_backward, mlp_lm_forward,
                             model_init_, model_loss_and_grads, model_nll, model_shapes, nll_rows, xent_factors,
                             xent_inplace)
from geolm.core.gradcheck import check_grads, check_grads_directional
from geolm.ops.losses import xent_backward, xent_forward
from geolm.core.params import ParamSpec
from geolm.geometry.rotation import pole


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_xent_inplace_matches_losses(rng, dtype):
    logits = (3 * rng.standard_normal((5, 11))).astype(dtype)
    y = rng.integers(0, 11, 5)
    ref, cache = xent_forward(logits.copy(), y)
    dref = xent_backward(1.0, cache)
    loss, d = xent_inplace(logits.copy(), y)
    assert d.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert abs(loss - ref) < tol * 10
    np.testing.assert_allclose(d, dref, atol=tol)
    np.testing.assert_allclose(nll_rows(logits, y).mean(), ref, rtol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 40.0, -40.0])  # 40 * randn: rows beyond +-60 take the shifted path
def test_xent_factors_implicit_gradient_and_shift(rng, dtype, scale):
    logits = (scale * rng.standard_normal((6, 13))).astype(dtype)
    logits[2] -= 200.0  # a row far below: shifted, not underflowed
    y = rng.integers(0, 13, 6)
    ref, cache = xent_forward(logits.astype(np.float64), y)
    dref = xent_backward(1.0, cache)
    e = logits.copy()
    loss, r = xent_factors(e, y)
    d = r[:, None] * e
    d[np.arange(6), y] -= 1.0 / 6
    tol = 2e-5 if dtype == np.float32 else 1e-12
    assert abs(loss - ref) <= tol * abs(ref) and r.dtype == dtype
    np.testing.assert_allclose(d, dref, atol=tol)
    np.testing.assert_allclose(nll_rows(logits, y).mean(), ref, rtol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale,shift", [(1.0, 0.0), (40.0, 0.0), (1.0, -200.0), (1.0, 300.0)])
def test_xent_factors_refill_matches_shifted(rng, dtype, scale, shift):
    """The optimistic no-max path, and its refill fallback (overflow, underflow), equal the shifted computation."""
    logits = (scale * rng.standard_normal((6, 13)) + shift).astype(dtype)
    logits[1] += 5.0
    y = rng.integers(0, 13, 6)
    e1, e2 = logits.copy(), logits.copy()
    calls = []

    def refill(z):
        calls.append(1)
        z[...] = logits

    l1, r1 = xent_factors(e1, y)
    l2, r2 = xent_factors(e2, y, refill)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    assert abs(l1 - l2) <= tol * abs(l1)
    np.testing.assert_allclose(r1[:, None] * e1, r2[:, None] * e2, atol=tol)
    fallback = not (scale == 1.0 and shift == 0.0) and (dtype == np.float32 or shift < 0)  # float64 exp: 1e308
    assert len(calls) == int(fallback)
    z = logits.copy()
    np.testing.assert_allclose(nll_rows(z, y, overwrite=True, refill=refill), nll_rows(logits, y), rtol=tol)


def test_xent_factors_propagates_nan(rng):
    logits = rng.standard_normal((3, 5)).astype(np.float32)
    logits[1, 2] = np.nan
    loss, _ = xent_factors(logits.copy(), np.array([0, 1, 2]))
    assert np.isnan(loss)
    z = logits.copy()
    loss, _ = xent_factors(z, np.array([0, 1, 2]), lambda b: b.__setitem__(Ellipsis, logits))
    assert np.isnan(loss)


@pytest.mark.parametrize("F,J,B", [(0, 2, 3), (4, 0, 1), (4, 2, 5), (3, 1, 1)])
def test_mlp_lm_pair_gradcheck(rng, strict_float, F, J, B):
    Vi, H, V = 6, 5, 7
    spec = ParamSpec({"fc1": {"w": (F + J * Vi, H), "b": (H,)}, "fc2": {"w": (H, V), "b": (V,)}})
    p = spec.views(rng.standard_normal(spec.size))
    p["fc1"]["b"][...] += 0.3  # keep some pre-activations away from the ReLU kink
    rows = F + np.arange(J) * Vi + rng.integers(0, Vi, (B, J))
    if J and B > 1:
        rows[1] = rows[0]  # repeated ids must accumulate
    x = rng.standard_normal((B, F))

    def fwd(p, x=x):
        return mlp_lm_forward(x, rows, p)

    def bwd(dy, cache):
        dx, dp = mlp_lm_backward(dy.copy(), cache)
        return (dp, dx) if F else dp

    check_grads(fwd, bwd, {"p": p, "x": x} if F else {"p": p}, rng=rng)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("B", [1, 4])
def test_model_loss_gradcheck(rng, strict_float, name, B):
    V = 7
    tables = _tiny_tables(rng, V=V)
    mc = GeoModelConfig(name=name, Vi=V + 1, V=V, H=5, C=4, k=3, n_succ=2, k_succ=4)
    spec = ParamSpec(model_shapes(mc))
    theta = spec.zeros(np.float64)
    model_init_(mc, spec.views(theta), np.random.default_rng(0))
    theta += 0.05 * rng.standard_normal(theta.shape)  # non-zero biases, generic point
    ctx, y = _ctx(rng, B, mc.C, V)
    if B == 1:
        ctx[0, -1] = 2  # a real current token

    def loss(th):
        s, n = model_nll(mc, tables, spec.views(th), ctx, y)
        return s / n

    def grad(th):
        g = np.zeros_like(th)
        L = model_loss_and_grads(mc, tables, spec.views(th), spec.views(g), ctx, y)
        assert abs(L - loss(th)) < 1e-10
        return g

    check_grads_directional(loss, grad, theta, rng=rng, n_dirs=4)


@pytest.mark.parametrize("name", ["trigram", "geo_rot_nbrs", "geo_attention_full"])
def test_float32_step_stays_float32(rng, name):
    V = 7
    tables = _tiny_tables(rng, V=V)
    mc = GeoModelConfig(name=name, Vi=V + 1, V=V, H=5, C=4)
    spec = ParamSpec(model_shapes(mc))
    theta = spec.zeros(np.float32)
    model_init_(mc, spec.views(theta), rng)
    g = np.zeros_like(theta)
    ctx, y = _ctx(rng, 3, 4, V)
    L = model_loss_and_grads(mc, tables, spec.views(theta), spec.views(g), ctx, y)
    assert g.dtype == np.float32 and np.isfinite(L) and np.abs(g).sum() > 0


def test_one_hot_rows_equal_dense_one_hot_matmul(rng):
    V = 7
    tables = _tiny_tables(rng, V=V)
    mc = GeoModelConfig(name="hybrid", Vi=V + 1, V=V, H=5, C=4)
    spec = ParamSpec(model_shapes(mc))
    theta = rng.standard_normal(spec.size)
    p = spec.views(theta)
    ctx, y = _ctx(rng, 3, 4, V)
    x = featurize("abs", ctx, tables)
    onehot = np.zeros((3, 2 * mc.Vi))
    onehot[np.arange(3), ctx[:, -2]] = 1
    onehot[np.arange(3), mc.Vi + ctx[:, -1]] = 1
    dense = np.maximum(np.concatenate([x, onehot], 1) @ p["fc1"]["w"] + p["fc1"]["b"], 0) @ p["fc2"]["w"] + p["fc2"]["b"]
    from geolm.models.geometric import model_forward
    np.testing.assert_allclose(model_forward(mc, tables, p, ctx)[0], dense, atol=1e-10)


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_col_scatter_kernel_matches_reference(rng, dtype):
    from geolm.models.geometric import _col_scatter_sub, _col_scatter_sub_ref
    dw = rng.standard_normal((6, 9)).astype(dtype)
    y = np.array([3, 0, 3, 8, 3])  # repeats accumulate
    a = rng.standard_normal((5, 6)).astype(dtype)
    got, ref = dw.copy(), dw.copy()
    _col_scatter_sub(got, y, a)
    _col_scatter_sub_ref(ref, y, a)
    np.testing.assert_allclose(got, ref, rtol=1e-6 if dtype == np.float32 else 1e-14)
