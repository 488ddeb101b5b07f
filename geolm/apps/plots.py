"""Training curves and telemetry panels as PNG files (matplotlib, imported lazily).

Importing geolm never imports matplotlib: each function imports it on first call and selects the
non-interactive Agg backend. Every figure is written atomically (temp file in the target directory,
then os.replace), so a crash mid-write never leaves a truncated PNG behind.

    plot_curves({"lowrank": (xs, ys), "identity": (xs, ys)}, "curves.png", logy=True)
    plot_telemetry(records_from_metrics_jsonl, "telemetry.png")
"""
import math
import os
import tempfile

from ..core.errors import ConfigError

# Telemetry keys drawn by plot_telemetry, in panel order, with their axis labels.
TELEMETRY_KEYS = (
    ("loss", "loss"),
    ("ce", "cross-entropy"),
    ("val_ppl", "validation perplexity"),
    ("displacement", "displacement |z_T - z_0|"),
    ("path_length", "path length"),
    ("metric_length", "metric length"),
    ("linearity", "linearity D/P"),
    ("logdet_const", "(d-r) log eps"),
    ("logdet_K", "log det K"),
    ("logdet", "log det g"),
    ("fdecay", "fDecay |f(z_T)|/|f(z_0)|"),
    ("speed", "speed |g^-1 f|"),
    ("f_norm", "|f|"),
    ("grad_norm", "gradient norm"),
    ("skipped", "skipped steps"),
)


def pyplot():
    """matplotlib.pyplot with the Agg backend (lazy import; safe on headless machines)."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, dpi=120):
    """Write `fig` to `path` (PNG) atomically and close it; returns the path as a string."""
    plt = pyplot()
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".png", dir=d)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
    return path


def _finite_pairs(xs, ys):
    """Drop (x, y) pairs where y is None or not finite; returns two lists."""
    px, py = [], []
    for x, y in zip(xs, ys):
        if y is None:
            continue
        try:
            y = float(y)
        except (TypeError, ValueError):
            continue
        if math.isfinite(y):
            px.append(float(x))
            py.append(y)
    return px, py


def plot_curves(curves, path, title="", xlabel="epoch", ylabel="validation perplexity", logy=False):
    """One line per named run: curves = {name: (xs, ys)} -> PNG at `path`.

    Non-finite or missing points are skipped; with logy, non-positive points are dropped too.
    """
    if not isinstance(curves, dict):
        raise ConfigError("plot_curves needs a dict {name: (xs, ys)}; pass e.g. {'run': (steps, ppl)}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    n_drawn = 0
    for name, xy in curves.items():
        xs, ys = xy
        px, py = _finite_pairs(xs, ys)
        if logy:
            keep = [i for i, y in enumerate(py) if y > 0.0]
            px, py = [px[i] for i in keep], [py[i] for i in keep]
        if not px:
            continue
        ax.plot(px, py, marker="o" if len(px) < 30 else None, ms=3, lw=1.5, label=str(name))
        n_drawn += 1
    if logy and n_drawn:
        ax.set_yscale("log")
    if n_drawn == 0:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if n_drawn:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_telemetry(records, path, step_key="step", title=""):
    """A grid of panels over `step` for whichever TELEMETRY_KEYS appear in `records` (list of dicts).

    Records lacking a key (e.g. val_ppl logged only at eval steps) are skipped for that panel;
    records without a step use their index. Writes a PNG (a "no telemetry" note when nothing matches).
    """
    records = [r for r in records if isinstance(r, dict)]
    panels = []
    for key, label in TELEMETRY_KEYS:
        xs, ys = [], []
        for i, r in enumerate(records):
            if key in r:
                xs.append(r.get(step_key, i))
                ys.append(r[key])
        px, py = _finite_pairs(xs, ys)
        if px:
            panels.append((key, label, px, py))
    plt = pyplot()
    if not panels:
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.text(0.5, 0.5, "no telemetry", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return save_figure(fig, path)
    ncols = min(3, len(panels))
    nrows = int(math.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.8 * nrows), squeeze=False)
    for ax, (key, label, px, py) in zip(axes.flat, panels):
        ax.plot(px, py, lw=1.2, marker="o" if len(px) < 30 else None, ms=3)
        if key == "val_ppl" and min(py) > 0.0:
            ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(step_key, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
