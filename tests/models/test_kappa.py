import numpy as np
import pytest
import scipy.sparse as sp

from geolm.models import kappa as K
from geolm.geometry.graph import neighbour_graph


def _unit(rng, V, k=3):
    X = rng.standard_normal((V, k))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_continuity_matches_brute_force(rng):
    V = 6
    X = _unit(rng, V)
    prev = np.array([0, 1, 2, 6, 3])
    cur = np.array([1, 1, 4, 2, 6])  # same token twice, PAD as prev, PAD as current
    got = K.continuity(X, prev, cur, pad_id=6, dtype=np.float64)
    for m in range(len(cur)):
        for w in range(V):
            if prev[m] == 6 or cur[m] == 6 or prev[m] == cur[m] or w == cur[m]:
                want = 0.0
            else:
                a, b = X[cur[m]] - X[prev[m]], X[w] - X[cur[m]]
                want = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
            assert got[m, w] == pytest.approx(want, abs=1e-9)


def test_biased_nll_gradient(rng):
    M, V = 5, 7
    logp = K.log_softmax(rng.standard_normal((M, V)))
    cont = rng.uniform(-1, 1, (M, V))
    kap = rng.uniform(-1, 1, (M, V))
    y = rng.integers(0, V, M)
    a, b, h = 0.7, -0.4, 1e-6
    s, g = K.biased_nll(logp, cont, kap, y, a, b)
    na = (K.biased_nll(logp, cont, kap, y, a + h, b)[0] - K.biased_nll(logp, cont, kap, y, a - h, b)[0]) / (2 * h)
    nb = (K.biased_nll(logp, cont, kap, y, a, b + h)[0] - K.biased_nll(logp, cont, kap, y, a, b - h)[0]) / (2 * h)
    np.testing.assert_allclose(g, [na, nb], rtol=1e-6)
    z = logp + a * cont - b * kap
    brute = -(z[np.arange(M), y] - np.log(np.exp(z).sum(1))).sum()
    assert s == pytest.approx(brute, rel=1e-12)


def test_fit_recovers_planted_coefficients(rng):
    M, V = 6000, 12
    logp = K.log_softmax(rng.standard_normal((M, V)))
    cont = rng.uniform(-1, 1, (M, V))
    kap = rng.uniform(-1, 1, (M, V))
    z = logp + 1.5 * cont - (-0.8) * kap
    p = np.exp(K.log_softmax(z))
    y = (p.cumsum(1) > rng.uniform(size=(M, 1))).argmax(1)
    a, b, info = K.fit_coefficients(logp, cont, kap, y)
    assert a == pytest.approx(1.5, abs=0.15) and b == pytest.approx(-0.8, abs=0.15)
    assert info["nll_fitted"] <= min(info["nll_none"], info["nll_published"])


def test_biased_eval_zero_coefficients_is_plain_nll(rng):
    V = 5
    X = _unit(rng, V)
    A = neighbour_graph(np.array([[1, 2], [2, 0], [0, 1], [4, -1], [3, -1]]), V)  # triangle 0-1-2, edge 3-4
    logits = rng.standard_normal((4, V)).astype(np.float32)
    ctx = np.array([[5, 0], [0, 1], [1, 2], [5, 5]])
    y = np.array([0, 1, 2, 3])
    s0, n = K.biased_eval_nll(logits, ctx, y, X, A, 5, 0.0, 0.0)
    plain = -(K.log_softmax(logits.astype(np.float64))[np.arange(4), y]).sum()
    assert n == 4 and s0 == pytest.approx(plain, rel=1e-5)
    s1, _ = K.biased_eval_nll(logits, ctx, y, X, A, 5, 1.0, 1.0)
    assert np.isfinite(s1) and s1 != pytest.approx(s0)
    cont, kap = K.bias_features(X, A, ctx, 5)
    assert np.all(cont[0] == 0) and np.all(cont[3] == 0) and np.all(kap[3] == -1)  # PAD: no bias signal
    assert sp.issparse(A) and kap[1, 2] == pytest.approx(-0.5) and kap[1, 4] == -1  # Dice: 2*1/4 - 1; no edge


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_continuity_kernel_matches_reference(rng, dtype):
    V, M = 40, 30
    X = _unit(rng, V)
    prev, cur = rng.integers(0, V + 1, M), rng.integers(0, V + 1, M)  # V = PAD
    cur[:3] = prev[:3]  # zero steps
    got, ref = K.continuity(X, prev, cur, V, dtype), K.continuity_ref(X, prev, cur, V, dtype)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref, atol=1e-12 if dtype == np.float64 else 1e-7)


@pytest.mark.parametrize("ab", [(1.0, 1.0), (0.3, -0.7), (0.0, 0.0), (0.0, 2.0)])
def test_sparse_biased_nll_equals_dense(rng, ab):
    V, M = 30, 25
    X = _unit(rng, V)
    nbr = np.stack([rng.choice(V, 3, replace=False) for _ in range(V)])
    A = neighbour_graph(nbr, V)
    ctx = rng.integers(0, V + 1, (M, 2))  # V = PAD: no edges, no continuity
    y = rng.integers(0, V, M)
    logits = 3 * rng.standard_normal((M, V))
    dense, _ = K.biased_eval_nll(logits, ctx, y, X, A, V, *ab)
    cont = K.continuity(X, ctx[:, 0], ctx[:, 1], V, np.float64)
    sparse = K.biased_nll_rows(logits, cont, K.edge_bias(A), ctx[:, 1], y, *ab)
    assert sparse.shape == (M,) and sparse.sum() == pytest.approx(dense, rel=1e-12)
