"""Float64 loop oracles (slow, obviously right) for the ops whose vectorised forms are clever.

B batch . T time . D model . H heads . E head dim . N rows . V vocab
"""
import math

import numpy as np


def xent_naive(logits, targets, ignore_index=-1):
    """Mean NLL over non-ignored rows, one row at a time (math.fsum log-sum-exp)."""
    total, n = 0.0, 0
    for row, t in zip(np.asarray(logits, np.float64), targets):
        if t == ignore_index:
            continue
        m = max(row)
        lse = m + math.log(math.fsum(math.exp(v - m) for v in row))
        total += lse - row[t]
        n += 1
    return total / n if n else 0.0, n


def layernorm_naive(x, w, b, eps=1e-5):
    """Per row: (x - mean) / sqrt(var + eps) * w + b, with a biased variance."""
    x = np.asarray(x, np.float64)
    D = x.shape[-1]
    rows = x.reshape(-1, D)
    out = np.zeros_like(rows)
    for i, r in enumerate(rows):
        mu = sum(r) / D
        var = sum((v - mu) ** 2 for v in r) / D
        for j in range(D):
            out[i, j] = (r[j] - mu) / math.sqrt(var + eps) * w[j] + b[j]
    return out.reshape(x.shape)


def attention_naive(x, qkv_w, qkv_b, proj_w, proj_b, n_heads, causal=True):
    """Multi-head self-attention with explicit loops over batch, head, query and key.

    qkv = x W_qkv + b, split into q | k | v (each [D], head h owns columns h*E:(h+1)*E);
    a_ts = softmax_s(q_t . k_s / sqrt(E)) over s <= t (causal) or all s; o_t = sum_s a_ts v_s; y = o W_p + b_p.
    """
    x = np.asarray(x, np.float64)
    B, T, D = x.shape
    E = D // n_heads
    y = np.zeros((B, T, D))
    for bi in range(B):
        qkv = x[bi] @ qkv_w + qkv_b  # [T,3D]
        q, k, v = qkv[:, :D], qkv[:, D:2 * D], qkv[:, 2 * D:]
        o = np.zeros((T, D))
        for h in range(n_heads):
            sl = slice(h * E, (h + 1) * E)
            for t in range(T):
                keys = range(t + 1) if causal else range(T)
                scores = [float(np.dot(q[t, sl], k[s, sl])) / math.sqrt(E) for s in keys]
                m = max(scores)
                w = [math.exp(sc - m) for sc in scores]
                z = sum(w)
                for s, ws in zip(keys, w):
                    o[t, sl] += ws / z * v[s, sl]
        y[bi] = o @ proj_w + proj_b
    return y
