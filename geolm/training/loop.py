"""The state of one fit call (geolm.training.train.fit) and the loop's pieces, each a short method:
step (loss, global mean, Adam or skip), train record, evaluation (inline or a deferred snapshot), checkpoint,
interrupt and finish. Every rank runs the same methods; rank 0 alone writes files and prints.
"""
import dataclasses
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import CheckpointError, NumericalError
from ..data.batches import EpochSampler
from .checkpoint import (check_config, list_snapshots, load_checkpoint, remove_snapshot, save_checkpoint,
                         save_snapshot)
from .distributed import global_mean, root_only, shard
from .evaluation import evaluate, one_line, record_deferred, run_deferred_eval
from .metrics import MetricsLog
from .optim import adam_init, adam_step, clip_scale, global_norm, lr_at


class TrainingInterrupted(SystemExit):
    """SIGINT/SIGTERM stopped fit after a checkpoint. A SystemExit: uncaught, the process exits with `code`
    (130 for SIGINT, 143 for SIGTERM) and no traceback; `step` and `run_dir` say where to resume."""

    def __init__(self, code, step, run_dir):
        super().__init__(code)
        self.step = step
        self.run_dir = str(run_dir)


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


@dataclass
class _Counters:
    """The loop state kept in every checkpoint's "train" dict."""

    step: int = 0
    lr_scale: float = 1.0
    consec_bad: int = 0
    skipped: int = 0
    best_val_ppl: Optional[float] = None
    seconds: float = 0.0


@dataclass
class _Window:
    """Sums over the steps since the last train record."""

    loss: float = 0.0
    good: int = 0
    steps: int = 0
    tokens: int = 0
    t: float = 0.0
    stats: dict = field(default_factory=dict)


class Run:
    """One fit call: theta (updated in place), Adam, sampler, counters, metrics log and history."""

    def __init__(self, task, theta, tcfg, run_dir, comm, *, on_eval=None, progress=True, extra_state=None,
                 resume_hint=None, should_stop=None, defer_eval=False):
        self.task, self.theta, self.tcfg, self.run_dir, self.comm = task, theta, tcfg, Path(run_dir), comm
        self.on_eval, self.resume_hint, self.should_stop = on_eval, resume_hint, should_stop
        self.defer_eval = defer_eval
        self.root = comm.rank == 0
        self.progress = progress and self.root
        self.sampler = EpochSampler(task.n_train, tcfg.batch_size, tcfg.seed)
        self.spe = self.sampler.steps_per_epoch
        self.total = tcfg.steps or tcfg.epochs * self.spe
        P = task.spec.size
        self.buf = np.zeros(P + 4, dtype=theta.dtype)  # [grad | n*loss, n, #SIGINT, #SIGTERM]: one Allreduce per step
        self.grad = self.buf[:P]
        self.adam = adam_init(theta)
        self.c = _Counters()
        self.win = _Window()
        self.metrics = MetricsLog(self.run_dir, self.root)
        self.history = []
        extra = extra_state or {}
        self.extra_arrays = {f"extra.{k}": v for k, v in extra.items() if isinstance(v, np.ndarray)}
        self.extra_json = {k: v for k, v in extra.items() if not isinstance(v, np.ndarray)}
        self.ckpt_path, self.ckpt_step = None, -1
        self.eval_loss, self.eval_ppl, self.eval_step = None, None, -1
        self.bar = None
        self.t_seg, self.seconds0 = 0.0, 0.0

    # -- resume
    def _load(self):
        """Rank 0: the newest checkpoint into theta and Adam; metrics and snapshots cut back to its step."""
        task, tcfg, theta = self.task, self.tcfg, self.theta
        ck = load_checkpoint(self.run_dir, expect_family=task.family, expect_cfg=task.cfg, expect_spec=task.spec,
                             expect_tokenizer=task.tokenizer_hash)
        if ck.theta.dtype != theta.dtype:
            raise CheckpointError(f"checkpoint {ck.path} holds {ck.theta.dtype} parameters but this run uses "
                                  f"{theta.dtype}; pass the dtype it was trained with or start a new --output")
        old = dict(ck.meta.get("tcfg", {}))
        check_config({k: old.get(k) for k in ("batch_size", "seed")},
                     {k: getattr(tcfg, k) for k in ("batch_size", "seed")})
        changed = sorted(k for k in old if k != "threads" and old[k] != dataclasses.asdict(tcfg).get(k))
        if changed and self.progress:
            print(f"resuming {ck.path.name} with changed training flags: {', '.join(changed)}", file=sys.stderr)
        theta[:] = ck.theta
        self.adam["m"][:] = ck.arrays["adam_m"]
        self.adam["v"][:] = ck.arrays["adam_v"]
        for k in list_snapshots(self.run_dir):
            if k > ck.step:  # taken after the checkpoint, like the metrics records dropped below
                remove_snapshot(self.run_dir, k)
        return dict(train=ck.train, path=str(ck.path), step=ck.step, history=self.metrics.truncate_after(ck.step),
                    snapshots=list_snapshots(self.run_dir))

    def resume(self):
        """Continue from run_dir's newest checkpoint; snapshots left by a deferred run are evaluated now unless
        this run defers too (then fit returns them in "pending")."""
        info = root_only(self.comm, self._load)
        tr = info["train"]
        self.comm.bcast(self.adam["m"])
        self.comm.bcast(self.adam["v"])
        self.adam["t"] = int(tr["adam_t"])
        self.sampler.load_state_dict(tr["sampler"])
        self.c = _Counters(**{f.name: tr[f.name] for f in dataclasses.fields(_Counters)})
        if self.task.rng is not None and tr.get("rng") is not None:
            self.task.rng.bit_generator.state = tr["rng"]
        self.history = info["history"]
        self.ckpt_path, self.ckpt_step = Path(info["path"]), info["step"]
        if info["snapshots"] and not self.defer_eval:
            recs = [run_deferred_eval(self.task, self.run_dir, k, self.comm) for k in info["snapshots"]]
            self.history += record_deferred(self.run_dir, recs, self.comm)
        evals = [r for r in self.history if r.get("kind") == "eval" and r.get("step") == self.ckpt_step
                 and (self.defer_eval or not r.get("pending"))]
        if evals:  # the checkpoint's step was already evaluated (or queued), e.g. resuming a finished run
            last = ([r for r in evals if not r.get("pending")] or evals)[-1]
            self.eval_loss, self.eval_ppl, self.eval_step = last["val_loss"], last["val_ppl"], self.ckpt_step

    # -- the loop
    def train(self):
        """Run the remaining steps -> fit's result dict."""
        self.comm.bcast(self.theta)  # ranks cannot start apart
        if not np.isfinite(self.theta).all():
            raise NumericalError("the initial parameters contain NaN or Inf; check the model's initialisation")
        if self.progress and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, initial=self.c.step, unit="step", dynamic_ncols=True, file=sys.stderr)
        stop_code = 0
        self.t_seg, self.seconds0 = time.perf_counter(), self.c.seconds
        try:
            with _Signals() as sig:
                while self.c.step < self.total:
                    n_int, n_term = self._step(sig)
                    self._after_step()
                    if n_int or n_term:
                        stop_code = 143 if n_term else 130
                        break
        finally:
            if self.bar is not None:
                self.bar.close()
        if stop_code:
            self._interrupt(stop_code)
        return self._finish()

    def _step(self, sig):
        """One optimiser step, or a skip -> (#SIGINT, #SIGTERM + should_stop) summed over ranks."""
        c, tcfg, comm = self.c, self.tcfg, self.comm
        t0 = time.perf_counter()
        step = c.step
        epoch = step // self.spe
        idx = shard(self.sampler.next(), comm.rank, comm.size)
        lr = lr_at(step, tcfg.lr, tcfg.schedule, tcfg.warmup, self.total, tcfg.min_lr) * c.lr_scale
        loss, n, stats, reason = self._loss_and_grads(idx)
        stop = int(self.should_stop is not None and bool(self.should_stop()))
        loss, n, flags = global_mean(comm, self.buf, loss, n, (sig.got[signal.SIGINT], sig.got[signal.SIGTERM] + stop))
        norm = global_norm(self.grad)  # a Numba reduction: inf/NaN come back as values, no NumPy warnings
        if math.isfinite(loss) and math.isfinite(norm):
            self._update(lr, norm, loss, stats)
        else:
            self._skip(step, epoch, loss, norm, lr, reason)
        c.step = step + 1
        dt = time.perf_counter() - t0
        c.seconds = self.seconds0 + time.perf_counter() - self.t_seg
        self.win.steps += 1
        self.win.tokens += n
        self.win.t += dt
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", ms=f"{1e3 * dt:.1f}", tok_s=f"{n / max(dt, 1e-9):.0f}",
                                 refresh=False)
        if c.step % tcfg.log_every == 0 or c.step == self.total:
            self._log_train(epoch, lr, norm)
        return flags

    def _loss_and_grads(self, idx):
        """-> (mean loss, n targets, stats, reason); a NumericalError is a NaN step with its message as reason."""
        if not len(idx):
            self.grad[:] = 0.0
            return 0.0, 0, {}, None
        try:
            loss, stats = self.task.loss_and_grads(self.theta, self.grad, self.task.make_batch(idx))
            return float(loss), int(stats.get("n", len(idx))), stats, None
        except NumericalError as e:  # e.g. a metric that is not PD: a bad step like a NaN
            self.grad[:] = math.nan
            return math.nan, len(idx), {}, one_line(e)

    def _update(self, lr, norm, loss, stats):
        t = self.tcfg
        adam_step(self.theta, self.grad, self.adam, lr, t.b1, t.b2, t.adam_eps, t.weight_decay,
                  grad_scale=clip_scale(norm, t.clip))
        self.c.consec_bad = 0
        self.win.loss += loss
        self.win.good += 1
        for k, v in stats.items():
            if k != "n" and isinstance(v, (int, float, np.number)):
                self.win.stats[k] = self.win.stats.get(k, 0.0) + float(v)

    def _skip(self, step, epoch, loss, norm, lr, reason):
        c, tcfg = self.c, self.tcfg
        c.skipped += 1
        c.consec_bad += 1
        if c.consec_bad % tcfg.backoff_after == 0:
            c.lr_scale *= tcfg.backoff
        why = f"loss {loss}, grad norm {norm}{'; ' + reason if reason else ''}"
        self._log(dict(kind="skip", step=step + 1, epoch=epoch, loss=loss, grad_norm=norm, lr=lr, skipped=c.skipped,
                       consec_bad=c.consec_bad, lr_scale=c.lr_scale, **({"reason": reason} if reason else {})))
        self._say(f"warning: step {step + 1} skipped ({why})")
        if c.consec_bad >= tcfg.max_bad_steps:
            self._log(dict(kind="stop", step=step + 1, reason="non-finite", skipped=c.skipped))
            good = self.ckpt_path if self.ckpt_path is not None else "none written yet"
            raise NumericalError(f"stopped at step {step + 1} after {c.consec_bad} non-finite steps in a row ({why}); "
                                 f"last good checkpoint: {good}; resume from it with a lower --lr or --clip")

    def _log_train(self, epoch, lr, norm):
        c, w = self.c, self.win
        g = max(w.good, 1)
        rec = dict(kind="train", step=c.step, epoch=epoch, loss=w.loss / g if w.good else math.nan, lr=lr,
                   grad_norm=norm, skipped=c.skipped, lr_scale=c.lr_scale, seconds=c.seconds,
                   ms_per_step=1e3 * w.t / w.steps, tokens_per_s=w.tokens / max(w.t, 1e-9),
                   **{k: v / g for k, v in w.stats.items()})
        self._log(rec)
        if self.bar is None:
            self._say(f"step {c.step}/{self.total} loss {rec['loss']:.4f} lr {lr:.2e} | "
                      f"{rec['ms_per_step']:.1f} ms/step | {rec['tokens_per_s']:.0f} tok/s")
        self.win = _Window()

    def _after_step(self):
        """Evaluate and checkpoint on their schedules (the last step's are _finish's)."""
        c, tcfg = self.c, self.tcfg
        if c.step >= self.total:
            return
        if (tcfg.eval_every and c.step % tcfg.eval_every == 0) or (not tcfg.eval_every and c.step % self.spe == 0):
            self._evaluate((c.step - 1) // self.spe)
            if not tcfg.checkpoint_every:
                self._checkpoint()
        if tcfg.checkpoint_every and c.step % tcfg.checkpoint_every == 0:
            self._checkpoint()

    # -- evaluation, persistence, output
    def _evaluate(self, epoch):
        """Evaluate theta now (defer_eval: snapshot it instead) and log the eval record, after on_eval."""
        c = self.c
        if self.defer_eval:
            root_only(self.comm, save_snapshot, self.run_dir, c.step, self.theta)
            ev = dict(val_loss=None, val_ppl=None, n=None, pending=True)
        else:
            ev = evaluate(self.task, self.theta, self.comm)
            vp = ev["val_ppl"]
            if vp is not None and math.isfinite(vp) and (c.best_val_ppl is None or vp < c.best_val_ppl):
                c.best_val_ppl = vp
        rec = dict(kind="eval", step=c.step, epoch=epoch, val_loss=ev.pop("val_loss"), val_ppl=ev.pop("val_ppl"),
                   best_val_ppl=c.best_val_ppl, seconds=c.seconds, **ev)
        if self.on_eval is not None and self.root:
            rec.update(self.on_eval(dict(rec), self.theta) or {})
        self._log(rec)
        self.eval_loss, self.eval_ppl, self.eval_step = rec["val_loss"], rec["val_ppl"], c.step

    def _checkpoint(self):
        c, task = self.c, self.task
        if self.ckpt_step == c.step:
            return self.ckpt_path
        meta = dict(family=task.family, cfg=task.cfg, tcfg=self.tcfg, spec=json.loads(task.spec.to_json()),
                    tokenizer=task.tokenizer_hash, extra=self.extra_json,
                    train=dict(dataclasses.asdict(c), adam_t=self.adam["t"], sampler=self.sampler.state_dict(),
                               rng=task.rng.bit_generator.state if task.rng is not None else None))
        arrays = dict(adam_m=self.adam["m"], adam_v=self.adam["v"], **self.extra_arrays)
        path = root_only(self.comm, save_checkpoint, self.run_dir, c.step, self.theta, meta, arrays,
                         keep=self.tcfg.keep_checkpoints)
        self.ckpt_path, self.ckpt_step = Path(path), c.step
        return self.ckpt_path

    def _interrupt(self, code):
        self._checkpoint()
        self._log(dict(kind="interrupt", step=self.c.step, code=code))
        if self.root:
            print(f"interrupted at step {self.c.step}; resume with {self.resume_hint or f'--resume {self.run_dir}'}",
                  file=sys.stderr)
        raise TrainingInterrupted(code, self.c.step, self.run_dir)

    def _finish(self):
        c = self.c
        if self.eval_step != c.step:
            self._evaluate(c.step // self.spe)
        path = self._checkpoint()
        pending = root_only(self.comm, list_snapshots, self.run_dir, c.step) if self.defer_eval else []
        if self.progress:
            val = f"{len(pending)} evaluations pending" if self.defer_eval else f"val ppl {self.eval_ppl}"
            print(f"done: {c.step} steps, {val}, skipped {c.skipped}, {c.seconds:.1f} s; checkpoint {path}",
                  file=sys.stderr)
        return dict(history=self.history, final_val_ppl=self.eval_ppl, val_loss=self.eval_loss,
                    best_val_ppl=c.best_val_ppl, steps_done=c.step, skipped=c.skipped, seconds=c.seconds,
                    checkpoint=str(path), lr_scale=c.lr_scale, pending=pending)

    def _log(self, rec):
        self.history.append(self.metrics.write(rec))

    def _say(self, msg):
        if not self.progress:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)
