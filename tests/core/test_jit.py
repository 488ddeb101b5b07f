"""House rules that a grep can check: one Numba config, no fastmath, no frameworks, a quick import."""
import re
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "geolm"
TESTS = Path(__file__).resolve().parent


def _sources(*dirs):
    for d in dirs:
        yield from sorted(d.rglob("*.py"))


def test_njit_only_from_jit_module():
    bad = []
    for path in _sources(PKG):
        if path.name == "jit.py":
            continue
        text = path.read_text()
        if re.search(r"numba\.(njit|jit)\b|from numba import[^\n]*\b(njit|jit)\b", text):
            bad.append(path.name)
    assert not bad, f"Numba decorators outside geolm/jit.py: {bad}; use geolm.core.jit.njit"


def test_no_fastmath_and_no_frameworks():
    for path in _sources(PKG, TESTS):
        text = path.read_text()
        if path.name != "test_jit.py":
            assert not re.search(r"fastmath\s*=\s*True", text), path
        assert not re.search(r"^\s*(import|from)\s+(torch|jax|tensorflow|autograd)\b", text, re.M), path


def test_import_is_quick_and_compiles_nothing():
    code = ("import sys, time; t = time.perf_counter(); import geolm; dt = time.perf_counter() - t; "
            "print(dt, 'numba' in sys.modules, 'matplotlib' in sys.modules, 'mpi4py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    dt, numba_loaded, mpl_loaded, mpi_loaded = float(out[0]), out[1] == "True", out[2] == "True", out[3] == "True"
    assert not numba_loaded and not mpl_loaded and not mpi_loaded
    assert dt < 5.0  # generous: a cold import without numba/matplotlib/mpi4py is ~0.1 s


def test_import_geolm_shortens_openblas_spin_unless_set():
    import subprocess
    import sys
    code = "import os, geolm; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    env = {k: v for k, v in __import__("os").environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "22"
    env["OPENBLAS_THREAD_TIMEOUT"] = "20"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "20"
