"""The generic training loop: Adam(W) on one flat buffer, guarded against non-finite steps, checkpointed,
exactly resumable, interruptible, and data-parallel over MPI (geolm.training.distributed).

One step (the same on every rank):
    idx   = sampler.next()                       global batch of B example indices
    g, L  = allreduce(n_r * grad_r, n_r * L_r) / N   exact global mean over N targets (see distributed.py)
    if L or ||g|| is not finite (or loss_and_grads raised NumericalError): skip (theta and the Adam moments untouched), count; after `backoff_after`
        skips in a row lr_scale *= backoff; after `max_bad_steps` in a row stop with NumericalError
    else: clip g to ||g|| <= clip, adam_step(theta, g, lr_at(step) * lr_scale)
Exact resume: theta, Adam (m, v, t), sampler position, the task's RNG, lr_scale and the counters are all
checkpointed, so a run stopped at step k and resumed ends bit-for-bit equal to an uninterrupted one (same
machine, same thread count). metrics.jsonl gets one JSON record per log / eval / skip / stop event.
"""
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint, check_config
from ..core.config import opt, positive, require
from .distributed import get_comm, global_mean, root_only, shard, thread_limit
from ..core.errors import ConfigError, CheckpointError, NumericalError
from .optim import adam_init, adam_step, clip_scale, global_norm, lr_at
from ..core.params import ParamSpec


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


class TrainingInterrupted(SystemExit):
    """SIGINT/SIGTERM stopped fit after a checkpoint. A SystemExit: uncaught, the process exits with `code`
    (130 for SIGINT, 143 for SIGTERM) and no traceback; `step` and `run_dir` say where to resume."""

    def __init__(self, code, step, run_dir):
        super().__init__(code)
        self.step = step
        self.run_dir = str(run_dir)


# ---------------------------------------------------------------------------------------------------------------
# small helpers

def _json_safe(x):
    """Non-finite floats -> "nan"/"inf"/"-inf" so metrics.jsonl stays strict JSON."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


class _Metrics:
    """Append-only metrics.jsonl (rank 0 only); on resume drops records past the checkpoint's step."""

    def __init__(self, path, active):
        self.path, self.active = Path(path), active

    def truncate_after(self, step):
        if not self.active or not self.path.exists():
            return []
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if rec.get("step", 0) <= step:
                keep.append(rec)
        tmp = self.path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.path)
        return keep

    def write(self, rec):
        if self.active:
            with open(self.path, "a") as f:
                f.write(json.dumps(_json_safe(rec)) + "\n")


class _Signals:
    """Turn SIGINT/SIGTERM into flags checked after each step (main thread only); a second SIGINT aborts."""

    def __init__(self):
        self.got = {signal.SIGINT: 0, signal.SIGTERM: 0}
        self.old = {}

    def _handle(self, signum, frame):
        self.got[signum] += 1
        if signum == signal.SIGINT and self.got[signum] > 1:
            raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.got:
                self.old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


def _prepare_run_dir(run_dir, resume):
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--output {run_dir} is a file; pass a directory path")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write_probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--output {run_dir} is not writable ({e.strerror}); pass a directory you can write to")
    if resume and latest_checkpoint(run_dir) is None:
        raise CheckpointError(f"no checkpoint (ckpt_*.npz) in {run_dir} to resume; drop --resume to start a new run")
    if not resume and list_checkpoints(run_dir):
        raise ConfigError(f"--output {run_dir} already holds checkpoints; pass --resume {run_dir} to continue "
                          f"that run, or choose a new --output")
    if not resume and (run_dir / "metrics.jsonl").exists():  # left by a run that died before its 1st checkpoint
        (run_dir / "metrics.jsonl").unlink()


def evaluate(task, theta, comm=None):
    """(val_loss, val_ppl) = (sum nll / n, exp of it) over task.val_batches(), sharded over ranks by batch."""
    comm = comm or get_comm()
    acc = np.zeros(2, dtype=np.float64)  # [nll sum, n]
    for i, b in enumerate(task.val_batches()):
        if i % comm.size == comm.rank:
            s, n = task.eval_nll(theta, b)
            acc[0] += float(s)
            acc[1] += int(n)
    comm.allreduce_sum(acc)
    if acc[1] == 0:
        return None, None
    loss = float(acc[0] / acc[1])
    return loss, (math.exp(loss) if loss < 700.0 else math.inf)


# ---------------------------------------------------------------------------------------------------------------

def fit(task, theta, tcfg, run_dir, *, resume=False, on_eval=None, progress=True, extra_state=None, comm=None,
        resume_hint=None, should_stop=None):
    """Train theta (1-D flat buffer, updated in place) on task; rank 0 writes run_dir/metrics.jsonl and checkpoints.

    resume=True continues from run_dir's newest checkpoint (bit-exact). on_eval(step, theta) -> dict is called on
    rank 0 at each evaluation and merged into its record. extra_state: {name: array or JSON value} stored in every
    checkpoint (read back with load_checkpoint(...).extra). Returns dict(history, final_val_ppl, val_loss,
    best_val_ppl, steps_done, skipped, seconds, checkpoint, lr_scale).
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
    with thread_limit(tcfg.threads, comm):
        return _fit(task, theta, tcfg, Path(run_dir), resume, on_eval, progress, extra_state, comm, resume_hint,
                    should_stop)


def _fit(task, theta, tcfg, run_dir, resume, on_eval, progress, extra_state, comm, resume_hint, should_stop):
    from ..data.batches import EpochSampler

    root = comm.rank == 0
    root_only(comm, _prepare_run_dir, run_dir, resume)
    sampler = EpochSampler(task.n_train, tcfg.batch_size, tcfg.seed)
    total = tcfg.steps or tcfg.epochs * sampler.steps_per_epoch
    P = task.spec.size
    buf = np.zeros(P + 4, dtype=theta.dtype)  # [grad | n*loss, n, #SIGINT, #SIGTERM]: one Allreduce per step
    grad = buf[:P]
    adam = adam_init(theta)
    st = dict(step=0, lr_scale=1.0, consec_bad=0, skipped=0, best_val_ppl=None, seconds=0.0)
    metrics = _Metrics(run_dir / "metrics.jsonl", root)
    history = []
    done = []
    extra_arrays = {f"extra.{k}": v for k, v in (extra_state or {}).items() if isinstance(v, np.ndarray)}
    extra_json = {k: v for k, v in (extra_state or {}).items() if not isinstance(v, np.ndarray)}
    last_ckpt = [None, -1]  # path, step

    if resume:
        def _load():
            ck = load_checkpoint(run_dir, expect_family=task.family, expect_cfg=task.cfg, expect_spec=task.spec,
                                 expect_tokenizer=task.tokenizer_hash)
            if ck.theta.dtype != theta.dtype:
                raise CheckpointError(f"checkpoint {ck.path} holds {ck.theta.dtype} parameters but this run uses "
                                      f"{theta.dtype}; pass the dtype it was trained with or start a new --output")
            old = dict(ck.meta.get("tcfg", {}))
            check_config({k: old.get(k) for k in ("batch_size", "seed")},
                         {k: getattr(tcfg, k) for k in ("batch_size", "seed")})
            changed = sorted(k for k in old if k != "threads" and old[k] != dataclasses.asdict(tcfg).get(k))
            if changed and progress:
                print(f"resuming {ck.path.name} with changed training flags: {', '.join(changed)}", file=sys.stderr)
            theta[:] = ck.theta
            adam["m"][:] = ck.arrays["adam_m"]
            adam["v"][:] = ck.arrays["adam_v"]
            return dict(train=ck.train, path=str(ck.path), step=ck.step,
                        history=metrics.truncate_after(ck.step))
        info = root_only(comm, _load)
        tr = info["train"]
        comm.bcast(adam["m"])
        comm.bcast(adam["v"])
        adam["t"] = int(tr["adam_t"])
        sampler.load_state_dict(tr["sampler"])
        for k in st:
            st[k] = tr[k]
        if task.rng is not None and tr.get("rng") is not None:
            task.rng.bit_generator.state = tr["rng"]
        history = info["history"]
        last_ckpt = [Path(info["path"]), info["step"]]
        done = [r for r in history if r.get("kind") == "eval" and r.get("step") == info["step"]
                and r.get("val_loss") is not None]  # an empty (deferred, see geometric_run) evaluation is not done
    comm.bcast(theta)  # ranks cannot start apart
    if not np.isfinite(theta).all():
        raise NumericalError("the initial parameters contain NaN or Inf; check the model's initialisation")

    def log(rec):
        rec = _json_safe(rec)
        history.append(rec)
        metrics.write(rec)

    def checkpoint():
        if last_ckpt[1] == st["step"]:
            return last_ckpt[0]
        meta = dict(family=task.family, cfg=task.cfg, tcfg=tcfg, spec=json.loads(task.spec.to_json()),
                    tokenizer=task.tokenizer_hash, extra=extra_json,
                    train=dict(st, adam_t=adam["t"], sampler=sampler.state_dict(),
                               rng=task.rng.bit_generator.state if task.rng is not None else None))
        arrays = dict(adam_m=adam["m"], adam_v=adam["v"], **extra_arrays)
        path = root_only(comm, lambda: str(save_checkpoint(run_dir, st["step"], theta, meta, arrays,
                                                           keep=tcfg.keep_checkpoints)))
        last_ckpt[:] = [Path(path), st["step"]]
        return last_ckpt[0]

    last_eval = [None, None, -1]  # val_loss, val_ppl, step
    if resume and done:  # the checkpoint's step was already evaluated (e.g. resuming a finished run)
        last_eval[:] = [done[-1]["val_loss"], done[-1]["val_ppl"], st["step"]]

    def do_eval(epoch):
        vl, vp = evaluate(task, theta, comm)
        if vp is not None and math.isfinite(vp) and (st["best_val_ppl"] is None or vp < st["best_val_ppl"]):
            st["best_val_ppl"] = vp
        rec = dict(kind="eval", step=st["step"], epoch=epoch, val_loss=vl, val_ppl=vp,
                   best_val_ppl=st["best_val_ppl"], seconds=st["seconds"])
        if on_eval is not None and root:
            rec.update(on_eval(st["step"], theta) or {})
        log(rec)
        last_eval[:] = [vl, vp, st["step"]]

    bar = None
    if progress and root and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=total, initial=st["step"], unit="step", dynamic_ncols=True, file=sys.stderr)
    win = dict(loss=0.0, good=0, steps=0, tokens=0, t=0.0, stats={})
    stop_code = 0
    t_seg = time.perf_counter()
    seconds0 = st["seconds"]
    try:
        with _Signals() as sig:
            while st["step"] < total:
                t0 = time.perf_counter()
                step = st["step"]
                epoch = step // sampler.steps_per_epoch
                idx = shard(sampler.next(), comm.rank, comm.size)
                lr = lr_at(step, tcfg.lr, tcfg.schedule, tcfg.warmup, total, tcfg.min_lr) * st["lr_scale"]
                reason = None
                if len(idx):
                    try:
                        loss, stats = task.loss_and_grads(theta, grad, task.make_batch(idx))
                        loss, n = float(loss), int(stats.get("n", len(idx)))
                    except NumericalError as e:  # e.g. a metric that is not PD: a bad step like a NaN
                        reason = " ".join(str(e).split())
                        grad[:] = math.nan
                        loss, n, stats = math.nan, len(idx), {}
                else:
                    grad[:] = 0.0
                    loss, n, stats = 0.0, 0, {}
                stop = int(should_stop is not None and bool(should_stop()))
                loss, n, (n_int, n_term) = global_mean(comm, buf, loss, n,
                                                       (sig.got[signal.SIGINT], sig.got[signal.SIGTERM] + stop))
                norm = global_norm(grad)  # a Numba reduction: inf/NaN come back as values, no NumPy warnings
                if math.isfinite(loss) and math.isfinite(norm):
                    adam_step(theta, grad, adam, lr, tcfg.b1, tcfg.b2, tcfg.adam_eps, tcfg.weight_decay,
                              grad_scale=clip_scale(norm, tcfg.clip))
                    st["consec_bad"] = 0
                    win["loss"] += loss
                    win["good"] += 1
                    for k, v in stats.items():
                        if k != "n" and isinstance(v, (int, float, np.number)):
                            win["stats"][k] = win["stats"].get(k, 0.0) + float(v)
                else:
                    st["skipped"] += 1
                    st["consec_bad"] += 1
                    if st["consec_bad"] % tcfg.backoff_after == 0:
                        st["lr_scale"] *= tcfg.backoff
                    log(dict(kind="skip", step=step + 1, epoch=epoch, loss=loss, grad_norm=norm, lr=lr,
                             skipped=st["skipped"], consec_bad=st["consec_bad"], lr_scale=st["lr_scale"],
                             **({"reason": reason} if reason else {})))
                    if st["consec_bad"] >= tcfg.max_bad_steps:
                        log(dict(kind="stop", step=step + 1, reason="non-finite", skipped=st["skipped"]))
                        good = last_ckpt[0] if last_ckpt[0] is not None else "none written yet"
                        raise NumericalError(
                            f"stopped at step {step + 1} after {st['consec_bad']} non-finite steps in a row "
                            f"(loss {loss}, grad norm {norm}{'; ' + reason if reason else ''}); last good "
                            f"checkpoint: {good}; resume from it "
                            f"with a lower --lr or --clip")
                st["step"] = step + 1
                dt = time.perf_counter() - t0
                st["seconds"] = seconds0 + time.perf_counter() - t_seg
                win["steps"] += 1
                win["tokens"] += n
                win["t"] += dt
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", ms=f"{1e3 * dt:.1f}", tok_s=f"{n / max(dt, 1e-9):.0f}",
                                    refresh=False)
                if st["step"] % tcfg.log_every == 0 or st["step"] == total:
                    g = max(win["good"], 1)
                    rec = dict(kind="train", step=st["step"], epoch=epoch,
                               loss=win["loss"] / g if win["good"] else math.nan, lr=lr, grad_norm=norm,
                               skipped=st["skipped"], lr_scale=st["lr_scale"], seconds=st["seconds"],
                               ms_per_step=1e3 * win["t"] / win["steps"],
                               tokens_per_s=win["tokens"] / max(win["t"], 1e-9),
                               **{k: v / g for k, v in win["stats"].items()})
                    log(rec)
                    if progress and root and bar is None:
                        print(f"step {st['step']}/{total} loss {rec['loss']:.4f} lr {lr:.2e} | "
                              f"{rec['ms_per_step']:.1f} ms/step | {rec['tokens_per_s']:.0f} tok/s", file=sys.stderr)
                    win = dict(loss=0.0, good=0, steps=0, tokens=0, t=0.0, stats={})
                at_epoch_end = st["step"] % sampler.steps_per_epoch == 0
                if (tcfg.eval_every and st["step"] % tcfg.eval_every == 0) or (not tcfg.eval_every and at_epoch_end):
                    if st["step"] < total:
                        do_eval(epoch)
                        if not tcfg.checkpoint_every:
                            checkpoint()
                if tcfg.checkpoint_every and st["step"] % tcfg.checkpoint_every == 0 and st["step"] < total:
                    checkpoint()
                if n_int or n_term:
                    stop_code = 143 if n_term else 130
                    break
    finally:
        if bar is not None:
            bar.close()
    if stop_code:
        checkpoint()
        log(dict(kind="interrupt", step=st["step"], code=stop_code))
        if root:
            print(f"interrupted at step {st['step']}; resume with {resume_hint or f'--resume {run_dir}'}",
                  file=sys.stderr)
        raise TrainingInterrupted(stop_code, st["step"], run_dir)
    if last_eval[2] != st["step"]:
        do_eval(st["step"] // sampler.steps_per_epoch)
    path = checkpoint()
    if progress and root:
        print(f"done: {st['step']} steps, val ppl {last_eval[1]}, skipped {st['skipped']}, "
              f"{st['seconds']:.1f} s; checkpoint {path}", file=sys.stderr)
    return dict(history=history, final_val_ppl=last_eval[1], val_loss=last_eval[0],
                best_val_ppl=st["best_val_ppl"], steps_done=st["step"], skipped=st["skipped"],
                seconds=st["seconds"], checkpoint=str(path), lr_scale=st["lr_scale"])
