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
