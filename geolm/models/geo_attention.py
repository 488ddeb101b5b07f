"""Geo-attention LM (spec 2.9 item 8): learned embeddings, single-head attention over graph neighbours, MLP head.

B batch . C context (8) . K graph neighbours . K1 attended slots . d width (--dim) . H head hidden . Vi input
vocab (classes + PAD) . V output classes

Geometric-only mode (`full=False`), current token t, nbr[t] its top-K PPMI neighbours (-1 padded -> masked):
    slots  = [t, nbr[t]_1..K]                           e_q = E[t],  e_nb = E[slots]          [B,K1=K+1,d]
    h      = e_q + sum_j softmax_j(q.k_j / sqrt(d)) v_j  (geolm.ops.graph_attention)             [B,d]
    logits = MLP_head(h)  (d -> H -> V, ReLU)                                                 [B,V]
Only the last position feeds the head, and the neighbour lists are fixed per token, so this mode is a learned
bigram (spec 2.9 item 8, [inferred]); compare it with the neural bigram.
Full-context mode (`full=True`, the published "hybrid" attention): the last position also attends to every
context position, with a learned position embedding P [C,d] (instead of RoPE, [our default here]):
    slots  = [c_1..c_C, nbr[t]],  e_nb = [E[c_j] + P_j ; E[u]],  e_q = E[t] + P_C,  PAD positions masked.
Backward (pure): head backward -> dh; graph_attention_backward -> (de_q, de_nb, dp_attn); de_q and de_nb become
the embedding gradient as a RowGrad (scatter-adds into dE, geolm.core.params) and, in full mode, sum over the
batch into dP.
"""
import math

import numpy as np

from . import geo_mlp
from ..core.params import RowGrad, glorot_, normal_
from ..ops.graph_attention import graph_attention_backward, graph_attention_forward, graph_attention_shapes
from ..ops.mlp import mlp_init_, mlp_shapes


def param_shapes(Vi, d, H, V, C, full):
    s = {"emb": {"w": (Vi, d)}, "attn": graph_attention_shapes(d), "head": mlp_shapes(d, H, V)}
    if full:
        s["pos"] = {"w": (C, d)}
    return s


def init_(p, rng):
    """Embeddings N(0, 1/d), Glorot attention weights, zero biases, position rows N(0, 0.01/d), Glorot head."""
    d = p["emb"]["w"].shape[1]
    normal_(p["emb"]["w"], rng, 1.0 / math.sqrt(d))
    for n in ("wq", "wk", "wv"):
        glorot_(p["attn"][n]["w"], rng)
        p["attn"][n]["b"][...] = 0.0
    if "pos" in p:
        normal_(p["pos"]["w"], rng, 0.1 / math.sqrt(d))
    mlp_init_(p["head"], rng)


def _slots(ctx, nbr, pad_id, full):
    """-> (slot ids [B,K1] int64 (masked -> 0), mask [B,K1] bool)."""
    t = ctx[:, -1]  # [B]
    nb = nbr[np.minimum(t, nbr.shape[0] - 1)].astype(np.int64)  # [B,K]
    nb[t >= nbr.shape[0]] = -1  # PAD (and any id without a graph row) has no neighbours
    if full:
        ids = np.concatenate([ctx.astype(np.int64), nb], axis=1)  # [B,C+K]
        mask = np.concatenate([ctx != pad_id, nb >= 0], axis=1)
    else:
        ids = np.concatenate([t[:, None].astype(np.int64), nb], axis=1)  # [B,1+K]
        mask = np.concatenate([np.ones((len(t), 1), bool), nb >= 0], axis=1)
    return np.where(mask, ids, 0), mask


def forward(p, ctx, nbr, pad_id, full):
    """ctx [B,C] int -> (logits [B,V], cache); cache[-1] is the MLP head's cache."""
    E = p["emb"]["w"]
    B, C = ctx.shape
    ids, mask = _slots(ctx, nbr, pad_id, full)
    e_q = np.take(E, ctx[:, -1], axis=0)  # [B,d]
    e_nb = np.take(E, ids, axis=0)  # [B,K1,d]
    if full:
        P = p["pos"]["w"]
        e_q += P[C - 1]
        e_nb[:, :C] += P  # [B,C,d] + [C,d]
    h, ca = graph_attention_forward(e_q, e_nb, mask, p["attn"])  # [B,d]
    logits, ch = geo_mlp.forward(p["head"], h, np.zeros((B, 0), np.int64))  # [B,V]
    return logits, (ctx, ids, mask, ca, full, ch)


def backward(dlogits, cache, xent=None):
    """dlogits [B,V] -> dp nested like p (dp.emb.w a RowGrad); xent=(r, y): the implicit form (geo_mlp.backward)."""
    ctx, ids, mask, ca, full, ch = cache
    C = ctx.shape[1]
    dh, dhead = geo_mlp.backward(dlogits, ch, xent=xent, need_dx=True)  # [B,d]
    de_q, de_nb, dattn = graph_attention_backward(dh, ca)
    de_nb *= mask[:, :, None]  # masked slots were gathered from row 0: drop them
    d = de_q.shape[1]
    # e_q = E[t] (+ P_C),  e_nb = E[slots] (+ P on the context slots)
    demb = RowGrad(((np.ascontiguousarray(ctx[:, -1]), np.ascontiguousarray(de_q)),
                    (np.ascontiguousarray(ids.reshape(-1)), np.ascontiguousarray(de_nb.reshape(-1, d)))))
    dp = {"emb": {"w": demb}, "attn": dattn, "head": dhead}
    if full:
        dpos = np.zeros((C, d), de_q.dtype)
        dpos[C - 1] += de_q.sum(axis=0)
        dpos += de_nb[:, :C].sum(axis=0)  # [B,C,d] -> [C,d]
        dp["pos"] = {"w": dpos}
    return dp
