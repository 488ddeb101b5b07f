"""examples/custom_model.py: runs end to end with --quick, and its gradient check catches a wrong backward."""
import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "custom_model.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("custom_model_example", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_quick_run_gradchecks_trains_and_reports_finite_perplexity(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--output", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"^gradcheck ok \(float64\)", r.stdout, re.M), r.stdout
    m = re.search(r"^validation perplexity (\S+) on (\d+) targets", r.stdout, re.M)
    assert m and math.isfinite(float(m.group(1))) and int(m.group(2)) > 0, r.stdout
    assert re.search(r"^data: ", r.stdout, re.M)
    assert list((tmp_path / "run").glob("ckpt_*.npz")) and (tmp_path / "run" / "metrics.jsonl").is_file()


def test_gradcheck_passes_on_the_example():
    err, derr = _load_example().gradcheck()
    assert err < 1e-6 and derr < 1e-6


def test_gradcheck_fails_on_a_sign_flipped_backward(monkeypatch):
    mod = _load_example()
    correct = mod.backward

    def flipped(dlogits, cache):
        dp = correct(dlogits, cache)
        dp["emb"]["w"] = -dp["emb"]["w"]
        return dp

    monkeypatch.setattr(mod, "backward", flipped)
    with pytest.raises(AssertionError, match=r"p\.emb\.w"):
        mod.gradcheck()


def test_gradcheck_fails_when_the_mean_is_not_divided_through(monkeypatch):
    mod = _load_example()
    correct = mod.backward

    def undivided(dlogits, cache):
        dp = correct(dlogits, cache)
        dp["emb"]["w"] = dp["emb"]["w"] * cache[2]  # forgets the 1/C of the mean
        return dp

    monkeypatch.setattr(mod, "backward", undivided)
    with pytest.raises(AssertionError, match="wrong"):
        mod.gradcheck()
