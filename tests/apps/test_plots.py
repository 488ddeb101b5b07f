import math
import subprocess
import sys

import numpy as np
import pytest

from geolm.apps import plots
from geolm.core.errors import ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    with open(path, "rb") as fh:
        head = fh.read(8)
    return head == PNG_MAGIC and path.stat().st_size > 1000


def test_import_geolm_does_not_import_matplotlib():
    code = "import sys, geolm, geolm.apps.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plot_curves_writes_png(tmp_path):
    p = tmp_path / "sub" / "curves.png"
    curves = {"lowrank": ([1, 2, 3], [300.0, 120.0, 80.0]),
              "identity": ([1, 2, 3], [310.0, float("nan"), 90.0])}
    out = plots.plot_curves(curves, p, title="t", logy=True)
    assert out == str(p)
    assert _is_png(p)
    assert not [f for f in p.parent.iterdir() if f.name.startswith(".")]  # no temporary left behind


def test_plot_curves_empty_and_bad_input(tmp_path):
    p = tmp_path / "empty.png"
    plots.plot_curves({"a": ([], [])}, p)
    assert _is_png(p)
    with pytest.raises(ConfigError):
        plots.plot_curves([([1], [2])], tmp_path / "x.png")


def test_plot_telemetry_subset_and_missing_keys(tmp_path):
    recs = []
    for s in range(1, 21):
        r = {"step": s, "loss": 5.0 / s, "ce": 4.9 / s, "linearity": 0.8, "logdet_K": -float(s)}
        if s % 5 == 0:
            r["val_ppl"] = 100.0 / s
        if s == 7:
            r["grad_norm"] = None
        recs.append(r)
    recs.append({"loss": math.inf})  # no step, non-finite: tolerated
    p = tmp_path / "tele.png"
    plots.plot_telemetry(recs, p)
    assert _is_png(p)


def test_plot_telemetry_nothing_to_draw(tmp_path):
    p = tmp_path / "none.png"
    plots.plot_telemetry([{"step": 1, "unrelated": 3.0}, "not a dict"], p)
    assert _is_png(p)


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "c.png"
    plots.plot_curves({"a": ([0, 1], [1.0, 2.0])}, p)
    before = p.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    import matplotlib.figure
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", boom)
    with pytest.raises(RuntimeError):
        plots.plot_curves({"a": ([0, 1], [3.0, 4.0])}, p)
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["c.png"]


def test_draw_semantic_map(tmp_path, rng):
    S, N = 4, 30
    traj = np.cumsum(rng.normal(size=(S + 1, N, 2)), axis=0)
    labels = np.array(rng.choice(list(plots.CLASS_COLORS), size=N))
    words = [f"w{i}" for i in range(N)]
    a = np.linspace(-3, 3, 8)
    grid = (a, a, np.add.outer(a, a))
    p = tmp_path / "map.png"
    plots.draw_semantic_map(p, traj, labels, words, grid=grid, dpi=60)
    assert p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 5000
    plots.draw_semantic_map(tmp_path / "nogrid.png", traj, labels, words, grid=None, dpi=60)
    lim = plots.plot_limits(traj, q=0.0)
    assert lim[0] < traj[..., 0].min() and lim[3] > traj[..., 1].max()
