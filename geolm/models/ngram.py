"""Laplace (add-one) bigram baseline (spec 2.9 item 1).

M examples . V vocab (incl. UNK) . row V = the PAD / first-token context

    P(w | v) = (c(v, w) + 1) / (c(v) + V),   c(v) = sum_w c(v, w)
Contexts outside [0, V) (PAD, whatever its id) all map to one extra row V, so the first token of a story is
predicted from "start of story". Counts are int64 csr [V+1, V]; counts of shards add exactly.
"""
import numpy as np
import scipy.sparse as sp

from ..core.errors import DataError


def _rows(prev, V):
    prev = np.asarray(prev, np.int64).ravel()  # [M]
    return np.where((prev >= 0) & (prev < V), prev, V)


def _targets(y, V):
    y = np.asarray(y, np.int64).ravel()  # [M]
    if y.size and (y.min() < 0 or y.max() >= V):
        raise DataError(f"bigram targets must be model ids in [0, {V}), got [{y.min()}, {y.max()}]; "
                        "map OOV tokens to UNK and drop PAD targets")
    return y


def bigram_fit(prev, y, V):
    """counts csr [V+1, V] int64: counts[ctx, w] = #(prev == ctx, y == w); ctx = V for PAD / out-of-range."""
    y = _targets(y, V)
    r = _rows(prev, V)
    if r.size != y.size:
        raise DataError(f"bigram_fit got {r.size} contexts but {y.size} targets; pass aligned arrays")
    C = sp.coo_matrix((np.ones(y.size, np.int64), (r, y)), shape=(V + 1, V)).tocsr()
    C.sum_duplicates()
    return C


def bigram_nll(counts, prev, y):
    """Summed negative log-likelihood under add-one smoothing: (nll_sum float64, n int)."""
    V = counts.shape[1]
    y = _targets(y, V)
    r = _rows(prev, V)
    c_vw = np.asarray(counts[r, y]).ravel().astype(np.float64)  # [M]
    c_v = np.asarray(counts.sum(axis=1)).ravel().astype(np.float64)[r]  # [M]
    nll = -(np.log(c_vw + 1.0) - np.log(c_v + V))
    return float(np.sum(nll)), int(y.size)


def bigram_log_probs(counts, prev, dtype=np.float64):
    """Dense log P(. | prev) [M, V] (for reweighting a bigram with the kappa / angle bias)."""
    V = counts.shape[1]
    r = _rows(prev, V)
    sub = counts[r].toarray().astype(np.float64)  # [M,V]
    lp = np.log(sub + 1.0) - np.log(sub.sum(axis=1, keepdims=True) + V)
    return lp.astype(dtype, copy=False)
