"""Layer normalisation over the last axis.

N flattened rows . D width

    mu = mean(x),  var = mean((x - mu)^2),  rstd = 1 / sqrt(var + eps)
    xhat = (x - mu) rstd;  y = xhat * w + b                       x [..., D], w [D], b [D]
    backward (g = dy * w):
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  dw = sum dy * xhat,  db = sum dy
The cache keeps only mu and rstd ([..., 1] each); xhat is recomputed in backward.
Reference: llm.c `doc/layernorm/layernorm.py`.
"""
import numpy as np


def layernorm_forward(x, w, b, eps=1e-5):
    """x [..., D], w [D], b [D] -> (y [..., D], cache)."""
    mu = x.mean(axis=-1, keepdims=True)  # [..., 1]
    xc = x - mu  # [..., D]
    var = np.mean(xc * xc, axis=-1, keepdims=True)  # [..., 1]
    rstd = 1.0 / np.sqrt(var + eps)  # [..., 1]
    xc *= rstd  # xhat
    xc *= w
    xc += b
    return xc, (x, w, mu, rstd)


def layernorm_backward(dy, cache):
    """-> (dx [..., D], dw [D], db [D])."""
    x, w, mu, rstd = cache
    D = x.shape[-1]
    xhat = x - mu
    xhat *= rstd  # [..., D] recomputed
    # y = xhat * w + b
    dw = np.sum((dy * xhat).reshape(-1, D), axis=0)  # [N,D] -> [D]
    db = np.sum(dy.reshape(-1, D), axis=0)  # [N,D] -> [D]
    g = dy * w  # dL/dxhat [..., D]
    # xhat = (x - mu) rstd, mu and rstd functions of x
    dx = g - g.mean(axis=-1, keepdims=True)
    dx -= xhat * np.mean(g * xhat, axis=-1, keepdims=True)
    dx *= rstd
    return dx, dw, db
