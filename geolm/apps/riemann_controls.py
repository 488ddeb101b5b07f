"""The Riemannian run table with seeds and controls, and the metric's rank x eps sweep (issue 16 item 5), as one
resumable command.

    DIR/table/<control>/seed<k>     one run per control and seed (validation scoring)
    DIR/sweep/r<R>_eps<E>/seed<s>   the learned metric at each (rank, eps) cell, seed s = the first seed, scored on
                                    held-out TRAINING stories (DIR/heldout.txt: the --max-train-stories ..
                                    + HELDOUT stories after the training ones), so that the best cell is chosen
                                    without reading validation
    DIR/best/seed<k>                the best cell (lowest held-out perplexity) at every seed, on validation
                                    (the learned control's runs stand for it when the best cell is its
                                    configuration: same settings, same seeds, the same runs)
    DIR/controls.json               per run: val ppl, steps, s/step; per control: mean +- sd; the comparisons

Controls (CONTROLS): the learned low-rank metric (the configuration as given), lambda_metric 0, g = I
(--metric identity), g = eps I (alpha 0: the same 1/eps time rescale, no learned metric) and the plain Transformer
(--no-ode). A difference "beats seed noise" when the difference of the means exceeds twice its standard error,
2 sqrt(sd_a^2/n_a + sd_b^2/n_b) (sample sd over seeds); with 3 seeds this is a coarse screen, reported as such.
Finished runs (summary.json at the target step) are skipped, started ones resumed.
"""
import dataclasses
import json
import math
from pathlib import Path

from ..core.errors import ConfigError
from ..core.io import atomic_write, write_json
from ..data.corpus import STORY_SEP, load_corpus
from ..training.checkpoint import latest_checkpoint
from .riemann_protocol import parse_seeds
from .riemann_run import run
from .riemann_settings import resolve_configs, resume_configs

CONTROLS = {"learned": {}, "lambda0": {"lambda_metric": 0.0}, "identity": {"metric": "identity"},
            "alpha0": {"alpha": 0.0}, "no_ode": {"no_ode": True}}
LABELS = {"learned": "learned low-rank metric", "lambda0": "same, lambda_metric = 0", "identity": "g = I",
          "alpha0": "g = eps I (alpha = 0)", "no_ode": "plain Transformer (no ODE)"}
RANKS = (1, 4, 16, 64)
EPSILONS = (0.1, 1.0)
HELDOUT = 500
RUN_DEFAULTS = dict(map_points=0, gen_tokens=0)  # the table needs perplexities, not pictures


@dataclasses.dataclass(frozen=True)
class Job:
    group: str  # table | sweep | best
    name: str  # control name or sweep cell
    seed: int
    dir: Path
    overrides: dict



def cell_name(rank, eps):
    return f"r{rank}_eps{eps:g}"


def plan(given, seeds="0,1,2", controls=tuple(CONTROLS), sweep=True, config_file=None, output="runs/controls"):
    """{setting: value} (train_riemann's names, e.g. from its command line) -> (table jobs, sweep jobs, base)."""
    for k in ("seed", "resume", "metric", "no_ode", "alpha"):
        if k in given:
            raise ConfigError(f"--{k.replace('_', '-')} is set by each run of this command (--seeds, the controls); "
                              "leave it out")
    bad = [c for c in controls if c not in CONTROLS]
    if bad or not controls:
        raise ConfigError(f"--controls: unknown {', '.join(bad) or '(empty)'}; choose from {','.join(CONTROLS)}")
    seeds = parse_seeds(seeds)
    out = Path(output)
    base = dict(RUN_DEFAULTS, **{k: v for k, v in given.items() if k != "output"})
    cfg, _, _ = resolve_configs(base, config_file=config_file)  # every setting checked before any work
    table = [Job("table", c, s, out / "table" / c / f"seed{s}", dict(base, **CONTROLS[c], seed=s))
             for c in controls for s in seeds]
    cells = []
    if sweep:
        for r in RANKS:
            for e in EPSILONS:
                if r <= cfg.dim:
                    cells.append(Job("sweep", cell_name(r, e), seeds[0], out / "sweep" / cell_name(r, e) /
                                     f"seed{seeds[0]}", dict(base, rank=r, eps=e, seed=seeds[0])))
    return table, cells, base


def heldout_file(base, out, n=HELDOUT, config_file=None):
    """DIR/heldout.txt: the n training stories after the first --max-train-stories (never trained on) -> path."""
    _, _, rc = resolve_configs(base, config_file=config_file)
    first = rc.max_train_stories
    corpus = load_corpus(rc.data or "builtin", rc.val_data, max_train=first + n, max_val=1, quiet=True)
    stories = corpus.train[first:first + n]
    if len(stories) < 1:
        raise ConfigError(f"--sweep needs held-out training stories after the first {first}: the data has "
                          f"{len(corpus.train)}; lower --max-train-stories or pass --no-sweep")
    path = Path(out) / "heldout.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: fh.write("".join(s + f"\n{STORY_SEP}\n" for s in stories).encode()))
    return path, f"training stories {first}..{first + len(stories) - 1}"


def _summary(d):
    p = Path(d) / "summary.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def run_job(job, config_file=None, progress=True, say=print):
    """Run one job to its configured step count unless finished -> its summary.json dict."""
    _, tcfg, _ = resolve_configs(job.overrides, config_file=config_file)
    s = _summary(job.dir)
    if s is not None and s.get("steps") == tcfg.steps:
        say(f"{job.group} {job.name} seed {job.seed}: finished ({job.dir}); skipped")
        return s
    say(f"{job.group} {job.name} seed {job.seed}: {tcfg.steps} steps -> {job.dir}")
    if latest_checkpoint(job.dir) is not None:
        configs = resume_configs(job.dir, job.overrides, config_file=config_file)
    else:
        configs = resolve_configs(dict(job.overrides, output=str(job.dir)), config_file=config_file)
    return run(*configs, progress=progress, config_file=config_file)


def same_run(a, b, config_file=None):
    """True when two override sets resolve to the same model, training and run settings (the output aside): the
    runs would be identical, so one can stand for the other."""
    ca, cb = (resolve_configs(dict(o, output="-"), config_file=config_file) for o in (a, b))
    return ca == cb


def mean_sd(values):
    v = [float(x) for x in values if isinstance(x, (int, float)) and math.isfinite(x)]
    if not v:
        return None, None, 0
    m = math.fsum(v) / len(v)
    sd = math.sqrt(math.fsum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
    return m, sd, len(v)


def compare(a, b):
    """Row a vs row b ({mean, sd, n}) -> {diff = a - b, se, beyond_noise: |diff| > 2 se} (None without sds)."""
    if a["mean"] is None or b["mean"] is None:
        return {"diff": None, "se": None, "beyond_noise": None}
    d = a["mean"] - b["mean"]
    if a["sd"] is None or b["sd"] is None:
        return {"diff": d, "se": None, "beyond_noise": None}
    se = math.sqrt(a["sd"] ** 2 / a["n"] + b["sd"] ** 2 / b["n"])
    return {"diff": d, "se": se, "beyond_noise": abs(d) > 2 * se}


def _row(summaries):
    m, sd, n = mean_sd([s.get("val_ppl") for s in summaries])
    return {"mean": m, "sd": sd, "n": n, "runs": [{"seed": s["_seed"], "val_ppl": s.get("val_ppl"),
                                                   "steps": s.get("steps"), "s_per_step": s.get("s_per_step")}
                                                  for s in summaries]}


def run_all(table, cells, base, output, config_file=None, progress=True, say=print):
    """Run the table, the sweep on held-out stories and the best cell at every seed -> the controls record
    (also DIR/controls.json)."""
    out = Path(output)
    rows = {}
    for c in dict.fromkeys(j.name for j in table):
        rows[c] = _row([dict(run_job(j, config_file, progress, say), _seed=j.seed) for j in table if j.name == c])
        rows[c]["label"] = LABELS[c]
    result = {"controls": rows, "criterion": "beyond seed noise: |mean difference| > 2 sqrt(sd_a^2/n_a + sd_b^2/n_b)"}
    if cells:
        path, source = heldout_file(base, out, config_file=config_file)
        sweep = {}
        for j in cells:
            s = run_job(dataclasses.replace(j, overrides=dict(j.overrides, val_data=str(path))), config_file,
                        progress, say)
            sweep[j.name] = {"rank": j.overrides["rank"], "eps": j.overrides["eps"], "heldout_ppl": s.get("val_ppl"),
                             "seed": j.seed}
        ok = {k: v for k, v in sweep.items() if isinstance(v["heldout_ppl"], float) and
              math.isfinite(v["heldout_ppl"])}
        best = min(ok, key=lambda k: ok[k]["heldout_ppl"]) if ok else None
        result["sweep"] = {"cells": sweep, "heldout": source, "best": best}
        if best is not None:
            seeds = [j.seed for j in table if j.name == table[0].name]
            runs = [Job("best", best, s, out / "best" / f"seed{s}", dict(base, rank=sweep[best]["rank"],
                                                                        eps=sweep[best]["eps"], seed=s))
                    for s in seeds]
            label = f"learned, best sweep cell {best} (chosen on held-out stories)"
            twin = [j for j in table if j.name == "learned"]
            if "learned" in rows and [j.seed for j in twin] == seeds and all(
                    same_run(a.overrides, b.overrides, config_file) for a, b in zip(runs, twin)):
                say(f"best cell {best} is the learned control's configuration: its runs are reused")
                rows["best_cell"] = dict(rows["learned"], label=label + " = the learned control's runs")
            else:
                rows["best_cell"] = _row([dict(run_job(j, config_file, progress, say), _seed=j.seed) for j in runs])
                rows["best_cell"]["label"] = label
    ref = rows.get("alpha0")
    if ref is not None:
        result["vs_alpha0"] = {c: compare(r, ref) for c, r in rows.items() if c != "alpha0"}
    write_json(out / "controls.json", result)
    return result


def format_result(result):
    lines = [f"{'run':64s}{'val ppl (mean +- sd, n)':>28s}{'vs alpha = 0':>22s}"]
    vs = result.get("vs_alpha0", {})
    for c, r in result["controls"].items():
        cell = "-" if r["mean"] is None else f"{r['mean']:.2f}" + (f" +- {r['sd']:.2f}" if r["sd"] is not None
                                                                   else "") + f" (n={r['n']})"
        v = vs.get(c) or {}
        d = "" if v.get("diff") is None else f"{v['diff']:+.2f}" + (
            "" if v.get("beyond_noise") is None else (" beyond noise" if v["beyond_noise"] else " within noise"))
        lines.append(f"{r['label']:64s}{cell:>28s}{d:>22s}")
    sw = result.get("sweep")
    if sw:
        lines.append(f"sweep (seed {next(iter(sw['cells'].values()))['seed']}, held-out {sw['heldout']}): " + ", ".join(
            f"{k} {v['heldout_ppl']:.2f}" if isinstance(v["heldout_ppl"], float) else f"{k} -"
            for k, v in sw["cells"].items()) + f"; best {sw['best']}")
    lines.append(result["criterion"])
    return "\n".join(lines)
