"""Fused softmax cross-entropy, NLL sums and perplexity.

N rows (flattened tokens) . V vocab

    lse_i = m_i + log sum_v exp(z_iv - m_i),  m_i = max_v z_iv       (stable log-sum-exp)
    loss  = (1/n) sum_{i: t_i != ignore} (lse_i - z_{i,t_i}),   n = #non-ignored rows
    dz_iv = dloss / n * (softmax(z_i)_v - [v == t_i])  for non-ignored rows, 0 for ignored ones
    perplexity = exp(nll_sum / n)
The max shift keeps exp() <= 1, so logits of 1e4 in float32 neither overflow nor give NaN.
Reference: llm.c `crossentropy_forward` / `crossentropy_softmax_backward`.
"""
import math

import numpy as np

from ..core.errors import DataError


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
