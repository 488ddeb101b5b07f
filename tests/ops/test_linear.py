import numpy as np
import pytest

from geolm.core.gradcheck import check_grads
from geolm.ops.linear import linear_backward, linear_forward

SHAPES = [((1, 1), 1, 1), ((3,), 4, 2), ((2, 5), 3, 6), ((1, 1, 4), 4, 4), ((2, 3, 1), 1, 5)]


@pytest.mark.parametrize("lead,I,O", SHAPES)
def test_linear_gradcheck(rng, strict_float, lead, I, O):
    inputs = {"x": rng.standard_normal(lead[:-1] + (I,)) if lead[-1:] else rng.standard_normal((I,)),
              "w": rng.standard_normal((I, O)), "b": rng.standard_normal(O)}
    check_grads(linear_forward, linear_backward, inputs, rng=rng)


def test_linear_matches_einsum(rng):
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    y, _ = linear_forward(x, w, b)
    np.testing.assert_allclose(y, np.einsum("bti,io->bto", x, w) + b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_dtype(rng, dtype):
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in [(2, 3, 4), (4, 5), (5,)])
    y, cache = linear_forward(x, w, b)
    assert y.dtype == dtype
    dx, dw, db = linear_backward(rng.standard_normal(y.shape).astype(dtype), cache)
    assert dx.dtype == dw.dtype == db.dtype == dtype
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
