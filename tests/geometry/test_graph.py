import numpy as np
import pytest
import scipy.sparse as sp

from geolm.core.errors import ConfigError
from geolm.geometry.graph import dice_kappa, edge_kappa, kappa_lookup, neighbour_graph, topk_graph, topk_neighbours
from naive_geometry import dice_naive, neighbour_sets, topk_naive


def _P(rng, V, density=0.4, ties=False):
    P = rng.random((V, V)) * (rng.random((V, V)) < density)
    if ties:
        P = np.round(P * 3) / 3  # many equal values
    P = P + P.T
    np.fill_diagonal(P, 5.0)  # self entries must be ignored
    return sp.csr_matrix(P)


@pytest.mark.parametrize("V,k,ties", [(1, 1, False), (6, 1, False), (10, 3, True), (12, 4, False), (8, 20, True)])
def test_topk_matches_naive(rng, V, k, ties):
    P = _P(rng, V, ties=ties)
    nbr = topk_neighbours(P, k)
    assert nbr.dtype == np.int32 and nbr.shape == (V, k)
    np.testing.assert_array_equal(nbr, topk_naive(P.toarray(), k))


def test_topk_ties_by_lower_id():
    P = sp.csr_matrix(np.array([[0, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 2], [1, 0, 2, 0.0]]))
    np.testing.assert_array_equal(topk_neighbours(P, 2), [[1, 2], [0, -1], [3, 0], [2, 0]])


def test_neighbour_graph_and_kappa(rng):
    V = 15
    nbr = topk_neighbours(_P(rng, V, density=0.3), 3)
    nbr[2, :] = -1  # a node that picks nobody
    A = neighbour_graph(nbr)
    N = neighbour_sets(nbr, V)
    dense = A.toarray()
    assert (dense == dense.T).all() and (np.diag(dense) == 0).all() and set(np.unique(dense)) <= {0, 1}
    for v in range(V):
        assert set(np.flatnonzero(dense[v])) == N[v]
    r, c, kap = edge_kappa(A)
    assert r.size == A.nnz
    np.testing.assert_allclose(kap, [dice_naive(N, u, v) for u, v in zip(r, c)], rtol=0, atol=1e-15)
    u, v = rng.integers(0, V, 40), rng.integers(0, V, 40)
    np.testing.assert_allclose(dice_kappa(A, u, v), [dice_naive(N, a, b) for a, b in zip(u, v)], atol=1e-15)
    assert (kap >= -1).all() and (kap < 1).all()


def test_kappa_hand_example():
    # triangle 0-1-2 plus pendant 3 on 2: N(0)={1,2}, N(2)={0,1,3}: kappa(0,2) = 2*1/5 - 1
    A = neighbour_graph(np.array([[1, 2], [2, -1], [3, -1], [-1, -1]]))
    assert dice_kappa(A, [0], [2])[0] == pytest.approx(2 / 5 - 1)
    assert dice_kappa(A, [2], [3])[0] == pytest.approx(-1.0)  # N(3)={2}, N(2) has no 2
    assert dice_kappa(neighbour_graph(np.full((3, 1), -1)), [0], [1])[0] == -1.0  # isolated pair


def test_kappa_lookup(rng):
    V = 12
    nbr = topk_neighbours(_P(rng, V, density=0.3), 3)
    A = neighbour_graph(nbr)
    N = neighbour_sets(nbr, V)
    t = np.array([0, 5, V, 5, 11])  # V = PAD
    K = kappa_lookup(A, t)
    assert K.shape == (5, V)
    for m, tt in enumerate(t):
        for w in range(V):
            want = dice_naive(N, tt, w) if tt < V and w in N[tt] else -1.0
            assert K[m, w] == pytest.approx(want, abs=1e-15)
    w = np.array([3, 0, 7])
    np.testing.assert_array_equal(kappa_lookup(A, t, w), K[:, w])
    assert kappa_lookup(A, t, dtype=np.float32).dtype == np.float32


def test_topk_graph_and_errors(rng):
    P = _P(rng, 6)
    nbr, A = topk_graph(P, 2)
    np.testing.assert_array_equal(nbr, topk_neighbours(P, 2))
    assert (A != neighbour_graph(nbr)).nnz == 0
    with pytest.raises(ConfigError, match="--k"):
        topk_neighbours(P, 0)
