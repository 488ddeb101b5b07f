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
