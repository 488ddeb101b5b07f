"""Models trained in parallel forked processes, their queued evaluations handed to whichever process is free.

    entries, done = run_pool(context, bins, train_bin, run_job, n_workers, where)

The parent starts n_workers forked processes and sends worker i the bin bins[i] (a list of model names, trained in
order); a finished bin answers (entries, deferred jobs, interrupted exit code or None) and its deferred jobs go to
a FIFO queue in the parent, which hands each to the next idle worker. The work context (the big arrays) reaches
the workers as an argument of the worker function: with the fork start method a child inherits it, nothing is
pickled; the pipes carry only bins, job tuples and results. Workers call train_bin(context, bin, stop) and
run_job(context, job) with an explicit stop event (fit's should_stop), never module state.

Signals: SIGINT/SIGTERM to the parent set the stop event (training workers checkpoint and stop after their current
step), drop the queued jobs and let running ones finish; then TrainingInterrupted (exit 130 / 143) with the resume
line. Workers ignore both signals outside fit (fit handles them itself), so Ctrl-C prints no worker traceback. A
worker that dies (e.g. out of memory) ends the run with a one-line GeolmError; an exception in a worker stops the
others the same way and is raised in the parent.
"""
import multiprocessing
import signal
import sys
from collections import deque
from multiprocessing.connection import wait

from ..core.errors import GeolmError
from ..training.train import TrainingInterrupted

POLL = 0.2  # seconds between checks of the signal flag while waiting for workers


def balanced_bins(need, jobs, cost):
    """Split models into `jobs` lists, each trained in order by one process, minimising the largest estimated total
    (cost: {name: relative cost}; exact over subsets for 2 processes, longest-first greedy otherwise)."""
    if jobs == 2 and len(need) <= 16:
        total = sum(cost[n] for n in need)
        best = None
        for mask in range(1 << (len(need) - 1)):  # the last model stays in the second bin: halves the search
            a = sum(cost[n] for i, n in enumerate(need) if mask >> i & 1)
            if best is None or max(a, total - a) < best[0]:
                best = (max(a, total - a), mask)
        bins = [[n for i, n in enumerate(need) if best[1] >> i & 1],
                [n for i, n in enumerate(need) if not best[1] >> i & 1]]
    else:
        bins = [[] for _ in range(jobs)]
        for n in sorted(need, key=lambda n: -cost[n]):
            min(bins, key=lambda b: sum(cost[m] for m in b)).append(n)
    return [sorted(b, key=lambda n: -cost[n]) for b in bins if b]


def _worker(conn, context, train_bin, run_job, stop):
    """A pool process: answer ("ok", result) or ("error", exception) to each ("train", bin) / ("job", job) until
    None or the parent's end of the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        kind, arg = msg
        try:
            out = ("ok", train_bin(context, arg, stop) if kind == "train" else run_job(context, arg))
        except BaseException as e:  # noqa: BLE001 -- re-raised in the parent
            out = ("error", e)
        try:
            conn.send(out)
        except Exception as e:  # noqa: BLE001 -- an unpicklable result or exception
            conn.send(("error", GeolmError(f"a model process could not return its result ({type(e).__name__}: {e})")))


class _Pool:
    """The parent's side: workers, their pipes, what each is doing, the job queue and the signal flag."""

    def __init__(self, context, train_bin, run_job, n_workers):
        self.mp = multiprocessing.get_context("fork")
        self.stop = self.mp.Event()
        self.got = {}
        self.workers, self.busy, self.queue = [], {}, deque()
        self.error = None
        self.args = (context, train_bin, run_job, self.stop)
        self.n_workers = n_workers

    def start(self):
        for _ in range(self.n_workers):
            mine, theirs = self.mp.Pipe()
            p = self.mp.Process(target=_worker, args=(theirs, *self.args), daemon=True)
            p.start()
            theirs.close()
            self.workers.append((p, mine))

    def send(self, i, kind, arg):
        try:
            self.workers[i][1].send((kind, arg))
        except OSError:  # the process is gone: _collect reports it
            pass
        self.busy[i] = kind

    def halt(self):
        """Stop training workers after their current step and drop the queued jobs."""
        self.stop.set()
        self.queue.clear()

    def close(self):
        self.stop.set()  # nothing trains any more; a worker still in fit (the parent failed) stops after a step
        for p, conn in self.workers:
            try:
                conn.send(None)
            except OSError:
                pass
        for p, conn in self.workers:
            p.join()
            conn.close()


def run_pool(context, bins, train_bin, run_job, n_workers, where):
    """Train `bins` in n_workers >= len(bins) forked processes, queueing each bin's deferred jobs as it finishes ->
    ({name: entry} of the bins, [run_job results]). `where` (the checkpoint directory) goes into the resume line."""
    pool = _Pool(context, train_bin, run_job, max(n_workers, len(bins)))
    got = pool.got
    old = {s: signal.signal(s, lambda signum, frame: got.setdefault("signum", signum))
           for s in (signal.SIGINT, signal.SIGTERM)}
    entries, done = {}, []
    try:
        pool.start()
        for i, b in enumerate(bins):
            pool.send(i, "train", b)
        while pool.busy or (pool.queue and "signum" not in got and pool.error is None):
            if "signum" in got or pool.error is not None:
                pool.halt()
            for i in range(len(pool.workers)):
                if i not in pool.busy and pool.queue:
                    pool.send(i, "job", pool.queue.popleft())
            _collect(pool, entries, done)
    finally:
        pool.close()
        for s, h in old.items():
            signal.signal(s, h)
    if pool.error is not None:
        raise pool.error
    if "signum" in got:
        sys.stderr.write(f"interrupted; checkpoints and evaluation snapshots are in {where}; resume with the same "
                         f"command plus --resume\n")
        raise TrainingInterrupted(143 if got["signum"] == signal.SIGTERM else 130, 0, where)
    return entries, done


def _collect(pool, entries, done):
    """Wait up to POLL seconds for answers or dead workers and take them in."""
    waiting = {pool.workers[i][1]: i for i in pool.busy}
    waiting.update({pool.workers[i][0].sentinel: i for i in pool.busy})
    for ready in wait(list(waiting), timeout=POLL):
        i = waiting[ready]
        if i not in pool.busy:
            continue
        p, conn = pool.workers[i]
        try:
            status, res = conn.recv()
        except (EOFError, OSError):  # the process is gone without an answer
            del pool.busy[i]
            if "signum" not in pool.got and pool.error is None:
                pool.error = GeolmError(f"a model process died (exit code {p.exitcode}); free memory or pass "
                                        f"--jobs 1, then rerun with --resume")
            continue
        kind = pool.busy.pop(i)
        if status == "error":
            pool.error = pool.error or res
        elif kind == "train":
            bin_entries, deferred, intr = res
            entries.update(bin_entries)
            if intr is not None:
                pool.got.setdefault("signum", signal.SIGTERM if intr == 143 else signal.SIGINT)
            elif "signum" not in pool.got and pool.error is None:
                pool.queue.extend(deferred)
        else:
            done.append(res)
