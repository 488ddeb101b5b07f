"""Tuned optimisation for the geometric table: a learning rate per model chosen on held-out training stories, then
the table at those rates over seeds.

    tuning = select_lrs(cfg, lrs=(3e-4, 1e-3, 3e-3), out=OUT)    # OUT/select/lr<lr>/results.json, OUT/tuning.json
    summary = tuned_table(cfg, tuning, out=OUT)                   # OUT/table/results.json + curves.png + losses.png

Selection: every requested trained model except the permutation controls (CONTROLS: a control trains at its model's
rate) is trained once per rate (seed cfg.seed, cfg.epochs epochs) with eval_on="heldout", i.e. scored after every
epoch on the --kappa-holdout training stories that follow the first --max-train-stories (never trained on). A
model's rate is the one with the lowest held-out perplexity at the final epoch (the table reports the final epoch);
validation is never read. The tuned table then trains every requested model at its chosen rate (--model-lr) for
cfg's seeds and scores validation; each epoch's mean training loss and validation loss (log perplexity) are kept,
so overfitting shows (losses.png). A finished selection run (its results.json with the same configuration) is
reused, so an interrupted tuning continues where it stopped.
"""
import dataclasses
from pathlib import Path

from ..core.errors import ConfigError
from ..core.io import write_json
from ..training.distributed import get_comm
from .geometric_config import CONTROLS, KAPPA, TRAINED, model_list
from .geometric_data import log
from .geometric_report import finite
from .geometric_run import finished_run, run
from .plots import plot_panels

LRS = (3e-4, 1e-3, 3e-3)
CRITERION = "lowest held-out perplexity at the final epoch (seed {seed}, {epochs} epochs)"


def tuned_models(names):
    """The models whose rate is selected: trained, not a permutation control, in table order (kappa variants are
    scored on their trained base)."""
    bases = [KAPPA.get(n, n) for n in names]
    return list(dict.fromkeys(n for n in bases if n in TRAINED and n not in CONTROLS))


def lr_key(lr):
    return f"{lr:g}"




def select_lrs(cfg, lrs=LRS, out=None, progress=True, comm=None):
    """Train the tuned models once per rate on held-out scoring -> the tuning record (also OUT/tuning.json):
    {"lrs", "criterion", "heldout_source", "models": {name: {lr: {"final", "best", "epochs"}}}, "chosen": {name: lr},
    "model_lr": the --model-lr string}."""
    comm = comm or get_comm()
    lrs = sorted({float(x) for x in lrs})
    if not lrs or not all(finite(x) and x > 0 for x in lrs):
        raise ConfigError(f"--lrs: needs learning rates > 0 separated by commas, e.g. 3e-4,1e-3,3e-3; got {lrs}")
    names = tuned_models(model_list(cfg.models))
    if not names:
        raise ConfigError(f"--models: no model to tune in {cfg.models!r}; name a trained model such as trigram")
    out = Path(out or cfg.output)
    rows, source = {n: {} for n in names}, None
    for lr in lrs:
        rc = dataclasses.replace(cfg, lr=lr, model_lr=None, eval_on="heldout", models=",".join(names), seeds=None,
                                 output=str(out / "select" / f"lr{lr_key(lr)}"))
        summary = finished_run(rc)
        if summary is None:
            log(f"lr selection: lr {lr:g} on held-out training stories -> {rc.output}", comm)
            summary = run(dataclasses.replace(rc, resume=cfg.resume), progress=progress, comm=comm)
        source = summary["data"].get("eval_on")
        for n in names:
            e = summary["models"][n]
            rows[n][lr_key(lr)] = {"final": e.get("val_ppl"), "best": e.get("best_val_ppl"),
                                   "epochs": [[ep["epoch"], ep.get("train_loss"), ep.get("val_ppl")]
                                              for ep in e.get("epochs", [])]}
    chosen = {}
    for n in names:
        finals = {lr: rows[n][lr_key(lr)]["final"] for lr in lrs}
        ok = [lr for lr in lrs if finite(finals[lr])]
        if ok:
            chosen[n] = min(ok, key=lambda lr: finals[lr])
    tuning = {"lrs": lrs, "criterion": CRITERION.format(seed=cfg.seed, epochs=cfg.epochs), "heldout_source": source,
              "models": rows, "chosen": chosen, "model_lr": ",".join(f"{n}={lr_key(lr)}" for n, lr in chosen.items())}
    if comm.rank == 0:
        write_json(out / "tuning.json", tuning)
    return tuning


def selection_table(tuning):
    """Printable: held-out perplexity at the final epoch per model and rate, the chosen rate starred."""
    lrs = tuning["lrs"]
    head = f"{'model':26s}" + "".join(f"{'lr ' + lr_key(lr):>12s}" for lr in lrs)
    lines = [f"held-out perplexity at the final epoch ({tuning['heldout_source']}); * = chosen", head]
    for n, by in tuning["models"].items():
        cells = []
        for lr in lrs:
            v = by[lr_key(lr)]["final"]
            cells.append((f"{v:.2f}" if finite(v) else "-") + ("*" if tuning["chosen"].get(n) == lr else " "))
        lines.append(f"{n:26s}" + "".join(f"{c:>12s}" for c in cells))
    return "\n".join(lines)


def tuned_table(cfg, tuning, out=None, progress=True, comm=None):
    """The table at the chosen rates (validation scoring, cfg's seeds) -> run()'s summary, with the tuning record
    under "tuning"; writes OUT/table/results.json, curves.png and losses.png."""
    comm = comm or get_comm()
    out = Path(out or cfg.output)
    rc = dataclasses.replace(cfg, model_lr=tuning["model_lr"] or None, eval_on="val", output=str(out / "table"))
    summary = run(rc, progress=progress, comm=comm)
    summary["tuning"] = {k: tuning[k] for k in ("lrs", "criterion", "heldout_source", "chosen")}
    if comm.rank == 0:
        write_json(Path(rc.output) / "results.json", summary)
        write_losses(Path(rc.output) / "losses.png", summary["models"])
    return summary


def write_losses(path, models):
    """One panel per trained model: mean training loss and validation loss per epoch (mean +- sd over seeds)."""
    panels = []
    for name, e in models.items():
        ep = e.get("epochs") or []
        if not ep:
            continue
        xs = [r["epoch"] for r in ep]
        series = {"train": (xs, [r.get("train_loss") for r in ep], [r.get("train_loss_sd") for r in ep]),
                  "validation": (xs, [r.get("val_loss") for r in ep], [r.get("val_loss_sd") for r in ep])}
        lr = e.get("lr")
        panels.append({"title": f"{name}" + (f" (lr {lr:g})" if finite(lr) else ""), "series": series})
    if panels:
        plot_panels(panels, path, title="geometric LMs: loss per epoch (nats), mean +- sd over seeds", ncols=4,
                    xlabel="epoch")
