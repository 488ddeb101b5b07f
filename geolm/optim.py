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


def adam_step(theta, grad, state, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    """One Adam(W) update of theta in place."""
    state["t"] += 1
    t = state["t"]
    m, v = state["m"], state["v"]
    m *= b1
    m += (1.0 - b1) * grad
    v *= b2
    v += (1.0 - b2) * (grad * grad)
    if weight_decay:
        theta *= 1.0 - lr * weight_decay
    c1 = 1.0 - b1 ** t
    c2 = 1.0 - b2 ** t
    denom = np.sqrt(v / c2)
    denom += eps
    theta -= (lr / c1) * (m / denom)


def global_norm(grad):
    return math.sqrt(float(np.dot(grad.astype(np.float64, copy=False), grad.astype(np.float64, copy=False))))


def clip_grad_norm(grad, max_norm):
    """Rescale grad in place if its global L2 norm exceeds max_norm; return the pre-clip norm."""
    n = global_norm(grad)
    if max_norm and max_norm > 0 and n > max_norm:
        grad *= max_norm / (n + 1e-12)
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
