"""Softmax cross-entropy, NLL sums and perplexity: a reference tier and a fast in-place tier.

N rows (flattened tokens) . V vocab

Reference tier (`xent_forward` / `xent_backward`, `nll_sum`): new arrays, targets may be ignored.
    lse_i = m_i + log sum_v exp(z_iv - m_i),  m_i = max_v z_iv       (stable log-sum-exp)
    loss  = (1/n) sum_{i: t_i != ignore} (lse_i - z_{i,t_i}),   n = #non-ignored rows
    dz_iv = dloss / n * (softmax(z_i)_v - [v == t_i])  for non-ignored rows, 0 for ignored ones
The max shift keeps exp() <= 1, so logits of 1e4 in float32 neither overflow nor give NaN.
Fast tier (`xent_factors`, `nll_rows`): every target counts, the logits buffer is overwritten with
e = exp(z - c), and the gradient stays in implicit form:
    loss = (1/N) sum_i (log s_i + c_i - z_{i,t_i}),   s_i = sum_v e_iv
    dz   = r[:,None] * e - onehot(t) / N,   r_i = 1 / (N s_i)
so a backward can fold r and the one-hot into its small operands instead of spending a pass over [N,V].
The shift c_i is 0 when every row max lies within +-60 (exp neither overflows nor underflows the row sum), else
the row max. With a `refill` (a function that writes the original logits back into the buffer) exp runs first
without any max pass (float32: geolm.ops.expsum); only if an entry was NaN or above 88, or a row sum left
(1e-30, dtype max), are the logits refilled and the shifted path run.
    perplexity = exp(nll_sum / n)
Reference: llm.c `crossentropy_forward` / `crossentropy_softmax_backward`.
"""
import math

import numpy as np

from ..core.errors import DataError
from .expsum import exp_rows


def _check_targets(logits, targets, ignore_index):
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise DataError(f"cross-entropy needs logits [N,V] and targets [N], got {logits.shape} and "
                        f"{targets.shape}; flatten the batch first (reshape(-1, V))")
    if not np.issubdtype(targets.dtype, np.integer):
        raise DataError(f"targets must be integer token ids, got {targets.dtype}; cast with .astype(np.int64)")
    keep = targets != ignore_index
    V = logits.shape[1]
    bad = keep & ((targets < 0) | (targets >= V))
    if bad.any():
        raise DataError(f"target id {int(targets[bad][0])} outside the vocabulary [0, {V}); "
                        f"check the tokenizer vocab size or the ignore_index ({ignore_index})")
    return keep


def _shifted_logits(logits):
    """-> z = logits - rowmax [N,V] (a new array; max entry 0 per row, so exp(z) <= 1)."""
    return logits - logits.max(axis=1, keepdims=True)  # [N,V]


def xent_forward(logits, targets, ignore_index=-1):
    """Mean cross-entropy over non-ignored rows; logits [N,V], targets [N] int -> (loss float, cache)."""
    keep = _check_targets(logits, targets, ignore_index)
    n = int(keep.sum())
    N = logits.shape[0]
    t = np.where(keep, targets, 0)  # [N] safe gather index
    z = _shifted_logits(logits)  # [N,V]
    zt = z[np.arange(N), t]  # [N] target logit (shifted), gathered before exp overwrites z
    e = np.exp(z, out=z)  # [N,V] in (0, 1], in place: one N x V buffer in all
    s = e.sum(axis=1)  # [N] >= 1
    nll = np.log(s) - zt  # [N] = lse - z_t
    loss = float(np.sum(nll[keep], dtype=np.float64)) / n if n else 0.0
    e /= s[:, None]  # [N,V] softmax, kept for backward
    return loss, (e, t, keep, n)


def xent_backward(dloss, cache):
    """-> dlogits [N,V] (same dtype as logits)."""
    probs, t, keep, n = cache
    N = probs.shape[0]
    # loss = mean_i (lse_i - z_{i,t_i})
    dz = probs.copy()
    dz[np.arange(N), t] -= 1.0
    dz *= keep[:, None]  # ignored rows -> 0
    dz *= float(dloss) / n if n else 0.0
    return dz


def nll_sum(logits, targets, ignore_index=-1):
    """Summed NLL in float64 over non-ignored rows; logits [N,V] -> (nll_sum float, n int)."""
    keep = _check_targets(logits, targets, ignore_index)
    lg = np.asarray(logits[keep], dtype=np.float64)  # [n,V]
    if lg.shape[0] == 0:
        return 0.0, 0
    z = _shifted_logits(lg)  # [n,V]
    nll = np.log(np.exp(z).sum(axis=1)) - z[np.arange(lg.shape[0]), targets[keep]]  # [n] = lse - z_t
    return float(nll.sum()), int(lg.shape[0])


def perplexity(nll_sum, n):
    """exp(nll_sum / n); inf if that overflows."""
    if n <= 0:
        raise DataError("perplexity of zero targets is undefined; give a validation set with at least one target")
    try:
        return math.exp(nll_sum / n)
    except OverflowError:
        return math.inf


# ---------------------------------------------------------------- fast tier

_SAFE_EXP = 60.0  # |row max| below this: exp(z) neither overflows nor underflows the row sum, no shift needed


def _shift(logits):
    """Per-row shift c [N,1] (None when every row max is within +-60, else the row max) for exp(logits - c)."""
    m = logits.max(axis=1, keepdims=True)  # [N,1]
    if np.all(np.abs(m) < _SAFE_EXP):  # also False for NaN rows: they get shifted (and stay NaN)
        return None
    return m


def shifted_exp_rows(z, refill=None):
    """z [N,V] -> exp(z - c) IN PLACE; -> (row sums s [N], shift c [N,1] or None).

    With refill, exp runs unshifted first (float32 C-contiguous: geolm.ops.expsum.exp_rows, float64 sums, entries
    below -87 flushed to 0; else NumPy) and the result stands unless an entry was NaN or above 88 or a row sum
    left (1e-30, dtype max); then refill(z) restores the logits and the shifted path runs."""
    if refill is not None:
        if z.dtype == np.float32 and z.flags.c_contiguous:
            s, bad = exp_rows(z)
        else:
            with np.errstate(over="ignore", under="ignore"):  # overflow is detected below and handled by the refill
                np.exp(z, out=z)
                s = z.sum(axis=1)
            bad = 0
        if not bad and np.all(np.isfinite(s)) and s.min() > 1e-30 and s.max() < np.finfo(z.dtype).max:
            return s, None
        refill(z)
    c = _shift(z)
    if c is not None:
        z -= c
    np.exp(z, out=z)
    return z.sum(axis=1), c


def xent_factors(logits, targets, refill=None):
    """Mean softmax cross-entropy in implicit form; OVERWRITES logits [N,V] with e = exp(logits - c).

    -> (loss float, r [N] in the logits' dtype) with dloss/dlogits = r[:,None] * e - onehot(targets) / N."""
    N = logits.shape[0]
    zt = logits[np.arange(N), targets].astype(np.float64)  # [N] target logit
    s, c = shifted_exp_rows(logits, refill)
    if c is not None:
        zt -= c[:, 0]
    loss = float(np.sum(np.log(s.astype(np.float64)) - zt)) / N
    return loss, (1.0 / (s * N)).astype(logits.dtype)


def nll_rows(logits, targets, overwrite=False, refill=None):
    """Per-row NLL in float64 [N] from logits [N,V] (row sums in the logits' dtype).

    overwrite=True reuses the logits buffer (no [N,V] temporaries) and allows the refill path."""
    z = logits if overwrite else logits.copy()
    zt = z[np.arange(z.shape[0]), targets].astype(np.float64)  # [N]
    s, c = shifted_exp_rows(z, refill if overwrite else None)
    if c is not None:
        zt -= c[:, 0]
    return np.log(s.astype(np.float64)) - zt
