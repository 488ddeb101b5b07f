"""Validation: the evaluation pass fit runs, and deferred (queued) evaluations of parameter snapshots.

    evaluate(task, theta, comm)  ->  {val_loss, val_ppl, n[, reason]}
        val_loss = sum_b nll_b / sum_b n_b over task.val_batches() (batch b on rank b % size, one Allreduce),
        val_ppl = geolm.ops.losses.perplexity. No targets -> None, None. A NumericalError from task.eval_nll on
        any rank -> NaN, NaN and its one-line reason on every rank.
Deferred evaluation (fit(..., defer_eval=True)): at each evaluation point fit saves theta as a snapshot
(geolm.training.checkpoint.save_snapshot) and logs a `pending` eval record instead of evaluating. Later, on any
process:
    rec = run_deferred_eval(task, run_dir, step)    the completed record of one snapshot (writes nothing)
    record_deferred(run_dir, [rec, ...])            appends them to metrics.jsonl in step order, deletes the snapshots
Snapshots still on disk when a run is resumed are evaluated by fit (inline mode) or returned again in its
"pending" list (deferred mode).
"""
import math
import time
from pathlib import Path

import numpy as np

from ..core.errors import NumericalError
from ..ops.losses import perplexity
from .checkpoint import load_snapshot, remove_snapshot
from .distributed import get_comm, root_only
from .metrics import MetricsLog


def one_line(err):
    """An exception's message on one line (for a record's "reason")."""
    return " ".join(str(err).split())


def evaluate(task, theta, comm=None, batches=None):
    """Validation NLL of theta over `batches` (default task.val_batches()) -> dict(val_loss, val_ppl, n[, reason])."""
    comm = comm or get_comm()
    acc = np.zeros(3, dtype=np.float64)  # [nll sum, n, ranks that failed]
    reason = None
    try:
        for i, b in enumerate(task.val_batches() if batches is None else batches):
            if i % comm.size == comm.rank:
                s, n = task.eval_nll(theta, b)
                acc[0] += float(s)
                acc[1] += int(n)
    except NumericalError as e:  # e.g. a metric that is not positive definite
        reason, acc[2] = one_line(e), 1.0
    comm.allreduce_sum(acc)
    n = int(acc[1])
    if acc[2]:
        src = int(comm.allreduce_scalar(comm.rank if reason is not None else comm.size, "min"))
        return dict(val_loss=math.nan, val_ppl=math.nan, n=n, reason=comm.bcast_obj(reason, root=src))
    if n == 0:
        return dict(val_loss=None, val_ppl=None, n=0)
    return dict(val_loss=float(acc[0] / acc[1]), val_ppl=perplexity(float(acc[0]), n), n=n)


def run_deferred_eval(task, run_dir, step, comm=None):
    """Evaluate the snapshot of `step` in run_dir -> its completed eval record (kind "eval", step, val_loss,
    val_ppl, n, eval_seconds, deferred=True); writes nothing (see record_deferred)."""
    comm = comm or get_comm()
    t0 = time.perf_counter()
    theta = root_only(comm, load_snapshot, run_dir, step)
    rec = evaluate(task, theta, comm)
    return dict(kind="eval", step=int(step), **rec, eval_seconds=time.perf_counter() - t0, deferred=True)


def _finite(x):
    return isinstance(x, float) and math.isfinite(x)


def _record(run_dir, records):
    log = MetricsLog(run_dir)
    old = [r for r in log.read() if r.get("kind") == "eval"]
    pending = {r["step"]: r for r in old if r.get("pending")}
    done = [(r["step"], r.get("val_ppl")) for r in old if not r.get("pending")]
    out = []
    for rec in sorted(records, key=lambda r: r["step"]):
        full = dict(pending.get(rec["step"], {}), **rec)  # epoch, training seconds, on_eval fields of the pending one
        full.pop("pending", None)
        done.append((rec["step"], rec.get("val_ppl")))
        seen = [v for s, v in done if s <= rec["step"] and _finite(v)]
        full["best_val_ppl"] = min(seen) if seen else None
        out.append(log.write(full))
        remove_snapshot(run_dir, rec["step"])
    return out


def record_deferred(run_dir, records, comm=None):
    """Append completed deferred eval records to run_dir/metrics.jsonl in step order (rank 0), each merged into
    its pending record and given the best finite val_ppl up to its step; delete their snapshots.
    -> the records as written (on every rank)."""
    return root_only(comm or get_comm(), _record, Path(run_dir), list(records))
