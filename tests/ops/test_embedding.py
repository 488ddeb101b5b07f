import numpy as np
import pytest

from geolm.core.scatter import scatter_add_rows
from geolm.ops.embedding import embedding_backward, embedding_backward_ref, embedding_forward
from geolm.core.errors import DataError
from geolm.core.gradcheck import check_grads


@pytest.mark.parametrize("ids_shape,V,D", [((1,), 1, 1), ((1, 1), 3, 2), ((2, 5), 4, 3), ((7,), 2, 5),
                                           ((2, 3, 2), 6, 1)])
def test_embedding_gradcheck(rng, strict_float, ids_shape, V, D):
    ids = rng.integers(0, V, ids_shape)  # small V: ids repeat
    check_grads(embedding_forward, embedding_backward, {"ids": ids, "w": rng.standard_normal((V, D))}, rng=rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("ids_shape,V,D", [((1,), 1, 1), ((4, 9), 5, 7), ((3, 50), 1000, 16), ((300,), 3, 4)])
def test_nb_matches_ref(rng, dtype, id_dtype, ids_shape, V, D):
    ids = rng.integers(0, V, ids_shape).astype(id_dtype)
    w = rng.standard_normal((V, D)).astype(dtype)
    y, cache = embedding_forward(ids, w)
    assert y.dtype == dtype and y.shape == ids_shape + (D,)
    np.testing.assert_array_equal(y, w[ids])
    dy = rng.standard_normal(y.shape).astype(dtype)
    ref = embedding_backward_ref(dy, cache)
    nb = embedding_backward(dy, cache)
    assert nb.dtype == ref.dtype == dtype and nb.shape == (V, D)
    tol = 1e-5 if dtype == np.float32 else 1e-12  # same sums, possibly different order
    np.testing.assert_allclose(nb, ref, rtol=tol, atol=tol)


def test_repeated_ids_accumulate():
    w = np.zeros((4, 2))
    ids = np.array([[1, 1, 3], [1, 0, 3]])
    _, cache = embedding_forward(ids, w)
    dy = np.arange(12, dtype=np.float64).reshape(2, 3, 2)
    expected = np.zeros((4, 2))
    for i, v in enumerate(ids.reshape(-1)):
        expected[v] += dy.reshape(-1, 2)[i]
    for fn in (embedding_backward, embedding_backward_ref):
        np.testing.assert_array_equal(fn(dy, cache), expected)
    assert np.all(embedding_backward(dy, cache)[2] == 0)


def test_nb_kernel_accumulates_into_output():
    dw = np.ones((2, 2), np.float32)
    scatter_add_rows(dw, np.array([1, 1]), np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(dw, [[1, 1], [3, 3]])


def test_bad_ids(rng):
    w = rng.standard_normal((5, 3))
    with pytest.raises(DataError, match="outside the embedding table"):
        embedding_forward(np.array([0, 5]), w)
    with pytest.raises(DataError, match="outside the embedding table"):
        embedding_forward(np.array([-1, 2]), w)
    with pytest.raises(DataError, match="integers"):
        embedding_forward(np.array([0.0, 1.0]), w)
