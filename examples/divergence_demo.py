#!/usr/bin/env python
"""The write-up's divergence demo: the geometric MLP with one Adam step per example beside batches of 128.

    python examples/divergence_demo.py --data ../shared/data/tinystories --output runs/divergence
    python examples/divergence_demo.py --quick --output /tmp/divergence        (40 built-in stories, seconds)

Trains geo_abs (8 frozen 3-D coordinates -> MLP) on the geometric table's data, tokenizer and geometry (its flags)
at two of geolm.apps.published's settings, compared through its matcher: batch 1, lr 1e-3, 2 epochs, no clipping (the
write-up's first run: epoch loss 7.50 -> 7.76; clipping came with the fix) and batch 128, lr 1e-4, 5 epochs (the fix:
6.006 -> 5.616). Prints each epoch's mean training loss and validation perplexity beside the write-up's; writes
OUTPUT/divergence.json, OUTPUT/divergence.png and the models (OUTPUT/<run>/models/geo_abs/).
"""
import dataclasses
import math
import sys
import time
from pathlib import Path

from geolm.apps.geometric_config import GeoRunConfig
from geolm.apps.geometric_data import prepare_data
from geolm.apps.geometric_run import GeoJob, loss_curve, train_model
from geolm.apps.plots import pyplot, save_figure
from geolm.apps.published import SETTINGS, compare, differences, figure, run_setting
from geolm.core.config import ArgParser, add_args, check_output_dir, from_args
from geolm.core.errors import ConfigError, cli_main
from geolm.core.io import write_json
from geolm.training.distributed import configure_threads, get_comm
from geolm.training.metrics import MetricsLog

MODEL = "geo_abs"
RUNS = {"per_example": ("2k_per_example", "per-example Adam"), "batch128": ("2k", "batch 128")}  # published keys
QUICK = dict(data="builtin", max_train_stories=40, max_val_stories=10, vocab_size=256, kappa_holdout=0)


def parse(argv=None):
    ap = ArgParser(description=__doc__.split("\n")[0])
    add_args(ap, GeoRunConfig, skip=("epochs", "lr", "batch_size", "models", "seeds", "jobs"))
    ap.set_defaults(output="runs/divergence")
    ap.add_argument("--per-example-clip", type=float, default=0.0,
                    help="gradient-norm clip of the per-example run (default: %(default)s = off, as published)")
    ap.add_argument("--quick", action="store_true", help="40 built-in stories, vocabulary 256: a smoke run")
    ns = ap.parse_args(argv)
    return from_args(GeoRunConfig, ns, models=MODEL, jobs=1, **(QUICK if ns.quick else {})), ns.per_example_clip


def train(cfg, data, run, comm):
    """geo_abs at the published setting of `run` -> its record (epochs, curve, timing, published comparison)."""
    key, label = RUNS[run]
    s = SETTINGS[key]
    rc, spe = dataclasses.replace(cfg, epochs=s.epochs, lr=s.lr, batch_size=s.batch), math.ceil(len(data.ytr) / s.batch)
    job = GeoJob(cfg=rc, data=data, names=(MODEL,), seed=cfg.seed, root=Path(cfg.output) / run, spe=spe, jobs=1,
                 progress=sys.stderr.isatty(), comm=comm)
    e = train_model(job, MODEL)[0][MODEL]
    ours, f, n = run_setting(rc, data.info), figure(key, MODEL), max(1, e["final_step"])
    pub = dict(compare(ours, {MODEL: e}), differs={k: list(v) for k, v in differences(ours, s).items()})
    return dict(label=label, setting=dict(key=key, epochs=rc.epochs, lr=rc.lr, batch=rc.batch_size, clip=rc.clip),
                epochs=e["epochs"], curve=loss_curve(MetricsLog(job.run_dir(MODEL)).read(), spe), val_ppl=e["val_ppl"],
                steps=n, train_seconds=e["train_seconds"], ms_per_step=1e3 * e["train_seconds"] / n,
                skipped_steps=e["skipped_steps"], writeup=dict(train_loss=list(f.train_loss), val_ppl=f.val_ppl),
                published=pub)


def direction(runs):
    """The write-up's direction: per-example loss up in epoch 2, batch-128 loss down every epoch."""
    a, b = ([e["train_loss"] for e in runs[k]["epochs"]] for k in RUNS)
    rises, falls = a[1] > a[0], all(y < x for x, y in zip(b, b[1:]))
    return dict(per_example_rises=rises, batch128_falls=falls, reproduces=rises and falls)


def plot(path, runs):
    """Training loss per epoch (ours: dots, per 1/8 epoch: thin; the write-up's: crosses) and validation ppl."""
    fig, (a1, a2) = pyplot().subplots(1, 2, figsize=(11, 4.2))
    for r in runs.values():
        xs, pub, mark = [e["epoch"] for e in r["epochs"]], r["writeup"]["train_loss"], dict(ls="none", marker="x", ms=9)
        line, = a1.plot(xs, [e["train_loss"] for e in r["epochs"]], marker="o", label=f"{r['label']}: ours")
        c = line.get_color()
        a1.plot(*zip(*r["curve"]), lw=0.8, alpha=0.5, color=c, label=f"{r['label']}: per 1/8 epoch")
        a1.plot(range(1, len(pub) + 1), pub, color=c, mew=2, label=f"{r['label']}: write-up", **mark)
        a2.plot(xs, [e["val_ppl"] for e in r["epochs"]], marker="o", color=c, label=r["label"])
        if r["writeup"]["val_ppl"] is not None:
            a2.plot([len(pub)], [r["writeup"]["val_ppl"]], color=c, mew=2, label=f"{r['label']}: write-up", **mark)
    a1.set(xlabel="epoch", ylabel="mean training loss (nats)", title="geo_abs: training loss")
    a2.set(xlabel="epoch", ylabel="validation perplexity", title="validation perplexity")
    n = max(len(r["epochs"]) for r in runs.values())
    for ax, lo in ((a1, 0), (a2, 1)):
        ax.set_xticks(range(lo, n + 1))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def _cell(v, width, digits, sign=""):
    return "-".rjust(width) if v is None else f"{v:{sign}{width}.{digits}f}"


def report(r):
    s, c = r["setting"], r["published"]
    why = c["note"] if c["matched"] else f"not the write-up's {s['key']} setting: " + ", ".join(
        f"{k} {a} (published {b})" for k, (a, b) in c["differs"].items())
    out = [f"{r['label']}: batch {s['batch']}, lr {s['lr']:g}, clip {s['clip']:g}, {s['epochs']} epochs: "
           f"{r['steps']:,} steps in {r['train_seconds']:.0f} s ({r['ms_per_step']:.3f} ms/step incl. evaluation)\n  {why}",
           "  epoch  train loss  write-up      diff   val ppl"]
    pub, diffs = r["writeup"]["train_loss"], c["models"].get(MODEL, {}).get("train_loss_diff", [])
    for i, e in enumerate(r["epochs"]):
        p, d = (v[i] if i < len(v) else None for v in (pub, diffs))
        out.append(f"  {e['epoch']:5d}{_cell(e['train_loss'], 12, 4)}{_cell(p, 10, 3)}{_cell(d, 10, 3, '+')}"
                   f"{_cell(e['val_ppl'], 10, 2)}")
    return "\n".join(out)


@cli_main
def main(argv=None):
    cfg, clip = parse(argv)
    comm = get_comm()
    if comm.size > 1:
        raise ConfigError("the divergence demo trains batch 1 in one process; run it without mpiexec")
    check_output_dir(Path(cfg.output))
    configure_threads(cfg.threads, comm)
    t0 = time.perf_counter()
    data = prepare_data(cfg, comm)
    runs = {"per_example": train(dataclasses.replace(cfg, clip=clip), data, "per_example", comm),
            "batch128": train(cfg, data, "batch128", comm)}
    out = dict(model=MODEL, config=dataclasses.asdict(cfg), data=data.info, runs=runs, direction=direction(runs),
               seconds_total=time.perf_counter() - t0)
    write_json(Path(cfg.output) / "divergence.json", out)
    plot(Path(cfg.output) / "divergence.png", runs)
    print("\n".join(report(r) for r in runs.values()))
    yes = {k: "yes" if v else "no" for k, v in out["direction"].items()}
    print(f"the write-up's direction: per-example loss rises in epoch 2: {yes['per_example_rises']}; batch-128 loss "
          f"falls every epoch: {yes['batch128_falls']}; both: {yes['reproduces']}")
    print(f"data: {data.info['source']}; {data.info['train_stories']} train stories, {len(data.ytr):,} windows, "
          f"V={data.tok.V}; total {out['seconds_total']:.0f} s; wrote {cfg.output}/divergence.json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
