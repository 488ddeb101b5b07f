import json
import math
import os
import subprocess
import sys
from pathlib import Path

from geolm.apps.published import PUBLISHED, SETTINGS, figure

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "divergence_demo.py"


def test_figure_finds_the_published_per_example_and_batched_losses():
    assert figure("2k_per_example", "geo_abs").train_loss == (7.50, 7.76)
    assert figure("2k", "geo_abs").train_loss == (6.006, 5.831, 5.741, 5.668, 5.616)
    assert figure("2k", "geo_successor") is None
    assert all(figure(f.setting, f.model) is f for f in PUBLISHED)
    s = SETTINGS["2k_per_example"]
    assert (s.batch, s.lr, s.epochs, s.stories, s.dim) == (1, 1e-3, 2, 2000, 64)


def _finite(x):
    return isinstance(x, float) and math.isfinite(x)


def test_quick_run_writes_both_curves(tmp_path):
    out = tmp_path / "div"
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--output", str(out)], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "GEOLM_MPI": "0"})
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "divergence.json").read_text())
    assert (out / "divergence.png").stat().st_size > 1000
    pe, b = res["runs"]["per_example"], res["runs"]["batch128"]
    assert (pe["setting"]["batch"], pe["setting"]["lr"], pe["setting"]["clip"]) == (1, 1e-3, 0.0)
    assert (b["setting"]["batch"], b["setting"]["lr"], b["setting"]["clip"]) == (128, 1e-4, 1.0)
    n = res["data"]["train_tokens"]
    assert pe["steps"] == 2 * n and b["steps"] == 5 * math.ceil(n / 128)
    for run, k in ((pe, 2), (b, 5)):
        assert [e["epoch"] for e in run["epochs"]] == list(range(1, k + 1))
        assert all(_finite(e["train_loss"]) and _finite(e["val_ppl"]) for e in run["epochs"])
        assert _finite(run["val_ppl"]) and run["skipped_steps"] == 0
        assert run["published"]["matched"] is None  # built-in stories never match a published setting
    assert pe["writeup"]["train_loss"] == [7.50, 7.76] and b["writeup"]["train_loss"][-1] == 5.616
    assert set(res["direction"]) == {"per_example_rises", "batch128_falls", "reproduces"}
    assert "per-example Adam: batch 1, lr 0.001" in r.stdout and "direction:" in r.stdout
