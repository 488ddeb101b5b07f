"""Affine map y = x w + b over the last axis.

B batch . T time . I in features . O out features . N flattened leading axes

    forward:  y = x @ w + b                 x [..., I], w [I, O], b [O] -> y [..., O]
    backward: dx = dy @ w^T;  dw = x^T dy (summed over leading axes);  db = sum dy
Reference: CS231n assignment 2 `affine_forward/backward`.
"""
import numpy as np


def linear_forward(x, w, b):
    """y = x @ w + b; x [..., I], w [I, O], b [O] -> (y [..., O], cache)."""
    y = np.matmul(x.reshape(-1, w.shape[0]), w).reshape(*x.shape[:-1], w.shape[1])  # one 2-D GEMM [N,I]@[I,O]
    y += b
    return y, (x, w)


def linear_backward(dy, cache):
    """-> (dx [..., I], dw [I, O], db [O])."""
    x, w = cache
    I, O = w.shape
    x2 = x.reshape(-1, I)  # [..., I] -> [N, I]
    dy2 = dy.reshape(-1, O)  # [..., O] -> [N, O]
    # y = x @ w + b
    dx = np.matmul(dy2, w.T).reshape(*dy.shape[:-1], I)  # [N, O] @ [O, I] -> [..., I] (2-D: not a stack of GEMMs)
    dw = np.matmul(x2.T, dy2)  # [I, N] @ [N, O] -> [I, O]
    db = dy2.sum(axis=0)  # [N, O] -> [O]
    return dx, dw, db
