import numpy as np
import pytest
import scipy.sparse as sp

from geolm.core.errors import ConfigError, DataError
from geolm.geometry.pmi import cooccurrence, directed_cooccurrence, ppmi, transition_matrix
from naive_geometry import cooccurrence_naive, ppmi_naive


def _stories(rng, n, V, pad=None, maxlen=12):
    out = []
    for _ in range(n):
        s = rng.integers(0, V, size=int(rng.integers(0, maxlen)))
        if pad is not None and s.size:
            s[rng.random(s.size) < 0.2] = pad
        out.append(s.astype(np.int32))
    return out


@pytest.mark.parametrize("window", [1, 2, 5, 20])
def test_cooccurrence_matches_naive(rng, window):
    V = 7
    stories = _stories(rng, 9, V, pad=V) + [np.array([3], np.int32), np.array([], np.int32)]
    C = cooccurrence(stories, V, window)
    assert sp.issparse(C) and C.dtype == np.int64 and C.shape == (V, V)
    np.testing.assert_array_equal(C.toarray(), cooccurrence_naive(stories, V, window))
    assert (C.diagonal() == 0).all()
    assert (C != C.T).nnz == 0


def test_exclude_and_no_cross_story(rng):
    V = 6
    stories = _stories(rng, 8, V)
    C = cooccurrence(stories, V, 3, exclude=[5])
    np.testing.assert_array_equal(C.toarray(), cooccurrence_naive(stories, V, 3, exclude=[5]))
    assert C[5].nnz == 0
    # two one-token stories never pair up
    assert cooccurrence([np.array([0]), np.array([1])], 2, 5).nnz == 0
    assert cooccurrence([np.array([0, 1])], 2, 5)[0, 1] == 1


def test_directed(rng):
    V = 6
    stories = _stories(rng, 10, V, pad=V)
    D = directed_cooccurrence(stories, V, 4)
    np.testing.assert_array_equal(D.toarray(), cooccurrence_naive(stories, V, 4, directed=True))
    np.testing.assert_array_equal((D + D.T).toarray(), cooccurrence(stories, V, 4).toarray())
    D1 = directed_cooccurrence([np.array([0, 1, 2])], 3, 1).toarray()
    np.testing.assert_array_equal(D1, [[0, 1, 0], [0, 0, 1], [0, 0, 0]])


def test_shards_sum_exactly(rng):
    V = 8
    stories = _stories(rng, 20, V)
    full = cooccurrence(stories, V, 5)
    parts = cooccurrence(stories[:7], V, 5) + cooccurrence(stories[7:], V, 5)
    assert (full != parts).nnz == 0


@pytest.mark.parametrize("smoothing", [None, 0.75])
def test_ppmi_matches_naive(rng, smoothing):
    V = 6
    stories = _stories(rng, 12, V)
    for C in (cooccurrence(stories, V, 3), directed_cooccurrence(stories, V, 3)):
        P = ppmi(C, smoothing)
        assert P.dtype == np.float64 and (P.data > 0).all()
        np.testing.assert_allclose(P.toarray(), ppmi_naive(C.toarray(), smoothing), rtol=1e-12, atol=1e-14)


def test_ppmi_hand_example():
    C = np.array([[0, 2, 1], [2, 0, 0], [1, 0, 0]])
    P = ppmi(sp.csr_matrix(C)).toarray()
    # N = 6, rows (3, 2, 1): PMI(0,1) = ln(2*6/(3*2)) = ln 2, PMI(0,2) = ln(1*6/(3*1)) = ln 2
    np.testing.assert_allclose(P, np.log(2.0) * (C > 0), rtol=1e-14)


def test_errors():
    with pytest.raises(ConfigError, match="window"):
        cooccurrence([np.array([0, 1])], 2, 0)
    with pytest.raises(ConfigError, match="smoothing"):
        ppmi(sp.csr_matrix(np.eye(2)), 1.5)
    with pytest.raises(DataError, match="empty"):
        ppmi(sp.csr_matrix((3, 3)))
    with pytest.raises(DataError, match="integer"):
        cooccurrence([np.array([0.5, 1.0])], 2, 2)


def test_transition_matrix():
    T = transition_matrix(np.array([[0, 2, 2], [0, 0, 0], [1, 0, 3]])).toarray()
    np.testing.assert_allclose(T, [[0, 0.5, 0.5], [0, 0, 0], [0.25, 0, 0.75]])
