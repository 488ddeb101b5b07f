"""Multi-head (causal) self-attention with a fused qkv projection.

B batch . T time . D model . H heads . E = D/H head dim

    [q | k | v] = x W_qkv + b_qkv                    [B,T,D] -> [B,T,3D] -> 3 x [B,H,T,E]
    S = q k^T / sqrt(E)  (+ -inf above the diagonal if causal)              [B,H,T,T]
    A = softmax_s(S);  o = A v;  y = o W_proj + b_proj                     [B,H,T,E] -> [B,T,D]
Backward (softmax VJP with the row sum taken from o: sum_s A_ts dA_ts = do_t . o_t):
    dA = do v^T;  dS = A * (dA - rowsum(do * o));  dv = A^T do;  dq = dS k / sqrt(E);  dk = dS^T q / sqrt(E)
Heads are a reshape/transpose and every contraction is one batched np.matmul over [B,H]: no Python loops.
The causal mask uses exact -inf (the diagonal is always kept, so every row has a finite max).
Reference: llm.c `attention_forward/backward`; picoGPT `mha`.
"""
import math

import numpy as np

from ..core.errors import ConfigError
from .linear import linear_backward, linear_forward
from ..core.params import glorot_


def attention_shapes(D):
    return {"qkv": {"w": (D, 3 * D), "b": (3 * D,)}, "proj": {"w": (D, D), "b": (D,)}}


def attention_init_(p, rng):
    """Glorot weights, zero biases (in place)."""
    for k in ("qkv", "proj"):
        glorot_(p[k]["w"], rng)
        p[k]["b"][...] = 0.0


def _split_heads(x, n_heads):
    if x.ndim != 3:
        raise ConfigError(f"attention input must be [B,T,D], got shape {x.shape}; add a batch axis with x[None]")
    B, T, D = x.shape
    if n_heads < 1 or D % n_heads:
        raise ConfigError(f"model width {D} is not divisible by --n-heads {n_heads}; pick a divisor of {D}")
    return B, T, D, n_heads, D // n_heads


def attention_forward(x, p, n_heads, causal=True):
    """x [B,T,D] -> (y [B,T,D], cache)."""
    B, T, D, H, E = _split_heads(x, n_heads)
    scale = 1.0 / math.sqrt(E)
    qkv, c_qkv = linear_forward(x, **p["qkv"])  # [B,T,D] -> [B,T,3D]
    qkv = qkv.reshape(B, T, 3, H, E).transpose(2, 0, 3, 1, 4)  # -> [3,B,H,T,E] (view)
    q = np.multiply(qkv[0], scale, order="C")  # [B,H,T,E], pre-scaled contiguous copy
    k = np.ascontiguousarray(qkv[1])  # [B,H,T,E]; contiguous operands keep the batched GEMMs fast
    v = np.ascontiguousarray(qkv[2])  # [B,H,T,E]
    a = np.matmul(q, k.swapaxes(-1, -2))  # [B,H,T,E] @ [B,H,E,T] -> [B,H,T,T]
    if causal:
        np.copyto(a, -np.inf, where=np.triu(np.ones((T, T), dtype=bool), 1))
    a -= a.max(axis=-1, keepdims=True)
    np.exp(a, out=a)
    a /= a.sum(axis=-1, keepdims=True)  # A = softmax(S)
    o = np.matmul(a, v)  # [B,H,T,T] @ [B,H,T,E] -> [B,H,T,E]
    o = o.transpose(0, 2, 1, 3).reshape(B, T, D)  # [B,H,T,E] -> [B,T,D]
    y, c_proj = linear_forward(o, **p["proj"])  # [B,T,D] -> [B,T,D]
    return y, (c_qkv, c_proj, q, k, v, a, scale)


def attention_backward(dy, cache):
    """-> (dx [B,T,D], dp {"qkv": {"w","b"}, "proj": {"w","b"}})."""
    c_qkv, c_proj, q, k, v, a, scale = cache
    B, H, T, E = q.shape
    D = H * E
    # y = o W_proj + b_proj
    do, dw_proj, db_proj = linear_backward(dy, c_proj)  # [B,T,D]
    o = c_proj[0].reshape(B, T, H, E).transpose(0, 2, 1, 3)  # [B,T,D] -> [B,H,T,E] view
    do = do.reshape(B, T, H, E).transpose(0, 2, 1, 3)  # [B,T,D] -> [B,H,T,E] view
    # o = A v
    dv = np.matmul(a.swapaxes(-1, -2), do)  # [B,H,T,T] @ [B,H,T,E] -> [B,H,T,E]
    ds = np.matmul(do, v.swapaxes(-1, -2))  # [B,H,T,E] @ [B,H,E,T] -> [B,H,T,T]  (dA)
    # A = softmax(S): dS = A * (dA - sum_s A dA),  sum_s A_ts dA_ts = do_t . o_t
    ds -= np.sum(do * o, axis=-1)[..., None]  # [B,H,T,1]
    ds *= a  # masked entries have A = 0, so they get no gradient
    # S = (q scale) k^T
    dqkv = np.empty((B, T, 3, H, E), dtype=dy.dtype)
    dqkv_h = dqkv.transpose(2, 0, 3, 1, 4)  # [B,T,3,H,E] -> [3,B,H,T,E] view
    dq = np.matmul(ds, k)  # [B,H,T,T] @ [B,H,T,E] -> [B,H,T,E]
    dq *= scale
    dqkv_h[0] = dq
    dqkv_h[1] = np.matmul(ds.swapaxes(-1, -2), q)  # [B,H,T,T] @ [B,H,T,E] -> [B,H,T,E]
    dqkv_h[2] = dv
    # [q | k | v] = x W_qkv + b_qkv
    dx, dw_qkv, db_qkv = linear_backward(dqkv.reshape(B, T, 3 * D), c_qkv)  # [B,T,3D] -> [B,T,D]
    return dx, {"qkv": {"w": dw_qkv, "b": db_qkv}, "proj": {"w": dw_proj, "b": db_proj}}
