"""Driver for subprocess training tests (signals, MPI). Run with or without mpiexec.

    python tests/mpi_fit_check.py OUT one [--steps N --batch-size B --dtype D --delay S --resume]
        one toy training into OUT/run; every rank saves OUT/one_rank<r>.npz (theta, skipped, val ppl)
    mpiexec -n 2 python tests/mpi_fit_check.py OUT suite
        the scenarios of SCENARIOS, each saved as OUT/<name>_rank<r>.npz
"""
import argparse
import os
import signal
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy_task import make_toy_task  # noqa: E402

from geolm.training.distributed import get_comm  # noqa: E402
from geolm.training.train import TrainConfig, TrainingInterrupted, fit  # noqa: E402

# name: (toy task kwargs, TrainConfig kwargs, rank-0 call index at which rank 0 SIGINTs itself or None)
SCENARIOS = {
    "even64": (dict(dtype="float64"), dict(batch_size=16), None),
    "uneven64": (dict(dtype="float64"), dict(batch_size=5), None),
    "tiny64": (dict(dtype="float64"), dict(batch_size=1), None),  # rank 1 gets empty shards
    "nan64": (dict(dtype="float64", nan_at=(3,), ranks=(1,)), dict(batch_size=8), None),
    "raise64": (dict(dtype="float64", raise_at=(5,), ranks=(1,)), dict(batch_size=7), None),
    "evalraise64": (dict(dtype="float64", eval_raise_at=(0,), ranks=(1,)), dict(batch_size=8), None),
    "even32": (dict(dtype="float32"), dict(batch_size=16), None),
    "resume64": (dict(dtype="float64"), dict(batch_size=6), 4),
}


def tcfg_for(**kw):
    base = dict(steps=12, lr=0.05, schedule="cosine", warmup=2, eval_every=6, checkpoint_every=0, log_every=4,
                threads=1, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def run(out, name, task_kw, tcfg, sigint_at=None, resume=False, progress=False):
    comm = get_comm()
    task, theta = make_toy_task(**task_kw)
    if sigint_at is not None:
        inner = task.loss_and_grads

        def loss_and_grads(th, g, b):
            if comm.rank == 0 and task.calls["n"] == sigint_at:
                os.kill(os.getpid(), signal.SIGINT)
            return inner(th, g, b)
        task.loss_and_grads = loss_and_grads
    run_dir = Path(out) / f"run_{name}"
    try:
        res = fit(task, theta, tcfg, run_dir, resume=resume, progress=progress)
    except TrainingInterrupted as e:
        if sigint_at is None:
            raise
        np.save(Path(out) / f"{name}_interrupted_rank{comm.rank}.npy", np.array([e.step, e.code]))
        task, theta = make_toy_task(**task_kw)
        res = fit(task, theta, tcfg, run_dir, resume=True, progress=progress)
    np.savez(Path(out) / f"{name}_rank{comm.rank}.npz", theta=theta, skipped=res["skipped"],
             val_ppl=res["final_val_ppl"], steps=res["steps_done"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("mode", choices=("one", "suite"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    if a.mode == "one":
        run(a.out, "one", dict(dtype=a.dtype, delay=a.delay), tcfg_for(steps=a.steps, batch_size=a.batch_size,
                                                                      log_every=1), resume=a.resume, progress=True)
        return
    for name, (task_kw, t_kw, sigint_at) in SCENARIOS.items():
        run(a.out, name, task_kw, tcfg_for(**t_kw), sigint_at=sigint_at)


if __name__ == "__main__":
    main()
