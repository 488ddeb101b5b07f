import os
import signal
import threading

import pytest

from geolm.apps.model_pool import balanced_bins, run_pool
from geolm.core.errors import GeolmError
from geolm.training.train import TrainingInterrupted


class Context:
    """A work context that cannot be pickled (a lock): it must reach the workers through fork only."""

    def __init__(self, scale):
        self.scale = scale
        self.lock = threading.Lock()
        self.pid = os.getpid()


def train_bin(ctx, names, stop):
    assert os.getpid() != ctx.pid  # in a worker
    return {n: len(n) * ctx.scale for n in names}, [("eval", n) for n in names], None


def run_job(ctx, job):
    return job[1], os.getpid(), ctx.scale


def test_bins_train_and_queued_jobs_run_in_workers(tmp_path):
    entries, done = run_pool(Context(10), [["ab", "c"], ["defg"]], train_bin, run_job, 2, tmp_path)
    assert entries == {"ab": 20, "c": 10, "defg": 40}
    assert sorted(d[0] for d in done) == ["ab", "c", "defg"]
    assert all(d[1] != os.getpid() and d[2] == 10 for d in done)


def failing_job(ctx, job):
    raise ValueError(f"bad job {job[1]}")


def test_an_exception_in_a_worker_is_raised_in_the_parent(tmp_path):
    with pytest.raises(ValueError, match="bad job"):
        run_pool(Context(1), [["a"], ["b"]], train_bin, failing_job, 2, tmp_path)


def dying_bin(ctx, names, stop):
    os._exit(9)


def test_a_dead_worker_is_one_geolm_error(tmp_path):
    with pytest.raises(GeolmError, match="a model process died"):
        run_pool(Context(1), [["a"]], dying_bin, run_job, 1, tmp_path)


def interrupted_bin(ctx, names, stop):
    if names == ["slow"]:
        assert stop.wait(30)  # the parent sets stop once the other bin reports its interrupt
        return {}, [], 143
    return {}, [], 130


def test_an_interrupted_bin_stops_the_others(tmp_path, capsys):
    with pytest.raises(TrainingInterrupted) as e:
        run_pool(Context(1), [["fast"], ["slow"]], interrupted_bin, run_job, 2, tmp_path)
    assert e.value.code == 130
    assert "resume with the same command plus --resume" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the parent's handlers are restored


def test_balanced_bins():
    cost = {"a": 5, "b": 4, "c": 3, "d": 3, "e": 1}
    bins = balanced_bins(list(cost), 2, cost)
    assert sorted(sum(cost[n] for n in b) for b in bins) == [8, 8]
    assert all(b == sorted(b, key=lambda n: -cost[n]) for b in bins)  # longest first within a bin
    assert balanced_bins(["a"], 3, cost) == [["a"]]
