import math

import numpy as np
import pytest

from geolm.ops import activations as A
from geolm.core.gradcheck import check_grads

PAIRS = {"relu": (A.relu_forward, A.relu_backward), "gelu": (A.gelu_forward, A.gelu_backward),
         "tanh": (A.tanh_forward, A.tanh_backward)}


def _away_from_kink(x):
    # relu is not differentiable at 0: keep central differences off the kink
    return np.where(np.abs(x) < 1e-3, 0.5, x)


@pytest.mark.parametrize("name", list(PAIRS))
@pytest.mark.parametrize("shape", [(1,), (1, 1), (3, 4), (2, 3, 5)])
def test_activation_gradcheck(rng, strict_float, name, shape):
    fwd, bwd = PAIRS[name]
    # |x| <= 3: a lone saturated entry (gelu grad ~1e-7) would be all FD noise relative to itself
    check_grads(fwd, bwd, {"x": _away_from_kink(rng.uniform(-3.0, 3.0, shape))}, rng=rng)


@pytest.mark.parametrize("name", list(PAIRS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_dtype(rng, name, dtype):
    fwd, bwd = PAIRS[name]
    x = rng.standard_normal((4, 6)).astype(dtype)
    y, cache = fwd(x)
    assert y.dtype == dtype and y.shape == x.shape
    dx = bwd(rng.standard_normal(x.shape).astype(dtype), cache)
    assert dx.dtype == dtype and dx.shape == x.shape


def test_gelu_formula_and_limits(rng):
    x = np.array([-50.0, -3.0, -1.0, 0.0, 0.5, 2.0, 50.0])
    y, _ = A.gelu_forward(x)
    ref = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))) for v in x]
    np.testing.assert_allclose(y, ref, rtol=1e-14, atol=1e-14)
    assert y[0] == 0.0 and y[-1] == 50.0 and y[3] == 0.0
    # close to the exact erf GELU
    exact = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x]
    np.testing.assert_allclose(y, exact, atol=1e-3)


def test_gelu_float32_big_inputs_finite():
    x = np.array([-1e4, -30.0, 30.0, 1e4], np.float32)
    with np.errstate(all="raise"):
        y, c = A.gelu_forward(x)
    assert np.all(np.isfinite(y))  # x^3 overflow is not expected below ~1e12


def test_relu_and_tanh_values():
    x = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(A.relu_forward(x)[0], [0.0, 0.0, 3.0])
    np.testing.assert_allclose(A.tanh_forward(x)[0], np.tanh(x))
    np.testing.assert_array_equal(A.relu_backward(np.ones(3), A.relu_forward(x)[1]), [0.0, 0.0, 1.0])


# ------------------------------------------------------------------------------------------ gelu with its bias fused

def _gelu_bias(h, b):
    y, cache = A.gelu_bias_forward(np.array(h, copy=True), b)
    return y, cache


@pytest.mark.parametrize("shape", [(1, 1), (3, 4), (2, 3, 5)])
def test_gelu_bias_gradcheck(rng, strict_float, shape):
    check_grads(_gelu_bias, A.gelu_bias_backward,
                {"h": rng.uniform(-3.0, 3.0, shape), "b": rng.uniform(-1.0, 1.0, shape[-1:])}, rng=rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_bias_is_gelu_of_the_sum(rng, dtype):
    """The same function and derivative as gelu_forward / gelu_backward of h + b (float64: to rounding; float32:
    within the tanh form's own error), dtypes kept, h untouched unless it is the output."""
    h = (3.0 * rng.standard_normal((7, 33))).astype(dtype)
    b = rng.standard_normal(33).astype(dtype)
    dy = rng.standard_normal(h.shape).astype(dtype)
    h0 = h.copy()
    y, cache = A.gelu_bias_forward(h, b)
    np.testing.assert_array_equal(h, h0)
    dx, db = A.gelu_bias_backward(dy, cache)
    y_ref, c_ref = A.gelu_forward(h + b)
    dx_ref = A.gelu_backward(dy, c_ref)
    assert y.dtype == dx.dtype == db.dtype == dtype and y.shape == dx.shape == h.shape and db.shape == (33,)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(db, dx_ref.sum(axis=0), rtol=tol, atol=10 * tol)
    out = np.full((7, 34), np.nan, dtype)  # the augmented layout [y, 1]
    y2, _ = A.gelu_bias_forward(h, b, out=out, grad=False)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(out[:, 33], 1.0)
    y3, _ = A.gelu_bias_forward(h, b, out=h)  # in place over h
    np.testing.assert_array_equal(y3, y)
