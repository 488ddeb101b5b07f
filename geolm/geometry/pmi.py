"""Windowed co-occurrence counts and positive PMI (spec 2.3).

V vocab . W window . N tokens in the concatenated stream

Symmetric counts (EXP corpus_native_graph.rs L280-289, but windows never cross stories):
    for every story s, position i and j in (i, i+W]:  C[s_i, s_j] += 1 and C[s_j, s_i] += 1
    skipped: self-pairs (s_i == s_j), ids outside [0, V) (PAD, negatives) and ids in `exclude` (e.g. UNK).
Directed (successor) counts: D[a, b] = #{(i, j): s_i = a, s_j = b, 0 < j - i <= W}, same skips.
Counts are int64, so counts of disjoint shards of stories sum exactly to the counts of their union.

PPMI (L296-315), N = sum C, row marginal p_a = sum_b C_ab / N, column marginal p_b = sum_a C_ab / N:
    PPMI_ab = max(0, ln(p_ab / (p_a p_b))) = max(0, ln(C_ab N / (r_a c_b)))
Context smoothing (Levy et al. 2015), alpha = 0.75:  p_b = c_b^alpha / sum_b' c_b'^alpha.
Rows and columns keep separate marginals, so directed counts work unchanged. Only positive entries are stored.
"""
import numpy as np
import scipy.sparse as sp

from ..core.errors import ConfigError, DataError


def _stream(stories, V, exclude):
    """Concatenate stories -> (ids [N] int64, story id [N] int64, valid [N] bool)."""
    if V < 1:
        raise ConfigError(f"vocabulary size V={V} must be >= 1; build the vocabulary before counting")
    arrs = [np.asarray(s) for s in stories]
    for s in arrs:
        if s.ndim != 1 or (s.size and not np.issubdtype(s.dtype, np.integer)):
            raise DataError(f"stories must be 1-D integer id arrays, got dtype {s.dtype} shape {s.shape}; "
                            "encode the texts with the tokenizer first")
    if not arrs:
        z = np.zeros(0, np.int64)
        return z, z, np.zeros(0, bool)
    lens = np.array([s.size for s in arrs], np.int64)
    ids = np.concatenate([s.astype(np.int64, copy=False) for s in arrs])  # [N]
    sid = np.repeat(np.arange(len(arrs), dtype=np.int64), lens)  # [N]
    valid = (ids >= 0) & (ids < V)
    ex = np.asarray(list(exclude) if not isinstance(exclude, np.ndarray) else exclude, np.int64).ravel()
    if ex.size:
        valid &= ~np.isin(ids, ex)
    return ids, sid, valid


def _counts(stories, V, window, exclude, symmetric):
    if int(window) < 1:
        raise ConfigError(f"co-occurrence window {window} must be >= 1; pass --window 5")
    ids, sid, valid = _stream(stories, V, exclude)
    C = sp.csr_matrix((V, V), dtype=np.int64)
    for d in range(1, int(window) + 1):
        if d >= ids.size:
            break
        a, b = ids[:-d], ids[d:]  # [N-d] pairs (i, i+d)
        keep = (sid[:-d] == sid[d:]) & valid[:-d] & valid[d:] & (a != b)
        a, b = a[keep], b[keep]
        if symmetric:
            a, b = np.concatenate([a, b]), np.concatenate([b, a])
        ones = np.ones(a.size, np.int64)
        C = C + sp.coo_matrix((ones, (a, b)), shape=(V, V)).tocsr()  # duplicates summed
    C.sum_duplicates()
    C.sort_indices()
    return C


def cooccurrence(stories, V, window=5, exclude=()):
    """Symmetric within-story co-occurrence counts.

    stories: list of 1-D int arrays of model ids; V: vocab size; window: W (pairs j - i in 1..W);
    exclude: ids to skip (e.g. UNK). Returns csr [V, V] int64, symmetric, zero diagonal.
    """
    return _counts(stories, V, window, exclude, symmetric=True)


def directed_cooccurrence(stories, V, window=5, exclude=()):
    """Successor counts D[a, b] = #(b follows a within W tokens, same story); csr [V, V] int64.

    D + D^T equals cooccurrence(stories, V, window, exclude).
    """
    return _counts(stories, V, window, exclude, symmetric=False)


def ppmi(C, smoothing=None):
    """Positive PMI of a count matrix (symmetric or directed).

    C: sparse or dense [V, V'] non-negative counts; smoothing: None or alpha in (0, 1] for the context
    distribution p_b ∝ colsum_b^alpha. Returns csr [V, V'] float64 holding only the positive entries.
    """
    if smoothing is not None and not (0.0 < float(smoothing) <= 1.0):
        raise ConfigError(f"PPMI smoothing {smoothing} must be in (0, 1]; pass 0.75 or None")
    C = sp.csr_matrix(C, dtype=np.float64, copy=True)
    C.sum_duplicates()
    if C.data.size and C.data.min() < 0:
        raise DataError("co-occurrence counts must be non-negative; pass the output of cooccurrence()")
    N = float(C.data.sum())
    if N <= 0.0:
        raise DataError("co-occurrence matrix is empty; use more stories or a larger window")
    r = np.asarray(C.sum(axis=1)).ravel()  # [V]  row sums
    c = np.asarray(C.sum(axis=0)).ravel()  # [V'] column sums
    if smoothing is None:
        pb = c / N
    else:
        cs = c ** float(smoothing)
        pb = cs / cs.sum()
    coo = C.tocoo()
    keep = coo.data > 0
    i, j, v = coo.row[keep], coo.col[keep], coo.data[keep]
    # p_ab / (p_a p_b) = (C_ab / N) / ((r_a / N) p_b) = C_ab / (r_a p_b)
    pmi = np.log(v) - np.log(r[i]) - np.log(pb[j])
    pos = pmi > 0.0
    P = sp.coo_matrix((pmi[pos], (i[pos], j[pos])), shape=C.shape).tocsr()
    P.sort_indices()
    return P


def transition_matrix(C):
    """Row-normalised counts P(b | a) = C_ab / sum_b C_ab (spec 2.9 item 9); empty rows stay zero. csr float64."""
    C = sp.csr_matrix(C, dtype=np.float64, copy=True)
    r = np.asarray(C.sum(axis=1)).ravel()  # [V]
    inv = np.divide(1.0, r, out=np.zeros_like(r), where=r > 0)
    return sp.csr_matrix(sp.diags(inv) @ C)
