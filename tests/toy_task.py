"""A tiny differentiable Task for training tests: softmax regression, forward/backward in plain NumPy.

    logits = X W + b                      # [n,F] @ [F,C] + [C] -> [n,C]
    loss   = mean_i -log softmax(logits_i)[y_i]
    dlogits = (softmax - onehot(y)) / n;  dW = X^T dlogits;  db = sum_i dlogits_i
Fault injection: the k-th call (0-based, per process) of loss_and_grads listed in nan_at returns a NaN loss
and gradient, in inf_at an Inf in the gradient only, in raise_at raises NumericalError; the k-th call of eval_nll
listed in eval_raise_at raises NumericalError; `ranks` limits injection to those MPI ranks.
`delay` sleeps in each call (for signal tests).
"""
import math
import time
from dataclasses import dataclass

import numpy as np

from geolm.core.errors import NumericalError
from geolm.core.params import ParamSpec
from geolm.training.distributed import get_comm
from geolm.training.train import Task


@dataclass(frozen=True)
class ToyConfig:
    features: int = 6
    classes: int = 4
    dtype: str = "float64"


def _xent(theta, spec, X, y):
    p = spec.views(theta)
    logits = X @ p["W"] + p["b"]  # [n,F] @ [F,C] -> [n,C]
    logits = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits).sum(axis=1))  # [n]
    nll = lse - logits[np.arange(len(y)), y]  # [n]
    return logits, lse, nll


def make_toy_task(n_train=96, n_val=40, features=6, classes=4, dtype="float64", seed=0, nan_at=(), inf_at=(),
                  ranks=None, delay=0.0, raise_at=(), family="toy", noise=False, eval_raise_at=()):
    """(task, theta0). noise=True gives the task an RNG that perturbs each batch's inputs (RNG-state test)."""
    cfg = ToyConfig(features, classes, dtype)
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    Wtrue = rng.normal(size=(features, classes))
    X = rng.normal(size=(n_train + n_val, features))
    y = np.argmax(X @ Wtrue + 0.5 * rng.normal(size=(n_train + n_val, classes)), axis=1).astype(np.int64)
    Xtr, ytr, Xva, yva = X[:n_train].astype(dt), y[:n_train], X[n_train:].astype(dt), y[n_train:]
    spec = ParamSpec({"W": (features, classes), "b": (classes,)})
    theta = spec.zeros(dt)
    spec.views(theta)["W"][...] = 0.1 * rng.normal(size=(features, classes))
    calls = {"n": 0, "eval": 0}
    task_rng = np.random.default_rng(seed + 1) if noise else None

    def rank():
        return get_comm().rank

    def make_batch(idx):
        Xb = Xtr[idx]
        if task_rng is not None:
            Xb = Xb + (0.01 * task_rng.normal(size=Xb.shape)).astype(dt)
        return Xb, ytr[idx]

    def loss_and_grads(theta, grad, batch):
        Xb, yb = batch
        k = calls["n"]
        calls["n"] += 1
        if delay:
            time.sleep(delay)
        if k in raise_at and (ranks is None or rank() in ranks):
            raise NumericalError("metric not positive definite at eps=0.1 (toy)")
        n = len(yb)
        logits, lse, nll = _xent(theta, spec, Xb, yb)
        probs = np.exp(logits - lse[:, None])  # [n,C]
        probs[np.arange(n), yb] -= 1.0
        dlogits = probs * (1.0 / n)
        g = spec.views(grad)
        grad[:] = 0.0
        g["W"] += Xb.T @ dlogits  # [F,n] @ [n,C] -> [F,C]
        g["b"] += dlogits.sum(axis=0)
        loss = float(nll.mean())
        hit = ranks is None or rank() in ranks
        if hit and k in nan_at:
            grad[0] = math.nan
            loss = math.nan
        if hit and k in inf_at:
            grad[-1] = math.inf
        return loss, {"n": n, "acc": float((np.argmax(logits, 1) == yb).mean())}

    def eval_nll(theta, batch):
        Xb, yb = batch
        k = calls["eval"]
        calls["eval"] += 1
        if k in eval_raise_at and (ranks is None or rank() in ranks):
            raise NumericalError("metric not positive definite in evaluation (toy)")
        return float(_xent(theta, spec, Xb, yb)[2].sum()), len(yb)

    def val_batches():
        for i in range(0, n_val, 16):
            yield Xva[i:i + 16], yva[i:i + 16]

    task = Task(family=family, cfg=cfg, spec=spec, n_train=n_train, make_batch=make_batch,
                loss_and_grads=loss_and_grads, eval_nll=eval_nll, val_batches=val_batches,
                tokenizer_hash="toyhash", rng=task_rng)
    task.calls = calls
    return task, theta
