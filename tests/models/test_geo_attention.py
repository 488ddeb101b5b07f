import numpy as np
import pytest

from geolm.core.gradcheck import check_grads
from geolm.core.params import ParamSpec, RowGrad, accumulate
from geolm.models import geo_attention
from geolm.ops.losses import xent_factors

V, d, C, K = 7, 4, 4, 3


def _problem(rng, B, full, dtype=np.float64):
    spec = ParamSpec(geo_attention.param_shapes(V + 1, d, 5, V, C, full))
    theta = spec.zeros(dtype)
    geo_attention.init_(spec.views(theta), np.random.default_rng(0))
    theta += (0.05 * rng.standard_normal(spec.size)).astype(dtype)  # non-zero biases
    nbr = np.stack([rng.choice([u for u in range(V) if u != v], K, replace=False) for v in range(V)])
    nbr[1, -1] = -1  # a padded neighbour slot
    ctx = rng.integers(0, V, (B, C))
    ctx[0, :2] = V  # left PAD (masked in full mode)
    ctx[0, -1] = 1
    if B > 2:
        ctx[1] = ctx[0]  # repeated ids accumulate
        ctx[2, -1] = V  # PAD as the current token: no neighbours
    return spec, theta, nbr, ctx


def _flat(dp, spec):
    """dp accumulated into a zeroed flat float64 buffer."""
    g = spec.zeros(np.float64)
    accumulate(spec.views(g), dp)
    return g


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("B", [1, 4])
def test_pair_gradcheck(rng, strict_float, full, B):
    spec, theta, nbr, ctx = _problem(rng, B, full)

    def fwd(p):
        return geo_attention.forward(p, ctx, nbr, V, full)

    def bwd(dy, cache):
        dp = geo_attention.backward(dy.copy(), cache)
        assert isinstance(dp["emb"]["w"], RowGrad)
        return spec.views(_flat(dp, spec))

    check_grads(fwd, bwd, {"p": spec.views(theta)}, rng=rng)


@pytest.mark.parametrize("full", [False, True])
def test_implicit_xent_backward_equals_explicit(rng, full):
    spec, theta, nbr, ctx = _problem(rng, 5, full)
    p = spec.views(theta)
    y = np.array([0, 3, 3, 6, 1])
    logits, cache = geo_attention.forward(p, ctx, nbr, V, full)
    e = logits.copy()
    _, r = xent_factors(e, y)
    G = r[:, None] * e
    G[np.arange(5), y] -= 1.0 / 5
    before = theta.copy()
    g_imp = _flat(geo_attention.backward(e, cache, xent=(r, y)), spec)
    g_exp = _flat(geo_attention.backward(G, cache), spec)
    np.testing.assert_array_equal(theta, before)  # pure: params untouched
    np.testing.assert_allclose(g_imp, g_exp, rtol=1e-12, atol=1e-14)


def test_masked_slots_get_no_embedding_gradient(rng):
    """PAD positions and padded neighbours are gathered from row 0 but masked: row 0 of dE only gets real uses."""
    spec, theta, nbr, ctx = _problem(rng, 4, True)
    ctx = np.where(ctx == 0, 2, ctx)  # no real use of token 0 in the context
    nbr = np.where(nbr == 0, 5, nbr)  # nor among the neighbours
    logits, cache = geo_attention.forward(spec.views(theta), ctx, nbr, V, True)
    g = spec.views(_flat(geo_attention.backward(rng.standard_normal(logits.shape), cache), spec))
    assert np.all(g["emb"]["w"][0] == 0.0) and np.any(g["emb"]["w"][1] != 0.0)
