"""Adam / AdamW on the flat parameter buffer, global-norm clipping, learning-rate schedules.

Adam (bias-corrected; eps outside sqrt(v_hat)):
    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
    theta -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
AdamW adds decoupled weight decay: theta -= lr * wd * theta (before the Adam update).
"""
import math

import numpy as np

from ..core.jit import njit, njit_reassoc


def adam_init(theta):
    """State: {"m", "v"} same-shaped as theta, and integer step "t"."""
    return {"m": np.zeros_like(theta), "v": np.zeros_like(theta), "t": 0}


def _adam_scalars(theta, state, lr, b1, b2, eps, weight_decay, grad_scale):
    """The kernel's scalars in theta's dtype: (scale, b1, b2, 1-b1, 1-b2, 1/c1, 1/c2, lr, eps, decay)."""
    t = state["t"]
    f = theta.dtype.type
    return tuple(f(x) for x in (grad_scale, b1, b2, 1.0 - b1, 1.0 - b2, 1.0 / (1.0 - b1 ** t),
                                1.0 / (1.0 - b2 ** t), lr, eps, 1.0 - lr * weight_decay))


def adam_step_ref(theta, grad, state, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_scale=1.0):
    """NumPy reference of adam_step (several passes over the buffer, same operation order, theta's dtype)."""
    state["t"] += 1
    scale, b1, b2, ib1, ib2, ic1, ic2, lr, eps, decay = _adam_scalars(theta, state, lr, b1, b2, eps,
                                                                      weight_decay, grad_scale)
    m, v = state["m"], state["v"]
    g = scale * grad
    m *= b1
    m += ib1 * g
    v *= b2
    v += ib2 * (g * g)
    theta *= decay
    theta -= lr * (m * ic1) / (np.sqrt(v * ic2) + eps)


def _adam_nb(theta, grad, m, v, scale, b1, b2, ib1, ib2, ic1, ic2, lr, eps, decay):
    # one pass per element in theta's precision (scalars arrive in theta's dtype, so float32 vectorises):
    # g = scale*grad; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; theta = decay*theta - lr (m/c1) / (sqrt(v/c2) + eps)
    # (ib1 = 1-b1, ib2 = 1-b2, ic1 = 1/c1, ic2 = 1/c2 precomputed)
    for i in range(theta.shape[0]):
        g = scale * grad[i]
        mi = b1 * m[i] + ib1 * g
        vi = b2 * v[i] + ib2 * (g * g)
        m[i] = mi
        v[i] = vi
        theta[i] = decay * theta[i] - lr * (mi * ic1) / (np.sqrt(vi * ic2) + eps)


def _sumsq_nb(x):
    # sum of squares in float64 (x may be float32: square after the cast)
    acc = 0.0
    for i in range(x.shape[0]):
        xi = np.float64(x[i])
        acc += xi * xi
    return acc


_kernels = {}


def _kernel(name):
    """Compile on first use (import geolm compiles nothing)."""
    if name not in _kernels:
        _kernels[name] = (njit_reassoc if name == "_sumsq_nb" else njit)(globals()[name])
    return _kernels[name]


def adam_step(theta, grad, state, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_scale=1.0):
    """One Adam(W) update of theta in place, on grad * grad_scale (fused clipping), one pass (Numba), arithmetic
    in theta's dtype (so float32 training vectorises at float32 width)."""
    state["t"] += 1
    _kernel("_adam_nb")(theta, grad, state["m"], state["v"],
                        *_adam_scalars(theta, state, lr, b1, b2, eps, weight_decay, grad_scale))


def global_norm(grad):
    """L2 norm of the flat buffer, accumulated in float64 without a copy (vectorised reduction kernel)."""
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
