"""Smoke test: every bench/bench_*.py runs with --quick and exits 0. Nothing about time is asserted."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(BENCH.glob("bench_*.py"))


def test_benches_found():
    assert (BENCH / "harness.py").is_file() and SCRIPTS


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_bench_quick_runs(script, tmp_path):
    out = tmp_path / "out.json"
    res = subprocess.run([sys.executable, str(script), "--quick", "--json", str(out)], capture_output=True,
                         text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, f"{script.name} --quick failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    assert res.stdout.strip(), f"{script.name} printed nothing"


@pytest.mark.slow
def test_geometric_pairs_quick(tmp_path):
    """--pairs runs each model alone and beside its partner in forked processes and records every row."""
    out = tmp_path / "out.json"
    res = subprocess.run([sys.executable, str(BENCH / "bench_geometric.py"), "--quick", "--models", "geo_abs",
                          "--pairs", "geo_abs:compute,hybrid:geo_abs", "--pair-seconds", "0.2", "--json", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    import json
    rows = [r for r in json.loads(out.read_text())["rows"] if r["what"] == "pair"]
    got = {(r["model"], r["partner"]) for r in rows}
    assert got == {("geo_abs", "compute"), ("compute", "geo_abs"), ("hybrid", "geo_abs"), ("geo_abs", "hybrid")}
    assert all(r["alone_ms"] > 0 and r["paired_ms"] > 0 for r in rows)


@pytest.mark.parametrize("flags, message", [
    (["--pairs", "geo_abs:nope"], "--pairs: unknown model"),
    (["--pairs", "geo_abs"], "--pairs: unknown model or malformed pair"),
    (["--pairs", "--pair-seconds", "0"], "--pair-seconds must be > 0"),
    (["--pairs", "--pair-repeats", "0"], "--pair-repeats >= 1"),
])
def test_geometric_pairs_bad_flag(tmp_path, flags, message):
    res = subprocess.run([sys.executable, str(BENCH / "bench_geometric.py"), "--quick", "--models", "geo_abs",
                          *flags], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode != 0 and message in res.stderr and "Traceback" not in res.stderr


def test_env_header_names_cpu_and_blas_environment(monkeypatch):
    """The header says which CPU ran and which OPENBLAS_* settings picked the kernels (they change GEMM peak ~2x)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import harness
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Zen_test_value")
    head = harness.env_header()
    assert any(line.startswith("cpu: ") for line in head.splitlines())
    assert "OPENBLAS_CORETYPE=Zen_test_value" in head
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert "OPENBLAS_CORETYPE" not in harness.blas_env()


def test_in_situ_split_charges_numpy_calls_to_their_geolm_caller():
    """The in-situ split of bench_train_step: time spent in NumPy's Python layer and built-ins (cholesky, einsum,
    solves) under a geolm function is charged to that function's part; the parts add up to the profiled step."""
    import numpy as np
    sys.path.insert(0, str(BENCH))
    try:
        import bench_train_step as bts
    finally:
        sys.path.remove(str(BENCH))
    from geolm.ops.metric import metric_solve_ref
    rng = np.random.default_rng(0)
    U, f = rng.normal(size=(256, 8, 32)), rng.normal(size=(256, 32))
    wall, parts = bts.in_situ_split(lambda: [metric_solve_ref(U, f, 0.1, 1.0) for _ in range(10)])
    assert set(parts) <= set(bts.SITU_PARTS.values()) | {"encoder + head", "other"}
    assert parts["metric solve"] > 0.9 * sum(parts.values()), parts
    assert sum(parts.values()) <= 1.05 * wall


def test_gelu_ab_quick(tmp_path):
    out = tmp_path / "ab.json"
    res = subprocess.run([sys.executable, str(BENCH / "bench_train_step.py"), "--quick", "--ab-gelu", "1", "--json",
                          str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    import json
    ab = json.loads(out.read_text())["gelu_ab"]
    assert sorted(len(v) for v in ab.values()) == [1, 1] and "parallel" in ab


def test_gelu_ab_bad_value():
    res = subprocess.run([sys.executable, str(BENCH / "bench_train_step.py"), "--quick", "--ab-gelu", "-1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "--ab-gelu" in res.stderr and "Traceback" not in res.stderr
