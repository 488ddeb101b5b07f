"""Single-head attention over a node's own feature and its K graph neighbours (spec 2.9 item 8).

M query positions . K1 = K + 1 attended nodes (self + K neighbours) . D model width

    q = e_q Wq + bq                      [M,D]
    k_j = e_j Wk + bk, v_j = e_j Wv + bv [M,K1,D]
    s_j = q.k_j / sqrt(D) (+ bias_j)     [M,K1]   masked entries (padded -1 neighbours) -> -inf
    a = softmax_j(s)                     [M,K1]   a fully masked row gives a = 0 (no NaN)
    h = e_q + sum_j a_j v_j              [M,D]
bk has no effect (it adds q.bk to every score of a row) and gets an exactly zero gradient; kept for a uniform layout.
bias is an optional additive score term, e.g. the plasticity log edge weight log w = raw (CORE attention.rs).
Backward: da_j = dh.v_j; ds = a (da - sum_j a_j da_j); dq = sum_j ds_j k_j / sqrt(D); dk_j = ds_j q / sqrt(D);
dv_j = a_j dh; then the three linear backwards; de_q also gets the residual dh.
The caller gathers e_q = E[t] and e_nb = E[[t, nbr(t)...]] and scatters de_nb back (embedding backward).
"""
import math

import numpy as np

from .linear import linear_backward, linear_forward


def graph_attention_shapes(D):
    """Param shapes {"wq": {"w": (D,D), "b": (D,)}, "wk": ..., "wv": ...}."""
    return {n: {"w": (D, D), "b": (D,)} for n in ("wq", "wk", "wv")}


def _masked_softmax(s, mask):
    """softmax over the last axis restricted to mask; rows with no True give zeros. [M,K1] -> [M,K1]."""
    m = np.where(mask, s, -np.inf).max(axis=-1, keepdims=True)  # [M,1], -inf on fully masked rows
    m = np.where(np.isfinite(m), m, 0.0)
    ex = np.exp(np.where(mask, s - m, 0.0)) * mask  # [M,K1]
    den = ex.sum(axis=-1, keepdims=True)  # [M,1]
    return ex / np.where(den > 0, den, 1.0)


def graph_attention_forward(e_q, e_nb, mask, p, score_bias=None):
    """h = e_q + sum_j softmax_j(q.k_j / sqrt(D) + bias_j) v_j over unmasked j.

    e_q [M, D], e_nb [M, K1, D], mask [M, K1] bool (True = attend), p {"wq","wk","wv": {"w" [D,D], "b" [D]}},
    score_bias [M, K1] or None. Returns (h [M, D], cache).
    """
    mask = np.asarray(mask, bool)
    D = e_q.shape[-1]
    scale = 1.0 / math.sqrt(D)
    q, cq = linear_forward(e_q, **p["wq"])  # [M,D]
    k, ck = linear_forward(e_nb, **p["wk"])  # [M,K1,D]
    v, cv = linear_forward(e_nb, **p["wv"])  # [M,K1,D]
    s = np.einsum("md,mjd->mj", q, k) * scale  # [M,K1]
    if score_bias is not None:
        s = s + score_bias
    a = _masked_softmax(s, mask)  # [M,K1]
    h = e_q + np.einsum("mj,mjd->md", a, v)  # [M,D]
    return h, (q, k, v, a, cq, ck, cv, scale, score_bias is not None)


def graph_attention_backward(dh, cache):
    """-> (de_q [M,D], de_nb [M,K1,D], dp like p) and, if score_bias was given, dscore_bias [M,K1] last."""
    q, k, v, a, cq, ck, cv, scale, has_bias = cache
    # h = e_q + sum_j a_j v_j
    dv = a[:, :, None] * dh[:, None, :]  # [M,K1,D]
    da = np.einsum("md,mjd->mj", dh, v)  # [M,K1]
    # a = softmax(s) (masked entries have a = 0, so ds = 0 there)
    ds = a * (da - np.sum(a * da, axis=-1, keepdims=True))  # [M,K1]
    # s = q.k_j * scale
    dq = np.einsum("mj,mjd->md", ds, k) * scale  # [M,D]
    dk = ds[:, :, None] * q[:, None, :] * scale  # [M,K1,D]
    deq_lin, dwq, dbq = linear_backward(dq, cq)
    dek, dwk, dbk = linear_backward(dk, ck)
    dev, dwv, dbv = linear_backward(dv, cv)
    # bk shifts every score of a row by q.bk, which softmax ignores: its gradient sum_j ds_j q = 0 exactly
    dbk = np.zeros_like(dbk)
    de_q = dh + deq_lin
    de_nb = dek + dev
    dp = {"wq": {"w": dwq, "b": dbq}, "wk": {"w": dwk, "b": dbk}, "wv": {"w": dwv, "b": dbv}}
    return (de_q, de_nb, dp, ds) if has_bias else (de_q, de_nb, dp)
