"""Data parallelism over MPI (mpi4py), and a one-process stand-in with the same small interface.

Every rank holds the whole model. A global batch of B indices is split into `size` contiguous shards
(np.array_split: uneven shards allowed, an empty shard is fine). Rank r computes the mean loss L_r and
gradient g_r over its n_r targets; the exact global mean over N = sum_r n_r targets is

    g = sum_r n_r g_r / N,    L = sum_r n_r L_r / N,

obtained with ONE in-place Allreduce(SUM) of the packed buffer [n_r g_r, n_r L_r, n_r, flags...].
Every rank then sees the same g and takes the same optimiser step (guard and clipping included).

`import geolm` never imports mpi4py: `get_comm()` imports it only when the process was started by an MPI
launcher (PMI_SIZE / OMPI_COMM_WORLD_SIZE / PMIX_RANK in the environment) and the world has > 1 rank.
GEOLM_MPI=0 forces one process; GEOLM_MPI=1 forces trying mpi4py.
"""
import contextlib
import os

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from ..core import errors
from ..core.jit import set_threads

_LAUNCHER_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


class SerialComm:
    """One process: rank 0 of 1; every collective is the identity."""

    rank = 0
    size = 1
    local_size = 1
    is_mpi = False

    @property
    def is_root(self):
        return True

    def allreduce_sum(self, buf):
        """Sum a contiguous array over ranks, in place; returns buf."""
        return buf

    def bcast(self, buf, root=0):
        """Broadcast a contiguous array from root, in place; returns buf."""
        return buf

    def bcast_obj(self, obj, root=0):
        return obj

    def allreduce_scalar(self, x, op="sum"):
        return x

    def barrier(self):
        pass


class MPIComm(SerialComm):
    """mpi4py COMM_WORLD behind the SerialComm interface (buffer-based, no copies for arrays)."""

    is_mpi = True

    def __init__(self, comm):
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = node.Get_size()
        node.Free()

    @property
    def is_root(self):
        return self.rank == 0

    def allreduce_sum(self, buf):
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        return buf

    def bcast(self, buf, root=0):
        self.comm.Bcast(buf, root=root)
        return buf

    def bcast_obj(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def allreduce_scalar(self, x, op="sum"):
        ops = {"sum": self._MPI.SUM, "max": self._MPI.MAX, "min": self._MPI.MIN}
        return self.comm.allreduce(x, op=ops[op])

    def barrier(self):
        self.comm.Barrier()


_COMM = None


def launched_by_mpi():
    """True when an MPI launcher started this process (or GEOLM_MPI=1)."""
    flag = os.environ.get("GEOLM_MPI", "")
    if flag in ("0", "1"):
        return flag == "1"
    return any(v in os.environ for v in _LAUNCHER_VARS)


def get_comm():
    """The process-wide communicator: MPIComm under mpiexec with > 1 rank, else SerialComm."""
    global _COMM
    if _COMM is None:
        _COMM = SerialComm()
        if launched_by_mpi():
            try:
                from mpi4py import MPI
            except ImportError:
                MPI = None
            if MPI is not None and MPI.COMM_WORLD.Get_size() > 1:
                _COMM = MPIComm(MPI.COMM_WORLD)
    return _COMM


def shard(idx, rank, size):
    """Rank's contiguous share of a global index batch (np.array_split: sizes differ by at most 1)."""
    if size == 1:
        return idx
    return np.array_split(np.asarray(idx), size)[rank]


def global_mean(comm, buf, loss, n, flags=()):
    """Turn each rank's mean over its n targets into the exact global mean, with ONE in-place Allreduce.

    buf [P + 2 + len(flags)]: buf[:P] holds this rank's mean gradient (a view the task filled); the tail is
    scratch. Afterwards buf[:P] is sum_r n_r g_r / N on every rank. Returns (mean loss, N, summed flags).
    A NaN/Inf on any rank makes the result non-finite on every rank, so all ranks skip together.
    """
    k = len(flags)
    P = buf.shape[0] - 2 - k
    if comm.size == 1:
        return float(loss), int(n), tuple(int(f) for f in flags)
    grad = buf[:P]
    grad *= n  # [P]: n_r g_r
    buf[P:] = (loss * n, n, *flags)
    comm.allreduce_sum(buf)  # [P+2+k]
    N = int(buf[P + 1])
    grad *= 1.0 / max(N, 1)
    return float(buf[P]) / max(N, 1), N, tuple(int(f) for f in buf[P + 2:])


def root_only(comm, fn, *args, **kwargs):
    """Run fn on rank 0 only and broadcast its (small, picklable) result to every rank.

    A GeolmError raised on rank 0 is raised again, with the same one-line message, on every rank, so a bad
    input stops all ranks together instead of leaving them waiting in a collective.
    """
    res, err = None, None
    if comm.rank == 0:
        try:
            res = fn(*args, **kwargs)
        except errors.GeolmError as e:
            if comm.size == 1:
                raise
            err = (type(e).__name__, str(e))
        except Exception as e:  # noqa: BLE001 - forwarded so the other ranks do not hang
            if comm.size == 1:
                raise
            err = ("RuntimeError", f"rank 0 failed: {type(e).__name__}: {e}")
            res = e
    if comm.size > 1:
        res_b, err = comm.bcast_obj((None if err else res, err))
        if err is None:
            res = res_b
    if err is not None:
        if comm.rank == 0 and isinstance(res, Exception):
            raise res
        cls = getattr(errors, err[0], RuntimeError)
        raise cls(err[1])
    return res


def default_threads(comm=None):
    """cores available to this process // ranks on this node (at least 1)."""
    comm = comm or get_comm()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = max(comm.local_size, int(os.environ.get("MPI_LOCALNRANKS", "1") or 1)) if comm.is_mpi else 1
    return max(1, cores // local)


def configure_threads(n=0, comm=None):
    """Set BLAS (threadpoolctl) and Numba threads to n, or to cores // ranks-on-this-node when n == 0.

    Returns the thread count used. The limit stays until the next call (use `thread_limit` to restore).
    mpiexec -n 2 on 2 cores thus runs 1 thread per rank, without oversubscription.
    """
    global _LIMITER
    n = int(n) if n and n > 0 else default_threads(comm)
    _LIMITER = threadpool_limits(limits=n)  # kept alive: the limit stays until the next call
    set_threads(n)
    return n


@contextlib.contextmanager
def thread_limit(n=0, comm=None):
    """Context manager: configure_threads(n) inside, the previous BLAS and Numba thread counts restored after."""
    n = int(n) if n and n > 0 else default_threads(comm)
    old = numba.get_num_threads()
    with threadpool_limits(limits=n):
        set_threads(n)
        try:
            yield n
        finally:
            set_threads(old)


_LIMITER = None
