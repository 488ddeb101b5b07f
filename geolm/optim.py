"""Adam / AdamW on the flat parameter buffer, global-norm clipping, learning-rate schedules.

Adam (bias-corrected; eps outside sqrt(v_hat)):
    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
    theta -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
AdamW adds decoupled weight decay: theta -= lr * wd * theta (before the Adam update).
"""
import math

import numpy as np


def adam_init(theta):
    """State: {"m", "v"} same-shaped as theta, and integer step "t"."""
    return {"m": np.zeros_like(theta), "v": np.zeros_like(theta), "t": 0}


def adam_step_ref(theta, grad, state, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_scale=1.0):
    """NumPy reference of adam_step (several passes over the buffer)."""
    state["t"] += 1
    t = state["t"]
    m, v = state["m"], state["v"]
    g = grad * grad_scale if grad_scale != 1.0 else grad
    m *= b1
    m += (1.0 - b1) * g
    v *= b2
    v += (1.0 - b2) * (g * g)
    if weight_decay:
        theta *= 1.0 - lr * weight_decay
    c1 = 1.0 - b1 ** t
    c2 = 1.0 - b2 ** t
    denom = np.sqrt(v / c2)
    denom += eps
    theta -= (lr / c1) * (m / denom)


def _adam_nb(theta, grad, m, v, scale, b1, b2, c1, c2, lr, eps, decay):
    # one pass per element, arithmetic in float64: g = scale*grad; m, v moments; theta *= decay;
    # theta -= lr (m / c1) / (sqrt(v / c2) + eps)
    for i in range(theta.shape[0]):
        g = scale * grad[i]
        mi = b1 * m[i] + (1.0 - b1) * g
        vi = b2 * v[i] + (1.0 - b2) * (g * g)
        m[i] = mi
        v[i] = vi
        th = decay * theta[i]
        theta[i] = th - lr * (mi / c1) / (math.sqrt(vi / c2) + eps)


def _sumsq_nb(x):
    acc = 0.0
    for i in range(x.shape[0]):
        xi = float(x[i])
        acc += xi * xi
    return acc


_kernels = {}


def _kernel(name):
    """Compile lazily (import geolm compiles nothing)."""
    if name not in _kernels:
        from .jit import njit
        _kernels[name] = njit(globals()[name])
    return _kernels[name]


def adam_step(theta, grad, state, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_scale=1.0):
    """One Adam(W) update of theta in place, on grad * grad_scale (fused clipping), one pass (Numba)."""
    state["t"] += 1
    t = state["t"]
    _kernel("_adam_nb")(theta, grad, state["m"], state["v"], float(grad_scale), float(b1), float(b2),
                        1.0 - b1 ** t, 1.0 - b2 ** t, float(lr), float(eps), 1.0 - lr * weight_decay)


def global_norm(grad):
    """L2 norm of the flat buffer, accumulated in float64 without a copy."""
    return math.sqrt(_kernel("_sumsq_nb")(grad))


def global_norm_ref(grad):
    g = grad.astype(np.float64, copy=False)
    return math.sqrt(float(np.dot(g, g)))


def clip_scale(norm, max_norm):
    """Factor that brings a gradient of this norm to at most max_norm (1.0 when no clipping)."""
    return max_norm / (norm + 1e-12) if max_norm and max_norm > 0 and norm > max_norm else 1.0


def clip_grad_norm(grad, max_norm):
    """Rescale grad in place if its global L2 norm exceeds max_norm; return the pre-clip norm."""
    n = global_norm(grad)
    s = clip_scale(n, max_norm)
    if s != 1.0:
        grad *= s
    return n


def lr_at(step, base_lr, schedule="constant", warmup=0, total=0, min_lr=0.0):
    """Learning rate at 0-based step: "constant" (after linear warm-up) or "cosine" (warm-up, then
    cosine from base_lr to min_lr at step total)."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        span = max(1, total - warmup)
        frac = min(1.0, (step - warmup) / span)
        return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown schedule {schedule!r}")
