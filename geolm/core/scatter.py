"""Row scatter-add, the sparse half of gradient accumulation (embedding backward, `params.RowGrad`).

M scattered rows . R table rows . D row width

    dst[rows[m], :] += values[m, :]   for m = 0..M-1 in order (repeated rows accumulate)
`scatter_add_rows_ref` uses np.add.at (unbuffered, correct for repeats but slow); `_scatter_add_rows_nb` is a
plain scalar Numba loop. Reference: llm.c `encoder_backward`.
"""
import numpy as np

from .jit import njit


def scatter_add_rows_ref(dst, rows, values):
    """NumPy reference of `scatter_add_rows`."""
    np.add.at(dst, rows, values)  # [M,D] scattered into [R,D]


@njit
def _scatter_add_rows_nb(dst, rows, values):
    # dst [R,D] += values [M,D] at rows [M], sequentially (repeated rows accumulate in order m = 0..M-1)
    M, D = values.shape
    for m in range(M):
        r = rows[m]
        for j in range(D):
            dst[r, j] += values[m, j]


def scatter_add_rows(dst, rows, values):
    """dst[rows[m]] += values[m] for m = 0..M-1 in order; dst [R,D], rows [M] int in [0, R), values [M,D]."""
    _scatter_add_rows_nb(dst, np.ascontiguousarray(rows), np.ascontiguousarray(values))
