"""Top-K PMI neighbour graph and Dice curvature (spec 2.5, 2.9 items 5, 7, 8).

V vocab . K neighbours per token . E edges . M batch of current tokens

Neighbours: nbr[v] = the K columns with the largest positive P[v, .] (self excluded), ties by lower id,
padded with -1 when a row has fewer than K positive entries.
Graph: undirected, deduplicated, unweighted: edge {v, u} iff u in nbr[v] or v in nbr[u] (no self-loops),
so degrees can exceed K (EXP L376-399 duplicated mutual picks; we do not).
Dice curvature with open neighbourhoods N(u) (BLOG 06-11):
    kappa(u, v) = 2 |N(u) & N(v)| / (|N(u)| + |N(v)|) - 1   in [-1, 1);  -1 when both are isolated.
|N(u) & N(v)| = (A A)[u, v] for a binary symmetric A, computed by sparse row products.
"""
import numpy as np
import scipy.sparse as sp

from ..core.errors import ConfigError


def topk_neighbours(P, k):
    """nbr [V, k] int32: per row the k largest positive off-diagonal entries of P (ties: lower id), -1 padded."""
    if int(k) < 1:
        raise ConfigError(f"number of graph neighbours k={k} must be >= 1; pass --k 4")
    k = int(k)
    P = sp.csr_matrix(P)
    V = P.shape[0]
    coo = P.tocoo()
    keep = (coo.data > 0) & (coo.row != coo.col)
    r, c, v = coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64), coo.data[keep]
    order = np.lexsort((c, -v, r))  # by row, then value descending, then column ascending
    r, c = r[order], c[order]
    start = np.searchsorted(r, np.arange(V))  # [V] first entry of each row
    rank = np.arange(r.size) - start[r]  # position within its row
    sel = rank < k
    nbr = np.full((V, k), -1, np.int32)
    nbr[r[sel], rank[sel]] = c[sel]
    return nbr


def neighbour_graph(nbr, V=None):
    """Binary symmetric adjacency csr [V, V] int32 from nbr [V, K] (-1 ignored), deduplicated, no self-loops."""
    nbr = np.asarray(nbr)
    V = nbr.shape[0] if V is None else int(V)
    rows = np.repeat(np.arange(nbr.shape[0], dtype=np.int64), nbr.shape[1])  # [V*K]
    cols = nbr.reshape(-1).astype(np.int64)  # [V*K]
    ok = (cols >= 0) & (cols < V) & (cols != rows)
    rows, cols = rows[ok], cols[ok]
    r, c = np.concatenate([rows, cols]), np.concatenate([cols, rows])
    A = sp.coo_matrix((np.ones(r.size, np.int32), (r, c)), shape=(V, V)).tocsr()
    A.sum_duplicates()
    A.data[:] = 1
    A.sort_indices()
    return A


def _binary(A):
    A = sp.csr_matrix(A, copy=True)
    A.eliminate_zeros()
    A.data = np.ones(A.data.size, np.int64)
    return A


def _dice(A, deg, u, v):
    """kappa for pairs (u [E], v [E]) of a binary csr A with degrees deg [V]."""
    if u.size == 0:
        return np.zeros(0)
    common = np.asarray(A[u].multiply(A[v]).sum(axis=1)).ravel()  # [E] |N(u) & N(v)|
    den = deg[u] + deg[v]  # [E]
    out = np.full(u.size, -1.0)
    nz = den > 0
    out[nz] = 2.0 * common[nz] / den[nz] - 1.0
    return out


def dice_kappa(A, rows, cols):
    """Dice curvature kappa(rows[e], cols[e]) [E] float64 of the graph A (any pairs, usually its edges)."""
    A = _binary(A)
    deg = np.diff(A.indptr).astype(np.int64)  # [V]
    return _dice(A, deg, np.asarray(rows, np.int64).ravel(), np.asarray(cols, np.int64).ravel())


def edge_kappa(A):
    """All edges of A with their curvature: (rows [E], cols [E], kappa [E]), both directions listed."""
    A = _binary(A)
    coo = A.tocoo()
    deg = np.diff(A.indptr).astype(np.int64)
    r, c = coo.row.astype(np.int64), coo.col.astype(np.int64)
    return r, c, _dice(A, deg, r, c)


def kappa_lookup(A, t, w=None, dtype=np.float64):
    """Dense kappa(t[m], w[j]) [M, W] for current tokens t [M]; -1 where {t, w} is not an edge.

    w: candidate ids [W] (default all V). t outside [0, V) (e.g. PAD) gives a row of -1.
    Used by the kappa weighting of spec 2.9 item 7 (bias = cont - kappa).
    """
    A = _binary(A)
    V = A.shape[0]
    t = np.asarray(t, np.int64).ravel()  # [M]
    w = np.arange(V, dtype=np.int64) if w is None else np.asarray(w, np.int64).ravel()  # [W]
    deg = np.diff(A.indptr).astype(np.int64)
    out = np.full((t.size, w.size), -1.0, dtype=dtype)
    ok = (t >= 0) & (t < V)
    m_idx = np.flatnonzero(ok)
    if m_idx.size == 0:
        return out
    E = A[t[m_idx]][:, w].tocoo()  # [M', W] edges of each current token among the candidates
    m, j = m_idx[E.row], E.col.astype(np.int64)
    out[m, j] = _dice(A, deg, t[m], w[j])
    return out


def topk_graph(P, k):
    """Convenience: (nbr [V, k] int32, A csr [V, V]) = topk_neighbours(P, k) and its neighbour_graph."""
    nbr = topk_neighbours(P, k)
    return nbr, neighbour_graph(nbr)
