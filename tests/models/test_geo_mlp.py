import numpy as np
import pytest

from geolm.core.gradcheck import check_grads
from geolm.core.params import ParamSpec, RowGrad, accumulate
from geolm.models import geo_mlp
from geolm.ops.losses import xent_factors


def _zeros_like(tree):
    return {k: _zeros_like(v) if isinstance(v, dict) else np.zeros_like(v) for k, v in tree.items()}


def _dense(dp, p):
    """The gradient dict with every leaf (RowGrad too) accumulated into dense zeros shaped like p."""
    g = _zeros_like(p)
    accumulate(g, dp)
    return g


def _problem(rng, F, J, B, Vi=6, H=5, V=7, dtype=np.float64):
    spec = ParamSpec(geo_mlp.param_shapes(F, J, Vi, H, V))
    theta = rng.standard_normal(spec.size).astype(dtype)
    p = spec.views(theta)
    p["fc1"]["b"][...] += 0.3  # keep some pre-activations away from the ReLU kink
    ids = rng.integers(0, Vi, (B, J))
    if J and B > 1:
        ids[1] = ids[0]  # repeated ids must accumulate
    rows = geo_mlp.lookup_rows(ids, F, Vi)
    x = rng.standard_normal((B, F)).astype(dtype)
    return spec, theta, p, rows, x


@pytest.mark.parametrize("F,J,B", [(0, 2, 3), (4, 0, 1), (4, 2, 5), (3, 1, 1), (0, 1, 1), (0, 0, 2)])
def test_pair_gradcheck(rng, strict_float, F, J, B):
    """forward / pure backward (+ accumulate for the RowGrad) against central differences."""
    _, _, p, rows, x = _problem(rng, F, J, B)

    def fwd(p, x=x):
        return geo_mlp.forward(p, x, rows)

    def bwd(dy, cache):
        dx, dp = geo_mlp.backward(dy.copy(), cache, need_dx=True)
        assert dx.shape == (B, F)
        return (_dense(dp, p), dx) if F else _dense(dp, p)

    check_grads(fwd, bwd, {"p": p, "x": x} if F else {"p": p}, rng=rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("F,J,B", [(0, 2, 4), (3, 0, 1), (3, 2, 6)])
def test_implicit_xent_backward_equals_explicit(rng, dtype, F, J, B):
    """backward(e, xent=(r, y)) == backward(r e - onehot(y)/B): the row scale and one-hot folded into [B,H+1]."""
    spec, theta, p, rows, x = _problem(rng, F, J, B, dtype=dtype)
    y = rng.integers(0, 7, B)
    if B > 2:
        y[2] = y[0]  # repeated targets: _col_scatter_sub accumulates
    logits, cache = geo_mlp.forward(p, x, rows)
    e = logits.copy()
    _, r = xent_factors(e, y)
    G = r[:, None] * e
    G[np.arange(B), y] -= 1.0 / B
    _, dp_imp = geo_mlp.backward(e, cache, xent=(r, y))
    _, dp_exp = geo_mlp.backward(G, cache)
    g_imp, g_exp = spec.zeros(dtype), spec.zeros(dtype)
    accumulate(spec.views(g_imp), dp_imp)
    accumulate(spec.views(g_exp), dp_exp)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(g_imp, g_exp, rtol=tol, atol=tol)
    assert g_imp.dtype == dtype


def test_backward_is_pure_and_fc1_grad_sparse(rng):
    spec, theta, p, rows, x = _problem(rng, 2, 2, 4)
    logits, cache = geo_mlp.forward(p, x, rows)
    before, dl = theta.copy(), rng.standard_normal(logits.shape)
    dl0 = dl.copy()
    _, dp1 = geo_mlp.backward(dl, cache)
    _, dp2 = geo_mlp.backward(dl, cache)
    np.testing.assert_array_equal(theta, before)
    np.testing.assert_array_equal(dl, dl0)
    w = dp1["fc1"]["w"]
    assert isinstance(w, RowGrad) and w.head.shape == (2, 5) and len(w.scatters) == 2
    for a in (dp1, dp2):
        assert not any(np.shares_memory(v, theta) for v in (a["fc2"]["w"], a["fc2"]["b"], a["fc1"]["b"]))
    np.testing.assert_array_equal(_dense(dp1, p)["fc1"]["w"], _dense(dp2, p)["fc1"]["w"])


def test_stacked_view_and_copy_paths_agree(rng):
    """fc2's bias rides in the GEMM as a view of the flat buffer, or as a concatenated copy for separate arrays."""
    _, theta, p, rows, x = _problem(rng, 3, 1, 4)
    assert np.shares_memory(geo_mlp._stacked(p["fc2"]["w"], p["fc2"]["b"]), theta)
    q = {k: {kk: vv.copy() for kk, vv in v.items()} for k, v in p.items()}
    assert not np.shares_memory(geo_mlp._stacked(q["fc2"]["w"], q["fc2"]["b"]), q["fc2"]["w"])
    np.testing.assert_array_equal(geo_mlp.forward(p, x, rows)[0], geo_mlp.forward(q, x, rows)[0])
    h = np.maximum(x @ p["fc1"]["w"][:3] + p["fc1"]["w"][rows[:, 0]] + p["fc1"]["b"], 0.0)
    np.testing.assert_allclose(geo_mlp.forward(p, x, rows)[0], h @ p["fc2"]["w"] + p["fc2"]["b"], rtol=1e-12)


def test_refill_rewrites_the_logits(rng):
    _, _, p, rows, x = _problem(rng, 3, 2, 4, dtype=np.float32)
    logits, cache = geo_mlp.forward(p, x, rows)
    z = np.zeros_like(logits)
    geo_mlp.refill(cache)(z)
    np.testing.assert_array_equal(z, logits)
