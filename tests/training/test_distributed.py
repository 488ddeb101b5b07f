import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info

from geolm.training import distributed
from geolm.training.distributed import SerialComm, configure_threads, get_comm, root_only, shard, thread_limit
from geolm.core.errors import ConfigError
from geolm.training.train import fit

HERE = Path(__file__).resolve().parents[1]  # tests/: the shared helpers
sys.path.insert(0, str(HERE))
from mpi_fit_check import SCENARIOS, tcfg_for  # noqa: E402
from toy_task import make_toy_task  # noqa: E402


def test_shard_is_disjoint_contiguous_and_covers():
    idx = np.arange(10, 17)
    for size in (1, 2, 3, 7, 9):
        parts = [shard(idx, r, size) for r in range(size)]
        assert np.array_equal(np.concatenate(parts), idx)
        lens = [len(p) for p in parts]
        assert max(lens) - min(lens) <= 1


def test_serial_comm_collectives_are_identity():
    c = SerialComm()
    a = np.arange(5.0)
    assert c.allreduce_sum(a) is a and np.array_equal(a, np.arange(5.0))
    assert c.bcast(a) is a
    assert c.bcast_obj({"x": 1}) == {"x": 1}
    assert c.allreduce_scalar(3.5, "max") == 3.5
    assert (c.rank, c.size, c.is_root) == (0, 1, True)
    c.barrier()


def test_get_comm_without_launcher_is_serial(monkeypatch):
    for v in distributed._LAUNCHER_VARS + ("GEOLM_MPI",):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(distributed, "_COMM", None)
    assert not distributed.launched_by_mpi()
    assert isinstance(get_comm(), SerialComm) and get_comm() is get_comm()
    monkeypatch.setenv("GEOLM_MPI", "0")
    monkeypatch.setenv("PMI_SIZE", "4")
    assert not distributed.launched_by_mpi()


def test_import_geolm_does_not_import_mpi4py():
    code = ("import sys, geolm, geolm.training.train, geolm.training.checkpoint, geolm.training.distributed; "
            "geolm.training.distributed.get_comm(); assert 'mpi4py' not in sys.modules, 'mpi4py imported'")
    env = {k: v for k, v in os.environ.items() if k not in distributed._LAUNCHER_VARS}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr


def test_root_only_returns_and_reraises():
    c = SerialComm()
    assert root_only(c, lambda x: x + 1, 1) == 2
    with pytest.raises(ConfigError, match="bad"):
        root_only(c, lambda: (_ for _ in ()).throw(ConfigError("bad")))


def test_configure_threads_sets_blas_and_numba():
    old = numba.get_num_threads()
    try:
        assert configure_threads(1, SerialComm()) == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
        assert numba.get_num_threads() == 1
        auto = configure_threads(0, SerialComm())
        assert auto == max(1, len(os.sched_getaffinity(0)))
        with thread_limit(1, SerialComm()) as n:
            assert n == 1 and numba.get_num_threads() == 1
        assert numba.get_num_threads() == auto
    finally:
        configure_threads(old, SerialComm())


# ---------------------------------------------------------------------------------------------------------------
# 2 ranks vs 1 process

def _mpiexec():
    exe = shutil.which("mpiexec")
    if exe is None or importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpiexec or mpi4py not installed (pip install -e '.[mpi]')")
    return exe


@pytest.fixture(scope="module")
def mpi_suite(tmp_path_factory):
    exe = _mpiexec()
    out = tmp_path_factory.mktemp("mpi")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run([exe, "-n", "2", sys.executable, str(HERE / "mpi_fit_check.py"), str(out), "suite"],
                       capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r.stderr


def _reference(tmp_path, name):
    task_kw, t_kw, _ = SCENARIOS[name]
    task_kw = {k: v for k, v in task_kw.items() if k != "ranks"}  # one process: inject on the only rank
    task, theta = make_toy_task(**task_kw)
    res = fit(task, theta, tcfg_for(**t_kw), tmp_path / name, progress=False, comm=SerialComm())
    return theta, res


@pytest.mark.parametrize("name,tol", [("even64", 1e-10), ("uneven64", 1e-10), ("tiny64", 1e-10),
                                      ("nan64", 1e-10), ("raise64", 1e-10), ("evalraise64", 1e-10), ("even32", 1e-5),
                                      ("resume64", 1e-10)])
def test_two_ranks_match_one_process(mpi_suite, tmp_path, name, tol):
    out, _ = mpi_suite
    ref, res = _reference(tmp_path, name)
    r0, r1 = np.load(out / f"{name}_rank0.npz"), np.load(out / f"{name}_rank1.npz")
    assert r0["theta"].dtype == ref.dtype
    assert np.array_equal(r0["theta"], r1["theta"]), "ranks diverged"
    rel = np.abs(r0["theta"].astype(np.float64) - ref).max() / np.abs(ref).max()
    assert rel <= tol, (name, rel)
    assert int(r0["skipped"]) == int(r1["skipped"]) == res["skipped"]
    assert int(r0["steps"]) == res["steps_done"] == 12
    assert abs(float(r0["val_ppl"]) - res["final_val_ppl"]) <= 1e-4 * res["final_val_ppl"]


def test_nan_on_one_rank_skips_on_every_rank(mpi_suite):
    out, _ = mpi_suite
    assert int(np.load(out / "nan64_rank0.npz")["skipped"]) == 1
    assert int(np.load(out / "nan64_rank1.npz")["skipped"]) == 1
    recs = (out / "run_nan64" / "metrics.jsonl").read_text()
    assert '"kind": "skip"' in recs and '"step": 4' in recs


def test_numerical_error_on_one_rank_is_skipped_by_all(mpi_suite):
    out, _ = mpi_suite
    assert [int(np.load(out / f"raise64_rank{r}.npz")["skipped"]) for r in (0, 1)] == [1, 1]


def test_numerical_error_in_evaluation_on_one_rank_reaches_rank0s_record(mpi_suite):
    out, _ = mpi_suite
    recs = [json.loads(x) for x in (out / "run_evalraise64" / "metrics.jsonl").read_text().splitlines()]
    first = [r for r in recs if r["kind"] == "eval"][0]
    assert first["val_ppl"] == "nan" and "not positive definite in evaluation" in first["reason"]


def test_sigint_on_rank0_stops_every_rank_at_the_same_step(mpi_suite):
    out, stderr = mpi_suite
    a = np.load(out / "resume64_interrupted_rank0.npy")
    b = np.load(out / "resume64_interrupted_rank1.npy")
    assert np.array_equal(a, b) and a[1] == 130
    assert stderr.count(f"interrupted at step {a[0]}; resume with --resume") == 1  # rank 0 only
    assert not list((out / "run_even64").glob("*.tmp"))
