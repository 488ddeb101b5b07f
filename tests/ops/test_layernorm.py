import numpy as np
import pytest

from geolm.core.gradcheck import check_grads
from geolm.ops.layernorm import layernorm_backward, layernorm_forward
from naive_nn import layernorm_naive


# D = 2 is left out: xhat = +-1 there, so dx = O(eps) and is all finite-difference noise
@pytest.mark.parametrize("shape", [(1, 3), (1, 1, 3), (4, 5), (2, 3, 8), (3, 1, 1)])
def test_layernorm_gradcheck(rng, strict_float, shape):
    D = shape[-1]
    inputs = {"x": 2.0 * rng.standard_normal(shape) + 0.5, "w": 1.0 + 0.3 * rng.standard_normal(D),
              "b": rng.standard_normal(D)}
    check_grads(layernorm_forward, layernorm_backward, inputs, rng=rng)


def test_layernorm_matches_naive(rng):
    x = 3.0 * rng.standard_normal((2, 3, 6)) + 10.0
    w, b = rng.standard_normal(6), rng.standard_normal(6)
    y, _ = layernorm_forward(x, w, b)
    np.testing.assert_allclose(y, layernorm_naive(x, w, b), rtol=1e-11, atol=1e-12)
    y2, _ = layernorm_forward(x, w, b, eps=0.5)
    np.testing.assert_allclose(y2, layernorm_naive(x, w, b, eps=0.5), rtol=1e-11, atol=1e-12)


def test_layernorm_cache_is_small(rng):
    x = rng.standard_normal((4, 5, 8))
    _, (xc, w, mu, rstd) = layernorm_forward(x, np.ones(8), np.zeros(8))
    assert xc is x and mu.shape == rstd.shape == (4, 5, 1)


def test_constant_rows_are_finite(strict_float):
    x = np.full((2, 4), 3.0)
    y, cache = layernorm_forward(x, np.ones(4), np.zeros(4))
    dx, dw, db = layernorm_backward(np.ones((2, 4)), cache)
    assert np.all(y == 0) and np.all(np.isfinite(dx))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layernorm_dtype(rng, dtype):
    x = rng.standard_normal((2, 3, 4)).astype(dtype)
    w, b = np.ones(4, dtype), np.zeros(4, dtype)
    y, cache = layernorm_forward(x, w, b)
    assert y.dtype == dtype
    assert all(g.dtype == dtype for g in layernorm_backward(np.ones_like(y), cache))
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-6)
