"""Embedding lookup and its scatter-add backward.

N flattened ids . V vocab . D width

    forward:  y[..., :] = w[ids[...], :]              ids int [...], w [V,D] -> y [..., D]
    backward: dw[v, :] = sum_{i: ids_i = v} dy_i      (repeated ids accumulate)
`embedding_backward_ref` uses np.add.at (unbuffered, correct for repeats but slow); the public
`embedding_backward` uses geolm.core.scatter.scatter_add_rows, a scalar Numba loop (the same kernel that
accumulates a `RowGrad`).
Reference: llm.c `encoder_backward`.
"""
import numpy as np

from ..core.errors import DataError
from ..core.scatter import scatter_add_rows


def embedding_forward(ids, w):
    """ids int [...] in [0, V), w [V,D] -> (y [..., D], cache)."""
    ids = np.asarray(ids)
    V = w.shape[0]
    if not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"embedding ids must be integers, got {ids.dtype}; cast with .astype(np.int64)")
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise DataError(f"token id {bad} outside the embedding table [0, {V}); check the vocab size")
    y = np.take(w, ids, axis=0)  # [V,D][...] -> [..., D]
    return y, (ids, V)


def embedding_backward_ref(dy, cache):
    """NumPy reference: dw [V,D] via np.add.at."""
    ids, V = cache
    D = dy.shape[-1]
    dw = np.zeros((V, D), dtype=dy.dtype)
    np.add.at(dw, ids.reshape(-1), dy.reshape(-1, D))  # [N,D] scattered into [V,D]
    return dw


def embedding_backward(dy, cache):
    """dy [..., D] -> dw [V,D] (Numba scatter-add)."""
    ids, V = cache
    D = dy.shape[-1]
    dw = np.zeros((V, D), dtype=dy.dtype)
    scatter_add_rows(dw, ids.reshape(-1), dy.reshape(-1, D))  # [..., D] -> [N,D]
    return dw
