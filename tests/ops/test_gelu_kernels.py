"""Bias + GELU kernels against their NumPy reference and a float64 oracle: float32 accuracy (y relative, g absolute),
both drivers, the float32 exp's clamped range, NaN."""
import numpy as np
import pytest

from geolm.ops import gelu_kernels as gk


def _run(h, b, out_cols=0, grad=True):
    n, F = h.shape
    out = np.empty((n, F + out_cols), h.dtype)
    g = np.empty_like(h) if grad else None
    gk.gelu_bias_forward_nb(h, b, out, g)
    return out, g


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,F", [(1, 1), (3, 17), (40, 129), (300, 256)])
def test_kernels_match_reference(rng, monkeypatch, parallel, dtype, n, F):
    monkeypatch.setattr(gk, "PARALLEL_SIZE", 0 if parallel else 1 << 60)
    h = (3.0 * rng.standard_normal((n, F))).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    dy = rng.standard_normal((n, F)).astype(dtype)
    out, g = _run(h, b, out_cols=1)
    y_ref, g_ref = gk.gelu_bias_forward_ref(h, b)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out[:, :F], y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(g, g_ref, rtol=tol, atol=tol)
    np.testing.assert_array_equal(out[:, F], 1.0)
    dx = np.empty_like(dy)
    db = gk.gelu_bias_backward_nb(dy, g, dx)
    dx_ref, db_ref = gk.gelu_bias_backward_ref(dy, g)
    np.testing.assert_array_equal(dx, dx_ref)  # one product per entry
    np.testing.assert_allclose(db, db_ref, rtol=tol, atol=tol * n)
    assert db.dtype == dtype
    y_only, _ = _run(h, b, grad=False)
    np.testing.assert_array_equal(y_only, out[:, :F])  # with or without g: the same y


def test_float32_accuracy_against_float64():
    """y to a few ulp relative (|x| < 8; the tanh form loses all relative accuracy at x ~ -5), g to ~1e-6
    absolute over |x| <= 30 (the tanh form's 1 - tanh^2 cancels there)."""
    x = np.linspace(-30.0, 30.0, 200001).astype(np.float32)
    b = np.zeros(1, np.float32)
    out, g = _run(x[:, None], b)
    y64, g64 = gk.gelu_bias_forward_ref(x.astype(np.float64)[:, None], b.astype(np.float64))
    m = np.abs(x) < 8
    rel = np.abs(out[:, 0] - y64[:, 0]) / np.maximum(np.abs(y64[:, 0]), 1e-300)
    assert rel[m].max() < 3e-5  # exp's argument |2u| <= 60 carries its float32 rounding (cond = |2u|)
    assert np.median(rel[m]) < 3e-7
    assert np.abs(g[:, 0] - g64[:, 0]).max() < 2e-6
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(g))
    assert out[-1, 0] == 30.0 and out[0, 0] <= 0.0 and abs(out[0, 0]) < 1e-30


def test_nan_and_inf():
    h = np.array([[np.nan, np.inf, 1e30, -1e30, 0.0]], np.float32)
    out, g = _run(h, np.zeros(5, np.float32))
    assert np.isnan(out[0, 0]) and np.isnan(g[0, 0])
    assert out[0, 1] == np.inf and out[0, 2] == 1e30 and g[0, 2] == 1.0
    assert out[0, 4] == 0.0 and g[0, 4] == 0.5
