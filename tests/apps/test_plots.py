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


def test_plot_panels_dashed_ticks_and_legend(tmp_path, monkeypatch):
    """Dashed lines take their series' colour (grey without one), x ticks are labelled at the given values as plain
    numbers, legend=False draws none."""
    seen = {}
    plt = plots.pyplot()
    real_save = plots.save_figure

    def keep(fig, path, dpi=120):
        seen["axes"] = fig.axes
        seen["lines"] = [[(ln.get_linestyle(), ln.get_color()) for ln in ax.get_lines()] for ax in fig.axes]
        seen["ticks"] = [[t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes]
        seen["legend"] = [ax.get_legend() is not None for ax in fig.axes]
        return real_save(fig, path, dpi)

    monkeypatch.setattr(plots, "save_figure", keep)
    panels = [{"series": {"a": ([250, 1000], [100.0, 50.0])}, "dashed": {"a": ([1000, 20000], [50.0, 20.0]),
                                                                        "nobody": ([1, 2], [3.0, 4.0])},
               "logx": True, "xticks": [250, 1000, 20000], "legend": False},
              {"series": {"b": ([1, 2], [1.0, 2.0])}}]
    out = plots.plot_panels(panels, tmp_path / "p.png", ncols=2)
    assert out == str(tmp_path / "p.png") and _is_png(tmp_path / "p.png")
    solid, dashed, grey = seen["lines"][0]
    assert solid[0] == "-" and dashed == ("--", solid[1]) and grey == ("--", "0.4")
    assert seen["ticks"][0] == ["250", "1000", "20000"]
    assert seen["legend"][:2] == [False, True]
    plt.close("all")
