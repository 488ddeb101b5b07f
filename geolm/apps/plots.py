"""Training curves, telemetry panels and the semantic map as PNG files (matplotlib, imported lazily).

Importing geolm never imports matplotlib: each function imports it on first call and selects the
non-interactive Agg backend. Every figure is written with geolm.core.io.atomic_write, so a crash mid-write
never leaves a truncated PNG behind.

    plot_curves({"lowrank": (xs, ys), "identity": (xs, ys)}, "curves.png", logy=True)
    plot_telemetry(records_from_metrics_jsonl, "telemetry.png")
    draw_semantic_map("semantic_map.png", traj2d, labels, words, grid=(a, b, L))
    plot_panels([{"title": "linearity", "series": {"mean": (xs, ys, sds)}, "markers": [(x, y, "ref")]}], "p.png")
"""
import math
import os

import numpy as np

from ..core.errors import ConfigError
from ..core.io import atomic_write

CLASS_COLORS = {"noun": "#1f77b4", "verb": "#d62728", "end": "#2ca02c", "other": "#7f7f7f"}  # semantic classes

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
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight"))
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


def _band(xs, ys, sds, logy):
    """The finite (x, y - sd, y + sd) of a band; with logy a non-positive lower edge is drawn at y / 2."""
    bx, lo, hi = [], [], []
    for x, y, sd in zip(xs, ys, sds):
        if y is None or sd is None or not (math.isfinite(y) and math.isfinite(sd)) or (logy and y <= 0.0):
            continue
        bx.append(float(x))
        lo.append(y - sd if not logy or y - sd > 0.0 else 0.5 * y)
        hi.append(y + sd)
    return bx, lo, hi


def plot_curves(curves, path, title="", xlabel="epoch", ylabel="validation perplexity", logy=False):
    """One line per named run: curves = {name: (xs, ys)} or {name: (xs, ys, sds)} (a shaded ys +- sds band)
    -> PNG at `path`.

    Non-finite or missing points are skipped; with logy, non-positive points are dropped too.
    """
    if not isinstance(curves, dict):
        raise ConfigError("plot_curves needs a dict {name: (xs, ys)}; pass e.g. {'run': (steps, ppl)}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    n_drawn = 0
    for name, xy in curves.items():
        xs, ys = xy[0], xy[1]
        px, py = _finite_pairs(xs, ys)
        if logy:
            keep = [i for i, y in enumerate(py) if y > 0.0]
            px, py = [px[i] for i in keep], [py[i] for i in keep]
        if not px:
            continue
        line, = ax.plot(px, py, marker="o" if len(px) < 30 else None, ms=3, lw=1.5, label=str(name))
        if len(xy) > 2 and xy[2] is not None:
            bx, lo, hi = _band(xs, ys, xy[2], logy)
            if bx:
                ax.fill_between(bx, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
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


def draw_semantic_map(path, traj2d, labels, words, grid=None, title="", dpi=220, max_labels=200):
    """Draw trajectories, labelled endpoints by class and an optional log det g backdrop; PNG at `path`.

    traj2d [S+1,N,2] projected step-boundary states (last = endpoints); labels/words [N];
    grid = (a [G], b [G], L [G,G] log det g, rows over b) or None.
    """
    plt = pyplot()
    traj2d = np.asarray(traj2d, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(11, 9))
    if grid is not None:
        a, b, L = grid
        L = np.asarray(L, dtype=np.float64)
        if np.isfinite(L).any():
            cf = ax.contourf(a, b, L, levels=24, cmap="terrain", alpha=0.55, zorder=0)
            ax.contour(a, b, L, levels=12, colors="k", linewidths=0.3, alpha=0.35, zorder=1)
            cb = fig.colorbar(cf, ax=ax, shrink=0.8)
            cb.set_label("log det g(z) on the PCA plane")
    labels = np.asarray(labels)
    for c in CLASS_COLORS:
        idx = np.flatnonzero(labels == c)
        if idx.size == 0:
            continue
        col = CLASS_COLORS[c]
        for i in idx:
            ax.plot(traj2d[:, i, 0], traj2d[:, i, 1], color=col, lw=0.6, alpha=0.45, zorder=2)
        ax.scatter(traj2d[0, idx, 0], traj2d[0, idx, 1], s=6, color=col, alpha=0.4, marker="o", zorder=3)
        ax.scatter(traj2d[-1, idx, 0], traj2d[-1, idx, 1], s=22, color=col, edgecolor="k", linewidth=0.3,
                   label=f"{c} ({idx.size})", zorder=4)
    for i in range(min(len(words), max_labels)):
        ax.annotate(str(words[i]).strip() or "?", traj2d[-1, i], fontsize=5.5, alpha=0.85,
                    xytext=(2, 2), textcoords="offset points", zorder=5,
                    color=CLASS_COLORS.get(str(labels[i]), "k"))
    if grid is not None:
        ax.set_xlim(grid[0][0], grid[0][-1])
        ax.set_ylim(grid[1][0], grid[1][-1])
    ax.set_xlabel("PC 1 of endpoints z_T")
    ax.set_ylabel("PC 2 of endpoints z_T")
    ax.set_title(title or "semantic map: trajectories z_0 -> z_T, endpoint token = head argmax")
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path, dpi=dpi)


def plot_limits(traj2d, q=0.01, pad=0.1):
    """(amin, amax, bmin, bmax): the q..1-q quantiles of all projected states plus a margin (a few far-flung
    trajectories are clipped rather than squeezing the rest into a corner)."""
    t = np.asarray(traj2d, dtype=np.float64).reshape(-1, 2)
    lo, hi = np.quantile(t, q, axis=0), np.quantile(t, 1.0 - q, axis=0)
    span = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - pad * span, hi + pad * span
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def plot_panels(panels, path, vlines=(), title="", ncols=3, note="", xlabel="step"):
    """A grid of panels over one x axis -> PNG at `path`.

    panels: [{"title": str, "series": {label: (xs, ys) or (xs, ys, sds)}, "markers": [(x, y, label[, series])],
    "hollow": [...], "dashed": {series: (xs, ys)}, "logy": bool, "logx": bool, "xlabel": str, "xticks": [x],
    "legend": matplotlib loc, or False for none}]: lines (a ys +- sds band where sds are given), filled and hollow
    star markers (reference values; in the colour of the named series), dashed lines in a series' colour without a
    legend entry (e.g. a trend), x ticks labelled at the given values (log axes: plain numbers). vlines: [(x, label)]
    drawn in every panel. note: text in the next free cell. Non-finite points are skipped; logy applies only when
    every drawn value is > 0 and they span more than a factor 3.
    """
    plt = pyplot()
    n = len(panels) + bool(note)
    ncols = max(1, min(ncols, n))
    nrows = int(math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.2 * nrows), squeeze=False)
    for ax, pan in zip(axes.flat, panels):
        drawn, colors = [], {}
        for label, xy in pan.get("series", {}).items():
            px, py = _finite_pairs(xy[0], xy[1])
            if not px:
                continue
            line, = ax.plot(px, py, lw=1.3, marker="o" if len(px) < 30 else None, ms=2.5, label=str(label))
            drawn += py
            colors[label] = line.get_color()
            if len(xy) > 2 and xy[2] is not None:
                bx, lo, hi = _band(xy[0], xy[1], xy[2], False)
                if bx:
                    ax.fill_between(bx, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
        for label, xy in pan.get("dashed", {}).items():
            px, py = _finite_pairs(xy[0], xy[1])
            if px:
                ax.plot(px, py, ls="--", lw=1.0, color=colors.get(label, "0.4"))
                drawn += py
        for key, face in (("markers", "k"), ("hollow", "none")):
            for x, y, label, *series in pan.get(key, ()):
                if y is None or not math.isfinite(y):
                    continue
                col = colors.get(series[0], "k") if series else "k"
                ax.scatter([x], [y], marker="*", s=110, facecolors=col if face == "k" else "none", edgecolors=col,
                           zorder=5, label=label)
                drawn.append(y)
        for x, label in vlines:
            ax.axvline(x, color="0.4", ls="--", lw=0.9, label=label)
        if pan.get("logy") and drawn and min(drawn) > 0.0 and max(drawn) > 3.0 * min(drawn):
            ax.set_yscale("log")
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(pan.get("title", ""), fontsize=9)
        ax.set_xlabel(pan.get("xlabel", xlabel), fontsize=8)
        if pan.get("logx"):
            ax.set_xscale("log")
        if pan.get("xticks"):
            ax.set_xticks(pan["xticks"], [f"{x:g}" for x in pan["xticks"]])
            ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles and pan.get("legend", "best"):
            uniq = dict(zip(labels, handles))
            ax.legend(uniq.values(), uniq.keys(), fontsize=6, loc=pan.get("legend", "best"), framealpha=0.5)
    rest = list(axes.flat)[len(panels):]
    for ax in rest:
        ax.set_axis_off()
    if note and rest:
        rest[0].text(0.0, 1.0, note, ha="left", va="top", fontsize=7, family="monospace", transform=rest[0].transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
