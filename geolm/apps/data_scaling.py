"""Data scaling of the geometric table: validation perplexity against the number of training stories.

    result = scaling(cfg, sizes=(250, 500, 1000, 2000, 3000), extra_data=None)   # also OUT/scaling.json + .png

Every size trains cfg.models on the first n training stories (plus, for the extra point, every story of
`extra_data` appended: its label says which and how many) with the same tokenizer and vocabulary (the first
cfg.tokenizer_stories stories, default 2,000: perplexities over one vocabulary are comparable across sizes), the same
validation stories, cfg's epochs and learning rates (--model-lr, chosen once on held-out stories: see
geometric_tuning); the geometry is built from each size's own training stories. No held-out split is taken (the
kappa variants are not part of the study). Each size is one geometric_run.run in OUT/n<size>[_extra]/, reused when
its results.json holds the same configuration.

Gap to the trigram at each size: ppl_model / ppl_trigram (> 1: the trigram is better). Trend: a least-squares line
of log ppl against log stories over the HF sizes >= 1,000 (the extra point is a different generator and is left
out), extrapolated to 20,000 stories beside the write-up's 20k figures; a straight-line extrapolation of three
points, reported as a direction, not a prediction.
"""
import dataclasses
import math
from pathlib import Path

import numpy as np

from ..core.errors import ConfigError
from ..core.io import write_json
from ..training.distributed import get_comm
from .geometric_config import model_list
from .geometric_data import log
from .geometric_report import finite
from .geometric_run import finished_run, run
from .plots import plot_panels
from .published import figure

SIZES = (250, 500, 1000, 2000, 3000)
MODELS = "bigram,trigram,hybrid,geo_abs,geo_attention,geo_successor"
TARGET = 20000  # the write-up's 20k setting
TREND_FROM = 1000




def size_configs(cfg, sizes, extra_data=None, out=None):
    """[(label, n HF stories, extra stories?, GeoRunConfig)] of the study, in order."""
    sizes = sorted({int(n) for n in sizes})
    if not sizes or sizes[0] < 1:
        raise ConfigError(f"--sizes: needs story counts >= 1 separated by commas, e.g. 250,500,1000; got {sizes}")
    out = Path(out or cfg.output)
    tok_n = cfg.tokenizer_stories or min(max(sizes), 2000)
    base = dataclasses.replace(cfg, kappa_holdout=0, eval_on="val", seeds=None, tokenizer_stories=tok_n,
                               extra_data=None)
    rows = [(f"{n}", n, False, dataclasses.replace(base, max_train_stories=n, output=str(out / f"n{n}")))
            for n in sizes]
    if extra_data:
        n = max(sizes)
        rows.append((f"{n}+extra", n, True, dataclasses.replace(base, max_train_stories=n, extra_data=extra_data,
                                                                 output=str(out / f"n{n}_extra"))))
    return rows


def trend(points, target=TARGET, start=TREND_FROM):
    """Least-squares log ppl = a + b log n over the points (n, ppl) with n >= start -> (slope b, ppl at target) or
    (None, None) with fewer than two such points."""
    pts = [(n, p) for n, p in points if n >= start and finite(p) and p > 0]
    if len(pts) < 2:
        return None, None
    x = np.log([n for n, _ in pts])
    y = np.log([p for _, p in pts])
    b, a = np.polyfit(x, y, 1)
    return float(b), float(math.exp(a + b * math.log(target)))


def scaling(cfg, sizes=SIZES, extra_data=None, out=None, progress=True, comm=None):
    """Run the study -> {"sizes": [...], "models": {name: {"points": [[n, ppl, label]], "gap": [[n, ratio]],
    "slope", "at_20k", "published_20k"}}, "extra": label or None, ...}; rank 0 writes OUT/scaling.json and .png."""
    comm = comm or get_comm()
    out = Path(out or cfg.output)
    names = model_list(cfg.models)
    rows = size_configs(cfg, sizes, extra_data, out)
    per = []
    for label, n, extra, rc in rows:
        summary = finished_run(rc)
        if summary is None:
            log(f"data scaling: {label} training stories -> {rc.output}", comm)
            summary = run(dataclasses.replace(rc, resume=cfg.resume), progress=progress, comm=comm)
        per.append((label, n, extra, summary))
    models = {}
    for name in names:
        pts = [[s["data"]["train_stories"], s["models"][name]["val_ppl"], label] for label, _, _, s in per
               if name in s["models"]]
        hf = [(p[0], p[1]) for p, (_, _, extra, _) in zip(pts, per) if not extra]
        slope, at = trend(hf)
        f = figure("20k", name)
        models[name] = {"points": pts, "slope": slope, "at_20k": at, "published_20k": f.val_ppl if f else None,
                        "lr": per[0][3]["models"][name].get("lr")}
    tri = {p[2]: p[1] for p in models.get("trigram", {}).get("points", [])}
    for name, m in models.items():
        m["gap"] = [[p[0], p[1] / tri[p[2]], p[2]] for p in m["points"] if finite(p[1]) and finite(tri.get(p[2]))]
        t20 = models.get("trigram", {}).get("at_20k")
        m["gap_at_20k"] = m["at_20k"] / t20 if finite(m["at_20k"]) and finite(t20) else None
        p20 = models.get("trigram", {}).get("published_20k")
        m["published_gap_20k"] = (m["published_20k"] / p20 if finite(m["published_20k"]) and finite(p20)
                                  else None)
    first = per[0][3]
    result = {"sizes": [n for _, n, _, _ in rows], "labels": [label for label, _, _, _ in rows],
              "extra": next((s["data"]["source"] for _, _, extra, s in per if extra), None),
              "data": {k: first["data"].get(k) for k in ("val_stories", "val_tokens", "vocab_size")},
              "config": {"epochs": cfg.epochs, "model_lr": cfg.model_lr, "lr": cfg.lr, "batch_size": cfg.batch_size,
                         "dim": cfg.dim, "seed": cfg.seed, "tokenizer_stories": rows[0][3].tokenizer_stories},
              "models": models, "trend": f"log ppl ~ log stories over HF sizes >= {TREND_FROM}, at {TARGET}"}
    if comm.rank == 0:
        write_json(out / "scaling.json", result)
        write_plot(out / "scaling.png", result)
    return result


def write_plot(path, result):
    """Validation perplexity against training stories (log-log) per model, the extra point hollow, the trend to 20k
    dashed, the write-up's 20k figures as filled stars; second panel: the same for the gap to the trigram."""
    ppl, gap, trend_ppl, trend_gap, stars, hollow, gstars, ghollow = {}, {}, {}, {}, [], [], [], []
    extra = ("+ GPT-4-only extra stories" if "gpt4" in str(result.get("extra")).lower() else "+ extra stories")
    for name, m in result["models"].items():
        hf = [p for p in m["points"] if not p[2].endswith("+extra")]
        ppl[name] = ([p[0] for p in hf], [p[1] for p in hf])
        g = [q for q in m["gap"] if not q[2].endswith("+extra")]
        gap[name] = ([q[0] for q in g], [q[1] for q in g])  # the trigram's own line is 1 (colours match panel 1)
        hollow += [(p[0], p[1], extra, name) for p in m["points"] if p[2].endswith("+extra")]
        ghollow += [(q[0], q[1], extra, name) for q in m["gap"] if q[2].endswith("+extra")]
        if hf and finite(m.get("at_20k")):
            trend_ppl[name] = ([hf[-1][0], TARGET], [hf[-1][1], m["at_20k"]])
        if g and finite(m.get("gap_at_20k")):
            trend_gap[name] = ([g[-1][0], TARGET], [g[-1][1], m["gap_at_20k"]])
        if finite(m.get("published_20k")):
            stars.append((TARGET, m["published_20k"], "write-up, 20k stories", name))
        if finite(m.get("published_gap_20k")):
            gstars.append((TARGET, m["published_gap_20k"], "write-up, 20k stories", name))
    ticks = sorted({p[0] for m in result["models"].values() for p in m["points"]} | {TARGET})
    common = {"logx": True, "xlabel": "training stories (dashed: trend to 20k)", "xticks": ticks}
    panels = [dict(common, title="validation perplexity", series=ppl, dashed=trend_ppl, markers=stars,
                   hollow=hollow, logy=True, legend=False),  # legend in panel 2
              dict(common, title="perplexity / trigram perplexity", series=gap, dashed=trend_gap, markers=gstars,
                   hollow=ghollow, legend="center")]
    plot_panels(panels, path, title="geometric LMs: data scaling (same tokenizer, validation set)", ncols=2)


def format_table(result):
    """Printable: val ppl per model and size, the gap to the trigram, the trend's slope and 20k extrapolation."""
    labels = result["labels"]
    lines = [f"{'model':16s}" + "".join(f"{lab:>12s}" for lab in labels)
             + f"{'slope':>8s}{'trend@20k':>11s}{'write-up':>10s}"]
    for name, m in result["models"].items():
        by = {p[2]: p[1] for p in m["points"]}
        cells = "".join(f"{by[lab]:12.2f}" if finite(by.get(lab)) else f"{'-':>12s}" for lab in labels)
        sl = f"{m['slope']:8.3f}" if finite(m["slope"]) else f"{'-':>8s}"
        at = f"{m['at_20k']:11.2f}" if finite(m["at_20k"]) else f"{'-':>11s}"
        pub = f"{m['published_20k']:10.2f}" if finite(m["published_20k"]) else f"{'-':>10s}"
        lines.append(f"{name:16s}{cells}{sl}{at}{pub}")
    lines.append("gap to the trigram (ppl / trigram ppl):")
    for name, m in result["models"].items():
        if name == "trigram":
            continue
        by = {q[2]: q[1] for q in m["gap"]}
        cells = "".join(f"{by[lab]:12.3f}" if finite(by.get(lab)) else f"{'-':>12s}" for lab in labels)
        g20 = f"{m['gap_at_20k']:19.3f}" if finite(m.get("gap_at_20k")) else f"{'-':>19s}"
        p20 = f"{m['published_gap_20k']:10.3f}" if finite(m.get("published_gap_20k")) else f"{'-':>10s}"
        lines.append(f"{name:16s}{cells}{g20}{p20}")
    return "\n".join(lines)
