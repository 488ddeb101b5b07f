"""Pointwise activations, forward/backward pairs.

    relu: y = max(x, 0);            dx = dy * [x > 0]
    tanh: y = tanh(x);              dx = dy * (1 - y^2)
    gelu (tanh approximation, GPT-2 / llm.c):
        u = c (x + a x^3),  c = sqrt(2/pi),  a = 0.044715,  t = tanh(u)
        y = 0.5 x (1 + t)
        dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 a x^2)
    gelu_bias (the same gelu of x = h + b, bias fused, in one pass each way; sigmoid form, see
        geolm.ops.gelu_kernels): y = x s,  s = sigmoid(2u);  dx = dy (s + 2 x s (1 - s) c (1 + 3 a x^2)),  db = sum dx
Constants are Python floats (math.sqrt), so float32 stays float32 under NumPy 2 promotion rules.
Reference: llm.c `gelu_forward/gelu_backward` (kept exact: no fastmath, see llm.c issue #168).
"""
import math

import numpy as np

from .gelu_kernels import gelu_bias_backward_nb, gelu_bias_forward_nb

GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715


def relu_forward(x):
    """y = max(x, 0); x [...] -> (y [...], cache)."""
    return np.maximum(x, 0.0), (x,)


def relu_backward(dy, cache):
    (x,) = cache
    # y = max(x, 0)
    return dy * (x > 0.0)


def tanh_forward(x):
    """y = tanh(x); x [...] -> (y [...], cache)."""
    y = np.tanh(x)
    return y, (y,)


def tanh_backward(dy, cache):
    (y,) = cache
    # y = tanh(x)  ->  dy/dx = 1 - y^2
    return dy * (1.0 - y * y)


def gelu_forward(x):
    """y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); x [...] -> (y [...], cache)."""
    t = x * x
    t *= GELU_A * x
    t += x
    t *= GELU_C
    np.tanh(t, out=t)  # t = tanh(c (x + a x^3))
    y = 1.0 + t
    y *= x
    y *= 0.5
    return y, (x, t)


def gelu_backward(dy, cache):
    x, t = cache
    # y = 0.5 x (1 + t),  t = tanh(c (x + a x^3))
    x2 = x * x
    du = x2 * (3.0 * GELU_A)
    du += 1.0
    du *= GELU_C  # du/dx = c (1 + 3 a x^2)
    sech2 = 1.0 - t * t  # dt/du
    dx = sech2 * du
    dx *= x
    dx += 1.0 + t
    dx *= 0.5
    dx *= dy
    return dx


def gelu_bias_forward(h, b, out=None, grad=True):
    """y = gelu(h + b): h [..., F] C-contiguous, b [F] -> (y [..., F], cache; None when grad is False).
    out: optional C-contiguous [n, F] or [n, F + 1] array (n = rows of h; h itself works but runs unvectorised)
    that receives y (then y = out[:, :F]; a last column is set to 1). The cache holds only g = dy/dx."""
    F = h.shape[-1]
    x = h.reshape(-1, F)  # [..., F] -> [n,F]
    out = np.empty_like(x) if out is None else out.reshape(x.shape[0], -1)
    g = np.empty_like(x) if grad else None
    gelu_bias_forward_nb(x, np.ascontiguousarray(b, dtype=x.dtype), out, g)
    y = out if out.shape[1] == F else out[:, :F]
    return (y.reshape(h.shape) if y is out else y), ((g, h.shape) if grad else None)


def gelu_bias_backward(dy, cache, out=None):
    """-> (dx [..., F], db [F]); out: optional array of dy's size for dx (dy itself works but runs unvectorised)."""
    g, shape = cache
    # y = gelu(x), x = h + b:  dx = dy gelu'(x) = dh,  db = sum over rows of dh
    dy2 = np.ascontiguousarray(dy, dtype=g.dtype).reshape(g.shape)
    dx = np.empty_like(g) if out is None else out.reshape(g.shape)
    db = gelu_bias_backward_nb(dy2, g, dx)
    return dx.reshape(shape), db
