"""fit: the generic training loop. Adam(W) on one flat buffer, guarded against non-finite steps, checkpointed,
exactly resumable, interruptible, and data-parallel over MPI (geolm.training.distributed).

One step (the same on every rank; geolm.training.loop):
    idx   = sampler.next()                       global batch of B example indices
    g, L  = allreduce(n_r * grad_r, n_r * L_r) / N   exact global mean over N targets (see distributed.py)
    if L or ||g|| is not finite, or loss_and_grads raised NumericalError: skip (theta and the Adam moments
        untouched; the skip record keeps the error's reason); after `backoff_after` skips in a row
        lr_scale *= backoff; after `max_bad_steps` in a row stop with NumericalError
    else: clip g to ||g|| <= clip, adam_step(theta, g, lr_at(step) * lr_scale)
Evaluation (geolm.training.evaluation) at every eval point and at the end: its record goes to on_eval, then to
metrics.jsonl; with defer_eval=True a parameter snapshot and a pending record instead.
Exact resume: theta, Adam (m, v, t), sampler position, the task's RNG, lr_scale and the counters are all
checkpointed, so a run stopped at step k and resumed ends bit-for-bit equal to an uninterrupted one (same
machine, same thread count). metrics.jsonl gets one JSON record per log / eval / skip / stop event.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..core.config import check_output_dir, opt, positive, require
from ..core.errors import CheckpointError, ConfigError
from ..core.params import ParamSpec
from .checkpoint import latest_checkpoint, list_checkpoints, list_snapshots, remove_snapshot
from .distributed import get_comm, root_only, thread_limit
from .evaluation import evaluate, record_deferred, run_deferred_eval
from .loop import Run, TrainingInterrupted

__all__ = ["Task", "TrainConfig", "TrainingInterrupted", "fit", "evaluate", "run_deferred_eval", "record_deferred"]


@dataclass
class Task:
    """What fit needs from a model + data. loss_and_grads zeroes and fills grad with d(mean loss)/d theta and
    returns (mean loss, stats) with stats["n"] = number of targets; eval_nll returns (nll sum, n)."""

    family: str
    cfg: Any
    spec: ParamSpec
    n_train: int
    make_batch: Callable
    loss_and_grads: Callable
    eval_nll: Callable
    val_batches: Callable
    tokenizer_hash: str = ""
    rng: Optional[np.random.Generator] = None  # the task's own randomness, checkpointed for exact resume


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = opt(1, "passes over the training data (used when --steps is 0)")
    steps: int = opt(0, "optimiser steps in total; 0 = epochs * steps per epoch")
    batch_size: int = opt(32, "global batch size (split over MPI ranks)")
    lr: float = opt(3e-3, "peak learning rate")
    schedule: str = opt("cosine", "learning-rate schedule after warm-up", choices=("constant", "cosine"))
    warmup: int = opt(0, "linear warm-up steps")
    min_lr: float = opt(0.0, "final learning rate of the cosine schedule")
    weight_decay: float = opt(0.0, "AdamW decoupled weight decay (0 = plain Adam)")
    b1: float = opt(0.9, "Adam beta1")
    b2: float = opt(0.999, "Adam beta2")
    adam_eps: float = opt(1e-8, "Adam epsilon")
    clip: float = opt(1.0, "clip the global gradient norm to this (0 = off)")
    eval_every: int = opt(0, "evaluate every N steps (0 = at each epoch end)")
    checkpoint_every: int = opt(0, "checkpoint every N steps (0 = at each evaluation)")
    keep_checkpoints: int = opt(3, "keep the newest K checkpoints")
    max_bad_steps: int = opt(10, "stop after this many non-finite steps in a row")
    backoff: float = opt(0.5, "multiply the learning rate by this after --backoff-after skips in a row")
    backoff_after: int = opt(3, "non-finite steps in a row before the learning rate is backed off")
    seed: int = opt(0, "seed of the batch order")
    log_every: int = opt(10, "write a training record every N steps")
    threads: int = opt(0, "BLAS/Numba threads per process (0 = cores / MPI ranks on this node)")

    def __post_init__(self):
        positive(self, "epochs", "batch_size", "lr", "adam_eps", "max_bad_steps", "backoff_after", "log_every",
                 "keep_checkpoints")
        for k in ("steps", "warmup", "eval_every", "checkpoint_every", "threads"):
            require(getattr(self, k) >= 0, k, f"must be >= 0, got {getattr(self, k)}")
        require(self.schedule in ("constant", "cosine"), "schedule", f"use constant or cosine, not {self.schedule!r}")
        require(0.0 <= self.min_lr <= self.lr, "min_lr", f"must be in [0, --lr={self.lr}], got {self.min_lr}")
        require(self.weight_decay >= 0.0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(0.0 <= self.b1 < 1.0, "b1", f"must be in [0, 1), got {self.b1}")
        require(0.0 <= self.b2 < 1.0, "b2", f"must be in [0, 1), got {self.b2}")
        require(self.clip >= 0.0, "clip", f"must be >= 0 (0 = off), got {self.clip}")
        require(0.0 < self.backoff <= 1.0, "backoff", f"must be in (0, 1], got {self.backoff}")


def _prepare_run_dir(run_dir, resume, resume_hint=None):
    """Check run_dir for a new run (no checkpoints; stale metrics and snapshots removed) or a resumed one."""
    check_output_dir(run_dir)
    if resume and latest_checkpoint(run_dir) is None:
        raise CheckpointError(f"no checkpoint (ckpt_*.npz) in {run_dir} to resume; drop --resume to start a new run")
    if not resume and list_checkpoints(run_dir):
        raise ConfigError(f"--output {run_dir} already holds checkpoints; pass {resume_hint or f'--resume {run_dir}'} "
                          f"to continue that run, or choose a new --output")
    if not resume:  # left by a run that died before its first checkpoint
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        for k in list_snapshots(run_dir):
            remove_snapshot(run_dir, k)


def fit(task, theta, tcfg, run_dir, *, resume=False, on_eval=None, progress=True, extra_state=None, comm=None,
        resume_hint=None, should_stop=None, defer_eval=False):
    """Train theta (1-D flat buffer, updated in place) on task; rank 0 writes run_dir/metrics.jsonl and checkpoints.

    resume=True continues from run_dir's newest checkpoint (bit-exact). on_eval(record, theta) -> dict | None is
    called on rank 0 at each evaluation with (a copy of) the eval record (kind "eval", step, epoch, val_loss,
    val_ppl, best_val_ppl, seconds, n[, reason]); what it returns is merged into the record. defer_eval=True: each
    evaluation is a parameter snapshot and a record with pending=True and no val_*; evaluate them later with
    run_deferred_eval and record_deferred. extra_state: {name: array or JSON value} stored in every checkpoint
    (read back with load_checkpoint(...).extra). Returns dict(history, final_val_ppl, val_loss, best_val_ppl,
    steps_done, skipped, seconds, checkpoint, lr_scale, pending = steps of the snapshots waiting in run_dir).
    Raises NumericalError after max_bad_steps non-finite steps in a row, TrainingInterrupted on SIGINT/SIGTERM
    (after a checkpoint, with the line "interrupted at step N; resume with <resume_hint or --resume run_dir>"), and
    the same as for SIGTERM when should_stop() (checked after every step) turns true.
    """
    comm = comm or get_comm()
    if not isinstance(theta, np.ndarray) or theta.ndim != 1 or theta.shape[0] != task.spec.size \
            or theta.dtype.kind != "f" or not theta.flags.c_contiguous:
        raise ValueError(f"theta must be a contiguous 1-D float array of {task.spec.size} parameters, "
                         f"got {getattr(theta, 'shape', None)} {getattr(theta, 'dtype', None)}")
    require(task.n_train > 0, "max_train", "the training set is empty; pass more training data")
    run_dir = Path(run_dir)
    with thread_limit(tcfg.threads, comm):
        root_only(comm, _prepare_run_dir, run_dir, resume, resume_hint)
        run = Run(task, theta, tcfg, run_dir, comm, on_eval=on_eval, progress=progress, extra_state=extra_state,
                  resume_hint=resume_hint, should_stop=should_stop, defer_eval=defer_eval)
        if resume:
            run.resume()
        return run.train()
