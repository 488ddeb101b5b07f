"""Token coordinates on the unit sphere from a truncated SVD of PPMI (spec 2.4, 2.9 items 9 and 11).

V vocab . k kept dimension (--dim: 3, 8, 16, 64)

    P ~ U_k diag(s_k) V_k^T   (exact float64 truncated SVD, largest singular values)
    c_i = (U_k s_k)_i ;  x_i = c_i / ||c_i|| in S^{k-1}
For a symmetric P the left singular vectors are eigenvectors and s = |lambda|, so this is the eigsh
"largest |lambda|" embedding; svds covers symmetric and directed P alike. Sign convention: each column's
largest-|.| entry of U is made positive (and V's column flipped with it, keeping P = U s V^T), so results do not
depend on the solver's sign choice. Repeated singular values leave the basis inside their subspace arbitrary.
Rows of P with no entries (and requested rows such as UNK) have no direction of their own; they get the normalised
mean of the other rows' unit coordinates. Small problems (V <= 400) use a dense LAPACK SVD, larger ones ARPACK
with a seeded start vector. info["spectrum_kept"] = sum_{i<=k} s_i^2 / ||P||_F^2.
The original (EXP L321-370) used a 2-step randomised SVD in f32 without re-orthonormalisation; see spec 2.4.
"""
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..core.errors import ConfigError, DataError

DENSE_MAX = 400


def _truncated_svd(P, dim, seed):
    """-> (U [V,k], s [k] descending, Vt [k,V'], solver name), float64."""
    m, n = P.shape
    if min(m, n) <= DENSE_MAX:
        U, s, Vt = np.linalg.svd(P.toarray(), full_matrices=False)
        return U[:, :dim], s[:dim], Vt[:dim], "dense"
    v0 = np.random.default_rng(seed).standard_normal(min(m, n))
    U, s, Vt = spla.svds(P, k=dim, v0=v0, solver="arpack", maxiter=max(1000, 20 * min(m, n)))
    order = np.argsort(-s, kind="stable")
    return U[:, order], s[order], Vt[order], "arpack"


def _fix_signs(U, Vt):
    """Make each column's largest-|.| entry of U positive; flip the matching row of Vt too."""
    idx = np.argmax(np.abs(U), axis=0)  # [k]
    sgn = np.where(U[idx, np.arange(U.shape[1])] < 0, -1.0, 1.0)  # [k]
    return U * sgn, Vt * sgn[:, None]


def _to_sphere(C, empty, fill_rows):
    """Row-normalise C [V,k]; empty [V] bool, ~zero and listed rows get the normalised mean unit row.
    -> (X, n_filled)."""
    norms = np.linalg.norm(C, axis=1)  # [V]
    scale = norms.max(initial=0.0)
    bad = (norms <= 1e-12 * max(scale, 1e-300)) | empty
    fill = bad.copy()
    fr = np.asarray(list(fill_rows), np.int64)
    fr = fr[(fr >= 0) & (fr < C.shape[0])]
    fill[fr] = True
    X = np.zeros_like(C)
    X[~bad] = C[~bad] / norms[~bad, None]
    mean = X[~fill].sum(axis=0) if (~fill).any() else np.zeros(C.shape[1])
    mn = np.linalg.norm(mean)
    if mn > 1e-12:
        mean = mean / mn
    else:  # no usable rows, or they cancel: any fixed unit vector
        mean = np.zeros(C.shape[1])
        mean[0] = 1.0
    X[fill] = mean
    return X, int(fill.sum())


def _check(P, dim):
    P = sp.csr_matrix(P, dtype=np.float64, copy=True)
    P.sum_duplicates()
    P.eliminate_zeros()
    V = min(P.shape)
    if not (1 <= int(dim) < V):
        raise ConfigError(f"sphere dimension --dim {dim} must be in [1, {V - 1}] (below the vocabulary size {V}); "
                          "pass a smaller --dim or use more stories")
    fro2 = float(np.sum(P.data ** 2))
    if fro2 <= 0.0:
        raise DataError("PPMI matrix is all zero; use more stories or a larger window")
    return P, int(dim), fro2


def sphere_coords(P, dim, seed=0, fill_rows=()):
    """Unit-sphere coordinates from the top-`dim` singular triplets of P.

    P: sparse [V, V] float (PPMI); dim: k < V; seed: ARPACK start vector; fill_rows: ids to overwrite with the
    mean coordinate (e.g. UNK). Returns (X [V, k] float64 with unit rows, info) with info keys
    "spectrum_kept", "singular_values" (list, descending), "empty_rows" (rows of P with no entries),
    "filled_rows" (rows given the mean coordinate, incl. empty and fill_rows), "solver".
    """
    P, dim, fro2 = _check(P, dim)
    U, s, Vt, solver = _truncated_svd(P, dim, seed)
    U, Vt = _fix_signs(U, Vt)
    empty = np.diff(P.indptr) == 0  # [V] rows without entries
    X, n_filled = _to_sphere(U * s, empty, fill_rows)  # [V,k] * [k]
    info = {"spectrum_kept": float(np.sum(s ** 2) / fro2), "singular_values": [float(v) for v in s],
            "empty_rows": int(empty.sum()), "filled_rows": n_filled, "solver": solver}
    return X, info


def successor_coords(D, dim, seed=0, fill_rows=()):
    """Two roles per token from a directed PPMI D [V, V] ~ U s V^T (spec 4, "successor geometry").

    X_out = rownorm(U s): token as predecessor (its successors' profile); X_in = rownorm(V s): token as successor.
    Returns (X_out [V, k], X_in [V, k], info) with "spectrum_kept", "singular_values", "empty_rows_out" (rows of D
    without entries), "empty_rows_in" (columns without entries), "filled_out", "filled_in", "solver".
    """
    D, dim, fro2 = _check(D, dim)
    U, s, Vt, solver = _truncated_svd(D, dim, seed)
    U, Vt = _fix_signs(U, Vt)
    e_out = np.diff(D.indptr) == 0  # [V] rows without entries
    e_in = np.diff(D.tocsc().indptr) == 0  # [V'] columns without entries
    X_out, f_out = _to_sphere(U * s, e_out, fill_rows)  # [V,k]
    X_in, f_in = _to_sphere(Vt.T * s, e_in, fill_rows)  # [V',k]
    info = {"spectrum_kept": float(np.sum(s ** 2) / fro2), "singular_values": [float(v) for v in s],
            "empty_rows_out": int(e_out.sum()), "empty_rows_in": int(e_in.sum()),
            "filled_out": f_out, "filled_in": f_in, "solver": solver}
    return X_out, X_in, info


def shuffled(X, seed):
    """Permutation control (spec 2.9 item 11): token i gets row perm[i]. -> (X[perm], perm [V] int64)."""
    perm = np.random.default_rng(seed).permutation(X.shape[0])
    return X[perm], perm
