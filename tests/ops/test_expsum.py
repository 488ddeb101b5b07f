import numpy as np
import pytest

from geolm.ops.expsum import exp_rows, exp_rows_ref


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (3, 17), (16, 3297), (5, 64)])
def test_exp_rows_matches_numpy(rng, shape):
    z = (rng.standard_normal(shape) * 20.0).astype(np.float32)
    z.flat[0] = -86.9  # near both ends of the safe range
    z.flat[-1] = 87.9
    a, b = z.copy(), z.copy()
    s, bad = exp_rows(a)
    s_ref, bad_ref = exp_rows_ref(b)
    assert bad == bad_ref == 0
    ref64 = np.exp(z.astype(np.float64))
    np.testing.assert_allclose(a, ref64, rtol=3e-7, atol=0)  # <= ~2 ulp of float32
    np.testing.assert_allclose(b, ref64, rtol=3e-7, atol=0)
    np.testing.assert_allclose(s, ref64.sum(axis=1), rtol=1e-6)
    np.testing.assert_allclose(s, s_ref, rtol=1e-6)
    assert s.dtype == np.float64


def test_exp_rows_exact_at_integers_and_zero():
    z = np.array([[0.0, 1.0, -1.0, np.log(2.0), 10.0, -10.0]], np.float32)
    e = z.copy()
    exp_rows(e)
    np.testing.assert_allclose(e, np.exp(z.astype(np.float64)), rtol=2e-7)
    assert e[0, 0] == 1.0


def test_exp_rows_flushes_below_minus_87(rng):
    z = rng.standard_normal((3, 8)).astype(np.float32)
    z[1, 2], z[2, 5] = -87.5, -np.inf
    a, b = z.copy(), z.copy()
    s, bad = exp_rows(a)
    s_ref, bad_ref = exp_rows_ref(b)
    assert bad == bad_ref == 0 and a[1, 2] == 0.0 and a[2, 5] == 0.0 and b[1, 2] == 0.0
    np.testing.assert_allclose(s, s_ref, rtol=1e-6)


@pytest.mark.parametrize("val", [100.0, np.nan, np.inf])
def test_exp_rows_counts_unsafe_entries(rng, val):
    z = rng.standard_normal((4, 9)).astype(np.float32)
    z[2, 3] = val
    z[0, 1] = val
    _, bad = exp_rows(z.copy())
    _, bad_ref = exp_rows_ref(z.copy())
    assert bad == bad_ref == 2


def test_exp_rows_dense_grid_accuracy():
    # a fine grid over the whole safe range and a finer one over [-1, 1]
    z = np.concatenate([np.linspace(-87.0, 88.0, 200001), np.linspace(-1.0, 1.0, 100001)]).astype(np.float32)
    e = z[None].copy()
    exp_rows(e)
    ref = np.exp(z.astype(np.float64))
    rel = np.abs(e[0] - ref) / ref
    assert rel.max() < 2.5e-7  # float32 eps/2 = 6e-8: within ~4 ulp in the worst case
