import numpy as np
import pytest
import scipy.sparse as sp

from geolm.geometry.coords import shuffled, sphere_coords, successor_coords
from geolm.core.errors import ConfigError, DataError
from geolm.geometry.pmi import cooccurrence, directed_cooccurrence, ppmi


def _sym_ppmi(rng, V, n=60):
    stories = [rng.integers(0, V, size=int(rng.integers(2, 15))) for _ in range(n)]
    return ppmi(cooccurrence(stories, V, 3))


def _random_sparse(rng, V, density=0.1, sym=False):
    A = sp.random(V, V, density=density, random_state=np.random.RandomState(0), format="csr")
    A.data = rng.random(A.data.size) + 0.1
    return sp.csr_matrix(A + A.T) if sym else A


def _check_sign_and_svd(P, X, info, dim):
    U, s, Vt = np.linalg.svd(P.toarray())
    np.testing.assert_allclose(info["singular_values"], s[:dim], rtol=1e-8)
    np.testing.assert_allclose(info["spectrum_kept"], np.sum(s[:dim] ** 2) / np.sum(s ** 2), rtol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-12)
    # X rows are the normalised rows of U s, each column's largest-|.| entry of U made positive
    C = U[:, :dim] * s[:dim]
    C = C * np.sign(C[np.argmax(np.abs(C), axis=0), np.arange(dim)])
    ok = np.diff(P.indptr) > 0
    np.testing.assert_allclose(X[ok], C[ok] / np.linalg.norm(C[ok], axis=1, keepdims=True), atol=1e-7)


@pytest.mark.parametrize("V,dim", [(12, 1), (12, 3), (30, 8), (40, 39)])
def test_dense_path_matches_svd(rng, V, dim):
    P = _sym_ppmi(rng, V)
    X, info = sphere_coords(P, dim)
    assert X.shape == (V, dim) and X.dtype == np.float64 and info["solver"] == "dense"
    _check_sign_and_svd(P, X, info, dim)


def test_arpack_path_matches_dense(rng):
    P = _random_sparse(rng, 450, density=0.02, sym=True)
    X, info = sphere_coords(P, 3)
    assert info["solver"] == "arpack"
    _check_sign_and_svd(P, X, info, 3)
    X2, _ = sphere_coords(P, 3, seed=5)
    np.testing.assert_allclose(X, X2, atol=1e-8)  # deterministic signs regardless of start vector


def test_sign_convention(rng):
    P = _sym_ppmi(rng, 15)
    X, _ = sphere_coords(P, 3)
    X2, _ = sphere_coords(-P, 3)  # flips the sign of U s for every column, the convention undoes it
    np.testing.assert_allclose(X, X2, atol=1e-10)


def test_empty_and_fill_rows(rng):
    P = _sym_ppmi(rng, 10).tolil()
    P[4, :] = 0
    P[:, 4] = 0
    P = sp.csr_matrix(P)
    X, info = sphere_coords(P, 3, fill_rows=[9])
    assert info["empty_rows"] == 1 and info["filled_rows"] == 2
    others = np.delete(np.arange(10), [4, 9])
    m = X[others].sum(axis=0)
    np.testing.assert_allclose(X[4], m / np.linalg.norm(m), atol=1e-12)
    np.testing.assert_allclose(X[9], X[4])


def test_successor_coords(rng):
    V = 20
    stories = [rng.integers(0, V, size=10) for _ in range(40)]
    D = ppmi(directed_cooccurrence(stories, V, 2))
    Xo, Xi, info = successor_coords(D, 4)
    U, s, Vt = np.linalg.svd(D.toarray())
    np.testing.assert_allclose(info["singular_values"], s[:4], rtol=1e-8)
    for X in (Xo, Xi):
        np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-12)
    # consistent signs: (Xo |U s|) diag(1/s) (Xi |V s|)^T is the rank-4 reconstruction U s V^T
    Uc = U[:, :4] * s[:4]
    Vc = Vt[:4].T * s[:4]
    ok_o, ok_i = np.linalg.norm(Uc, axis=1) > 1e-9, np.linalg.norm(Vc, axis=1) > 1e-9
    Ro = Xo[ok_o] * np.linalg.norm(Uc[ok_o], axis=1, keepdims=True)
    Ri = Xi[ok_i] * np.linalg.norm(Vc[ok_i], axis=1, keepdims=True)
    approx = Ro @ np.diag(1.0 / s[:4]) @ Ri.T
    np.testing.assert_allclose(approx, (U[:, :4] @ np.diag(s[:4]) @ Vt[:4])[np.ix_(ok_o, ok_i)], atol=1e-8)


def test_shuffled():
    X = np.arange(12.0).reshape(6, 2)
    Xs, perm = shuffled(X, 3)
    np.testing.assert_array_equal(Xs, X[perm])
    assert sorted(perm) == list(range(6)) and not np.array_equal(perm, np.arange(6))
    np.testing.assert_array_equal(shuffled(X, 3)[1], perm)


def test_errors(rng):
    P = _sym_ppmi(rng, 8)
    with pytest.raises(ConfigError, match="--dim"):
        sphere_coords(P, 8)
    with pytest.raises(ConfigError, match="--dim"):
        sphere_coords(P, 0)
    with pytest.raises(DataError, match="zero"):
        sphere_coords(sp.csr_matrix((5, 5)), 2)
