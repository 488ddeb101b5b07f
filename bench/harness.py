"""Shared benchmark helpers: timing, a measured matmul peak, an environment header, tables, JSON.

Every bench/bench_<topic>.py builds its inputs once, validates every contender against the baseline
output before timing, discards the compiling call (warm-up), and reports the median, speed-ups against a
same-process baseline and GFLOP/s as a fraction of the float32 matmul peak measured here and now
(nanoGPT bench.py's MFU with a measured denominator). Timings on a shared machine are noisy: the IQR
is reported beside the median.
"""
import json
import os
import platform
import sys
import time

import geolm  # noqa: F401  (first: sets OPENBLAS_THREAD_TIMEOUT before NumPy loads OpenBLAS)
import numpy as np


class Timing(dict):
    """dict(median, iqr, times) in seconds; t[0] / t[1] / t[2] also give median / iqr / times."""

    def __getitem__(self, key):
        if isinstance(key, int):
            key = ("median", "iqr", "times")[key]
        return dict.__getitem__(self, key)


def measure(fn, warmup=1, repeat=7):
    """Time fn() `repeat` times after `warmup` untimed calls (these include any JIT compile).

    -> Timing(median=s, iqr=s, times=[s, ...])."""
    repeat = 7 if repeat is None else repeat
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return Timing(median=float(med), iqr=float(q3 - q1), times=times)


def matmul_peak(dtype=np.float32, n=1024, repeat=5, clock=time.perf_counter):
    """GFLOP/s of an n x n x n GEMM (2 n^3 FLOPs) measured now, best of `repeat` (the denominator of % peak).
    clock=time.process_time gives GFLOP per CPU-second of all threads (robust to time-slicing)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    np.matmul(a, b, out=c)
    best = float("inf")
    for _ in range(repeat):
        t = clock()
        np.matmul(a, b, out=c)
        best = min(best, clock() - t)
    return 2.0 * n ** 3 / best / 1e9


def cpu_model():
    """'<model name> (family F model M)' from /proc/cpuinfo, or platform.processor() where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            first = f.read().split("\n\n")[0]  # the first processor's block
        info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first.splitlines() if ":" in line)}
        return f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model {info.get('model', '?')})"
    except OSError:
        return platform.processor() or "?"


def blas_env():
    """The OPENBLAS_* / MKL_* / OMP_* / NUMBA_NUM_THREADS settings in the environment: 'KEY=value ...' or
    'none set'."""
    keys = sorted(k for k in os.environ if k.startswith(("OPENBLAS_", "MKL_", "OMP_", "NUMBA_NUM_THREADS")))
    return " ".join(f"{k}={os.environ[k]}" for k in keys) or "none set"


def env_header():
    """One block of text: python/numpy/scipy/numba versions, CPU, BLAS (threadpoolctl) and its environment
    variables (OPENBLAS_CORETYPE picks the GEMM kernels), threads, cores."""
    lines = [f"python {platform.python_version()} on {platform.machine()} ({platform.system()}), "
             f"numpy {np.__version__}"]
    vers = []
    for mod in ("scipy", "numba"):
        try:
            vers.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            vers.append(f"{mod} -")
    lines[0] += ", " + ", ".join(vers)
    lines.append(f"cpu: {cpu_model()}; BLAS/thread environment: {blas_env()}")
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (load SciPy's BLAS so it is listed)
        from threadpoolctl import threadpool_info
        for info in threadpool_info():
            lines.append(f"{info.get('user_api')}: {info.get('internal_api')} {info.get('version')} "
                         f"({info.get('architecture', '?')}), {info.get('num_threads')} threads, "
                         f"{os.path.basename(info.get('filepath', ''))}")
    except ImportError:
        lines.append("BLAS: threadpoolctl not installed")
    try:
        import numba
        nthreads = f"numba threads {numba.get_num_threads()} ({numba.threading_layer() if _numba_ran() else 'layer n/a'})"
    except ImportError:
        nthreads = "numba -"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f", load average {os.getloadavg()[0]:.2f} (other processes share the cores)" if hasattr(
        os, "getloadavg") else ""
    lines.append(f"cores available {cores} (cpu_count {os.cpu_count()}), {nthreads}{load}")
    return "\n".join(lines)


environment_header = env_header


def _numba_ran():
    try:
        import numba
        numba.threading_layer()
        return True
    except (ValueError, ImportError):
        return False


def _fmt(v):
    if isinstance(v, float):
        if v == 0.0:
            return "0"
        a = abs(v)
        if a >= 1e4 or a < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4g}" if a < 100 else f"{v:.1f}"
    return str(v)


def report(rows, columns=None):
    """Print rows (list of dicts) as a fixed-width table; columns = list of keys (default: all, in order)."""
    if not rows:
        return
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(columns, widths))))
    for row in cells:
        print("  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(row, widths))))
    sys.stdout.flush()


def common_args(parser):
    """Add --quick (tiny shapes, seconds; the smoke test uses it) and --json PATH."""
    parser.add_argument("--quick", action="store_true", help="tiny shapes, runs in seconds (smoke test)")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON to PATH")
    parser.add_argument("--repeat", type=int, default=None, help="timed repetitions (default 7; quick 2)")
    return parser


def write_json(path, payload):
    """Write payload (plus the environment header) as JSON to path; path may be None (no-op) or an
    argparse namespace from common_args (its .json is used)."""
    if hasattr(path, "json"):
        path = path.json
    if not path:
        return
    payload = dict(payload, env=env_header())
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    os.replace(tmp, path)


def max_rel_err(a, b):
    """max|a - b| / max|b| in float64 (validation of a contender against the baseline)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.abs(a - b).max(initial=0.0) / max(np.abs(b).max(initial=0.0), 1e-30))


def validate(name, outs, ref_outs, tol):
    """Raise AssertionError unless each array of outs matches ref_outs to max rel err tol; -> worst error."""
    worst = 0.0
    for i, (a, b) in enumerate(zip(outs, ref_outs)):
        e = max_rel_err(a, b)
        worst = max(worst, e)
        if not e <= tol:
            raise AssertionError(f"{name}: output {i} differs from the baseline by rel err {e:.2e} > {tol:.0e}")
    return worst


def norm_rel_err(a, b):
    """||a - b|| / ||b|| (Frobenius, float64); 0 when both are zero (validation of whole arrays)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    nb = float(np.linalg.norm(b))
    d = float(np.linalg.norm(a - b))
    return d / nb if nb > 0 else d


def _proc_status_kb(key):
    """A 'VmRSS' / 'VmHWM' line of /proc/self/status in kB, or None where there is no /proc."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes():
    """Resident set size of this process now (Linux /proc), or None."""
    kb = _proc_status_kb("VmRSS")
    return None if kb is None else kb * 1024


def reset_peak_rss():
    """Reset the process's peak resident set (VmHWM) to its current RSS (Linux: /proc/self/clear_refs '5');
    -> True if reset. getrusage's ru_maxrss only grows, so a peak of one phase needs this (or a fresh process)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes():
    """Peak resident set size since the process started or the last reset_peak_rss (VmHWM), in bytes; falls back
    to getrusage's ru_maxrss (never reset) where /proc is missing."""
    kb = _proc_status_kb("VmHWM")
    if kb is None:
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return kb * 1024


def trim_heap():
    """Return the C heap's free memory to the OS (glibc malloc_trim), so the RSS measured next counts live memory
    rather than what an earlier phase freed; -> True if trimmed (False off glibc)."""
    try:
        import ctypes
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0) or True)
    except (OSError, AttributeError):
        return False
