import numpy as np
import pytest

from geolm.core.scatter import scatter_add_rows, scatter_add_rows_ref


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,R,D", [(1, 1, 1), (0, 3, 2), (50, 4, 7), (9, 1000, 16)])
def test_scatter_add_rows_matches_reference(rng, dtype, M, R, D):
    rows = rng.integers(0, R, M)
    vals = rng.standard_normal((M, D)).astype(dtype)
    got = rng.standard_normal((R, D)).astype(dtype)
    ref = got.copy()
    scatter_add_rows(got, rows, vals)
    scatter_add_rows_ref(ref, rows, vals)
    np.testing.assert_allclose(got, ref, rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_repeated_rows_accumulate_in_order():
    dst = np.ones((3, 2), np.float32)
    scatter_add_rows(dst, np.array([2, 0, 2]), np.arange(6, dtype=np.float32).reshape(3, 2))
    np.testing.assert_array_equal(dst, [[3, 4], [1, 1], [1 + 0 + 4, 1 + 1 + 5]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scatter_into_a_transposed_view_is_a_column_scatter(rng, dtype):
    """dst.T as the table: dst[:, y_b] += a_b (the one-hot column term of geolm.models.geo_mlp), in place."""
    dst = rng.standard_normal((6, 9)).astype(dtype)
    y = np.array([3, 0, 3, 8, 3])  # repeats accumulate
    a = rng.standard_normal((5, 6)).astype(dtype)
    ref = dst.copy()
    np.subtract.at(ref.T, y, a)
    got = dst.copy()
    scatter_add_rows(got.T, y, -a)
    np.testing.assert_allclose(got, ref, rtol=1e-6 if dtype == np.float32 else 1e-14)
    want = dst.copy()
    for b in range(5):
        want[:, y[b]] -= a[b]
    np.testing.assert_array_equal(got, want)  # same order, x + (-a) == x - a exactly
