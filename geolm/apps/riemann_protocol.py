"""The Riemannian write-up's two-phase experiment (issue 16) as one resumable command: per seed, phase 1 at the
configuration's metric rank R1, rank growth to R2 (geolm.apps.riemann_grow), phase 2; then the telemetry of every
run beside the write-up's quoted values (geolm.apps.published.RIEMANN_READINGS).

    DIR/seed<k>/phase1      steps 0 .. N1 at rank R1 (a run directory of geolm.apps.riemann_run)
    DIR/seed<k>/phase2      phase 1's final checkpoint copied, grown to R2 and continued to step N1 + N2, exactly
                            as `train_riemann.py --resume DIR --rank R2 --steps N1+N2` would (its cosine schedule
                            spans N1 + N2 steps, so the learning rate rises again at the growth)
    DIR/protocol.json       per seed: telemetry trajectories, values at the end of each phase, s/step; the claims
    DIR/protocol.png        linearity, displacement and path length, log det g with its parts, fDecay, validation
                            perplexity against step: mean +- sd over seeds, the growth step, the write-up's values

    plan = plan_protocol({"lambda_metric": 1e-5}, ProtocolConfig(seeds="0,1,2"), "examples/configs/riemann_third.toml",
                         "runs/p")
    result = run_protocol(plan)          # rerun: finished phases are skipped, unfinished ones resumed
    print(format_claims(result["claims"]))

Telemetry is recorded at every evaluation (--eval-every, default here 50) on the fixed validation batch. When the
phase lengths are not the write-up's (3,000 and 9,300), its values are drawn at the same place in our phases (start,
end of phase 1, end of phase 2). log det g grows with d (it starts at d log eps, U = 0), so at another d the
write-up's log det values are drawn scaled by our start over its -800 (the table gives both).
"""
import dataclasses
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.config import opt, require
from ..core.errors import ConfigError
from ..core.io import atomic_dir, write_json
from ..training.checkpoint import latest_checkpoint
from ..training.metrics import MetricsLog
from .plots import TELEMETRY_KEYS, plot_panels
from .published import RIEMANN_READINGS, RIEMANN_SHAPES, RIEMANN_SOURCE, riemann_reading
from .riemann_run import run
from .riemann_settings import load_config_file, resolve_configs, resume_configs

DEFAULT_OUTPUT = "runs/riemann_protocol"
PROTOCOL_DEFAULTS = dict(eval_every=50)  # below the configuration file
QUICK = dict(data="builtin", max_train_stories=120, max_val_stories=20, dim=16, layers=1, heads=2, seq_len=16,
             vocab_size=300, rank=2, hidden=8, field_hidden=16, ode_steps=2, batch_size=4, warmup=2, val_batches=2,
             tel_batch=4, eval_every=3, log_every=1, gen_tokens=0, map_points=0, threads=1)  # above the file
QUICK_PHASES = dict(phase1_steps=6, phase2_steps=6, grow_to=4)
REFUSED = {"steps": "the phase lengths are --phase1-steps and --phase2-steps",
           "seed": "pass --seeds 0,1,2", "resume": "rerun the same command: finished phases are skipped",
           "no_ode": "the protocol grows the metric rank; the plain Transformer has none",
           "metric": "the protocol grows the low-rank metric; --metric identity has no rank"}
P2_RATIO = (RIEMANN_SHAPES["phase2_end"] - RIEMANN_SHAPES["phase1_end"]) / RIEMANN_SHAPES["phase1_end"]
RANK_RATIO = RIEMANN_SHAPES["rank"][1] / RIEMANN_SHAPES["rank"][0]
TRAJ_KEYS = ("linearity", "displacement", "path_length", "logdet", "logdet_const", "logdet_K", "fdecay", "val_ppl",
             "metric_length", "speed", "tel_ce")
LABELS = dict(TELEMETRY_KEYS)
WRITEUP_START = riemann_reading("logdet", 1, 0).value  # log det g at its start (U = 0: d log eps)
FDECAY_SMALL = 0.1  # "fDecay << 1"
LOGDET_NEAR_ZERO = 0.05  # "log det g -> 0": |log det g| below this fraction of its start
MARGIN = 0.01  # a rise or fall counts when it exceeds 1% of the value it is compared with


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    phase1_steps: Optional[int] = opt(None, "steps of phase 1 at the configuration's --rank (None: its --steps)")
    phase2_steps: Optional[int] = opt(None, "steps of phase 2 after the growth (None: phase 1 x 3.1, the write-up's "
                                  "3,000 : 9,300)")
    grow_to: Optional[int] = opt(None, "metric rank of phase 2 (None: --rank x 64/24, the write-up's 24 -> 64)")
    seeds: str = opt("0,1,2", "comma-separated seeds (one phase-1/phase-2 pair each)")
    quick: bool = opt(False, "tiny shapes, built-in stories, 6 + 6 steps (a smoke test of the whole protocol)")

    def __post_init__(self):
        for k in ("phase1_steps", "phase2_steps", "grow_to"):
            v = getattr(self, k)
            require(v is None or v > 0, k, f"must be > 0, got {v}")
        parse_seeds(self.seeds)


@dataclasses.dataclass(frozen=True)
class Plan:
    output: Path
    config_file: str
    overrides: dict  # settings of both phases (flags, quick, protocol defaults); not steps, seed, output
    phase1_steps: int
    phase2_steps: int
    rank: int
    grow_to: int
    seeds: tuple
    dim: int
    eps: float


def parse_seeds(text):
    try:
        seeds = tuple(int(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        seeds = ()
    require(len(seeds) > 0 and len(set(seeds)) == len(seeds) and min(seeds) >= 0, "seeds",
            f"pass distinct non-negative integers separated by commas, e.g. 0,1,2 (got {text!r})")
    return seeds


def plan_protocol(given, proto, config_file=None, output=DEFAULT_OUTPUT):
    """{setting: value} given on the command line (train_riemann's names), a ProtocolConfig, the configuration file
    and DIR -> Plan. Layers: defaults < PROTOCOL_DEFAULTS < file < QUICK (--quick) < given."""
    for k in sorted(given):
        if k in REFUSED and not (k == "metric" and given[k] == "lowrank") and not (k == "no_ode" and not given[k]):
            raise ConfigError(f"--{k.replace('_', '-')} is not a protocol flag: {REFUSED[k]}")
    file_vals = load_config_file(config_file) if config_file else {}
    ov = {k: v for k, v in PROTOCOL_DEFAULTS.items() if k not in file_vals}
    ov.update(QUICK if proto.quick else {})
    ov.update({k: v for k, v in given.items() if k not in ("output", "metric", "no_ode")})
    cfg, tcfg, _ = resolve_configs(ov, config_file=config_file)  # every setting checked once, before any work
    require(not cfg.no_ode and cfg.metric == "lowrank", "metric", "the protocol needs the low-rank metric")
    quick = QUICK_PHASES if proto.quick else {}
    n1 = proto.phase1_steps or quick.get("phase1_steps") or tcfg.steps
    n2 = proto.phase2_steps or quick.get("phase2_steps") or max(1, round(P2_RATIO * n1))
    r2 = proto.grow_to or quick.get("grow_to") or max(cfg.rank + 1, round(RANK_RATIO * cfg.rank))
    require(n1 > 0, "phase1_steps", f"must be > 0 (the configuration gives --steps {n1})")
    require(cfg.rank < r2 <= cfg.dim, "grow_to", f"must be in ({cfg.rank}, {cfg.dim}] (above --rank {cfg.rank}, "
                                                 f"at most --dim), got {r2}")
    return Plan(Path(output), config_file and str(config_file), ov, n1, n2, cfg.rank, r2, parse_seeds(proto.seeds),
                cfg.dim, cfg.eps)


# ---------------------------------------------------------------------------------------------------------------
# running the phases

def _ckpt_step(d):
    ck = latest_checkpoint(d)
    return None if ck is None else int(ck.stem.split("_")[1])


def _done(d, target):
    s = Path(d) / "summary.json"
    return _ckpt_step(d) == target and s.is_file() and json.loads(s.read_text()).get("steps") == target


def _copy_phase1(src, dst):
    """Phase 1's newest checkpoint, metrics.jsonl and tokenizer cache into dst (plots, summary, story stay)."""
    newest = latest_checkpoint(src).name
    for p in Path(src).iterdir():
        if p.name.startswith(".") or p.suffix == ".png" or p.name in ("summary.json", "story.txt") or \
                (p.name.startswith("ckpt_") and p.name != newest):
            continue
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, dst / p.name)


def run_phases(plan, seed, progress=True, say=print):
    """Phase 1 then phase 2 of one seed, each skipped when finished and resumed when started -> the two dirs."""
    d1, d2 = plan.output / f"seed{seed}" / "phase1", plan.output / f"seed{seed}" / "phase2"
    n1, t2, cf = plan.phase1_steps, plan.phase1_steps + plan.phase2_steps, plan.config_file
    for d, lo, hi in ((d1, 0, n1), (d2, n1, t2)):
        step = _ckpt_step(d)
        if step is not None and not lo <= step <= hi:
            raise ConfigError(f"{d} is at step {step}, outside this protocol's [{lo}, {hi}]; pass the phase lengths "
                              f"it was run with, or a new --output")
    grown = [r["step"] for r in MetricsLog(d2).read() if r.get("kind") == "grow"]
    if grown and grown[0] != n1:
        raise ConfigError(f"{d2} grew at step {grown[0]}, not at --phase1-steps {n1}; pass --phase1-steps "
                          f"{grown[0]} or a new --output")
    ov = dict(plan.overrides, seed=seed)
    if _done(d1, n1):
        say(f"seed {seed}: phase 1 finished ({d1}); skipped")
    else:
        say(f"seed {seed}: phase 1, {n1} steps at rank {plan.rank} -> {d1}")
        configs = (resume_configs(d1, dict(ov, steps=n1), config_file=cf) if _ckpt_step(d1) is not None else
                   resolve_configs(dict(ov, steps=n1, output=str(d1)), config_file=cf))
        run(*configs, progress=progress, config_file=cf)
    if _done(d2, t2):
        say(f"seed {seed}: phase 2 finished ({d2}); skipped")
        return d1, d2
    if _ckpt_step(d2) is None:
        atomic_dir(d2, lambda tmp: _copy_phase1(d1, tmp))
    say(f"seed {seed}: phase 2, rank {plan.rank} -> {plan.grow_to} at step {n1}, to step {t2} -> {d2}")
    run(*resume_configs(d2, dict(ov, steps=t2, rank=plan.grow_to), config_file=cf), progress=progress,
        config_file=cf)
    return d1, d2


# ---------------------------------------------------------------------------------------------------------------
# reading the runs

def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _evals(d, lo, hi):
    """Eval records of run dir d with lo < step <= hi, one per step (the last), by step."""
    recs = {r["step"]: r for r in MetricsLog(d).read() if r.get("kind") == "eval" and lo < r.get("step", -1) <= hi}
    return [recs[k] for k in sorted(recs)]


def _summary(d):
    p = Path(d) / "summary.json"
    s = json.loads(p.read_text()) if p.is_file() else {}
    return dict(dir=str(d), **{k: s.get(k) for k in ("steps", "s_per_step", "wall_s_per_step", "seconds", "val_ppl",
                                                     "growth")})


def read_seed(plan, d1, d2):
    """-> {trajectory: {step: [...], key: [...]}, first, end1, end2: {key: value}, start_logdet, phase1, phase2}."""
    n1 = plan.phase1_steps
    e1, e2 = _evals(d1, 0, n1), _evals(d2, n1, n1 + plan.phase2_steps)
    recs = e1 + e2
    pick = lambda r: {k: _num(r.get(k)) for k in TRAJ_KEYS} if r else {k: math.nan for k in TRAJ_KEYS}  # noqa: E731
    first = next((r for r in e1 if math.isfinite(_num(r.get("linearity")))), e1[0] if e1 else None)
    return dict(trajectory=dict(step=[r["step"] for r in recs], **{k: [_num(r.get(k)) for r in recs]
                                                                    for k in TRAJ_KEYS}),
                first=pick(first), end1=pick(e1[-1] if e1 else None), end2=pick(e2[-1] if e2 else None),
                first_step=first and first["step"], end1_step=e1[-1]["step"] if e1 else None,
                end2_step=e2[-1]["step"] if e2 else None, start_logdet=plan.dim * math.log(plan.eps),
                phase1=_summary(d1), phase2=_summary(d2))


def mean_sd(values):
    """-> (mean, sd (ddof 1; 0 for one value), n) over the finite values; (nan, nan, 0) if none."""
    v = np.array([x for x in values if math.isfinite(x)], np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def _lt(a, b):
    """a < b by more than MARGIN |b| (a change smaller than that is no direction)."""
    return a < b - MARGIN * abs(b)


# (key, phase, write-up step, claim, direction criterion or None, per-seed test on {first, end1, end2, start})
CLAIMS = (
    ("logdet", 1, 0, "log det g at start (ours d log eps)", None, None),
    ("linearity", 1, 3000, "linearity dips in phase 1", "end of phase 1 < first evaluation",
     lambda v: _lt(v["end1"], v["first"])),
    ("displacement", 1, 3000, "displacement, end of phase 1", None, None),
    ("path_length", 1, 3000, "path length, end of phase 1", None, None),
    ("logdet", 1, 3000, "log det g climbs in phase 1", "end of phase 1 > start (d log eps)",
     lambda v: _lt(v["start"], v["end1"])),
    ("logdet", 2, 12300, "log det g -> 0 after growth", f"|end 2| < |end 1| and < {LOGDET_NEAR_ZERO:g} |start|",
     lambda v: _lt(abs(v["end2"]), abs(v["end1"])) and abs(v["end2"]) < LOGDET_NEAR_ZERO * abs(v["start"])),
    ("fdecay", 2, 12300, "fDecay << 1 after growth", f"end of phase 2 < {FDECAY_SMALL:g}",
     lambda v: v["end2"] < FDECAY_SMALL),
    ("linearity", 2, 12300, "linearity recovers after growth", "end of phase 2 > end of phase 1",
     lambda v: _lt(v["end1"], v["end2"])),
    ("displacement", 2, 12300, "displacement rises in phase 2", "end of phase 2 > end of phase 1",
     lambda v: _lt(v["end1"], v["end2"])),
    ("path_length", 2, 12300, "path length falls in phase 2", "end of phase 2 < end of phase 1",
     lambda v: _lt(v["end2"], v["end1"])),
)


def claims_table(plan, seeds):
    """The claim-by-claim table: write-up value, ours (mean +- sd over seeds) where the write-up measured it, and
    per seed whether the direction reproduces."""
    rows, n1 = [], plan.phase1_steps
    steps = dict(start=0, end1=n1, end2=n1 + plan.phase2_steps)
    for key, phase, wstep, claim, crit, test in CLAIMS:
        rd = riemann_reading(key, phase, wstep)
        where = "start" if wstep == 0 else f"end{phase}"
        per = []
        for s in seeds.values():
            v = {w: s[w][key] for w in ("first", "end1", "end2")}
            v["start"] = s["start_logdet"]
            ok = None if test is None or not all(math.isfinite(x) for x in v.values()) else bool(test(v))
            per.append((v["start"] if where == "start" else v[where], ok))
        m, sd, n = mean_sd([x for x, _ in per])
        oks = [ok for _, ok in per if ok is not None]
        row = dict(claim=claim, key=key, phase=phase, writeup=rd.value, writeup_step=rd.step, quote=rd.quote,
                   ours_mean=m, ours_sd=sd, ours_n=n, ours_step=steps[where], direction=crit,
                   reproduces=[ok for _, ok in per], reproduced=f"{sum(oks)}/{len(oks)}" if crit and oks else None)
        if key == "logdet":  # log det g scales with d: the write-up's value x our start / its start
            row["writeup_scaled"] = rd.value * plan.dim * math.log(plan.eps) / WRITEUP_START
        rows.append(row)
    return rows


def format_claims(rows):
    """The claims table as aligned text lines."""
    out = [f"{'claim':36s} {'write-up @step':>15s} {'ours mean +- sd @step':>27s}  direction reproduces (seeds; "
           f"a change counts beyond {MARGIN:.0%})"]
    for r in rows:
        w = f"{r['writeup']:g} @{r['writeup_step']}"
        ours = "n/a" if r["ours_n"] == 0 else f"{r['ours_mean']:.4g} +- {r['ours_sd']:.2g} @{r['ours_step']}"
        d = "" if r["direction"] is None else f"{r['reproduced'] or 'n/a'}: {r['direction']}"
        out.append(f"{r['claim']:36s} {w:>15s} {ours:>27s}  {d}")
        if "writeup_scaled" in r:
            out.append(f"{'  write-up x our d log eps / -800':36s} {r['writeup_scaled']:>15.4g}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# the figure

def _band(seeds, key):
    """Steps and mean, sd over seeds of one telemetry key."""
    by = {}
    for s in seeds.values():
        for st, v in zip(s["trajectory"]["step"], s["trajectory"][key]):
            by.setdefault(st, []).append(v)
    steps = sorted(by)
    stats = [mean_sd(by[st]) for st in steps]
    return steps, [m for m, _, _ in stats], [sd if n > 1 else None for _, sd, n in stats]


def marker_steps(plan):
    """The write-up's step -> ours: the same step when the phase lengths are the write-up's, else the same place."""
    n1, t2 = plan.phase1_steps, plan.phase1_steps + plan.phase2_steps
    same = (n1, t2) == (RIEMANN_SHAPES["phase1_end"], RIEMANN_SHAPES["phase2_end"])
    return {0: 0, RIEMANN_SHAPES["phase1_end"]: n1, RIEMANN_SHAPES["phase2_end"]: t2}, same


def plot_protocol(plan, seeds, path):
    where, same = marker_steps(plan)
    lab = "write-up" + ("" if same else ", at our phase ends")
    scale = plan.dim * math.log(plan.eps) / WRITEUP_START

    def marks(key, scaled=False):  # in the colour of the key's line
        s, lb = (scale, lab + " x our d log eps / -800") if scaled else (1.0, lab)
        return [(where[r.step], r.value * s, lb, LABELS[key]) for r in RIEMANN_READINGS if r.key == key]

    def series(*keys):
        return {LABELS[k]: _band(seeds, k) for k in keys}

    same_d = abs(scale - 1.0) < 1e-9  # else the write-up's log det values only scaled: they grow with d
    panels = [
        dict(title="linearity D/P", series=series("linearity"), markers=marks("linearity")),
        dict(title="displacement |z_T - z_0| and path length", series=series("displacement", "path_length"),
             markers=marks("displacement") + marks("path_length"), logy=True),
        dict(title="log det g = (d-r) log eps + log det K", series=series("logdet", "logdet_const", "logdet_K"),
             markers=marks("logdet", scaled=not same_d)),
        dict(title="fDecay |f(z_T)|/|f(z_0)|", series=series("fdecay"), markers=marks("fdecay"), logy=True),
        dict(title="validation perplexity", series=series("val_ppl"), logy=True),
    ]
    note = (f"{len(seeds)} seed(s): mean +- sd\nd {plan.dim}, rank {plan.rank} -> {plan.grow_to}\n"
            f"phase 1: {plan.phase1_steps} steps\nphase 2: {plan.phase2_steps} steps\n"
            f"write-up: d 384, rank 24 -> 64,\n  steps 3,000 and 12,300\n" + ("" if same else
            "its values drawn at our phase\n  ends (start, end 1, end 2)\n") +
            ("" if same_d else "its log det x our d log eps / -800"))
    return plot_panels(panels, path, vlines=[(plan.phase1_steps, f"growth {plan.rank} -> {plan.grow_to}")],
                       title="Riemannian protocol: phase 1, rank growth, phase 2", note=note)


def run_protocol(plan, progress=True, say=None):
    """Run (or resume) every seed's phases; write DIR/protocol.json and DIR/protocol.png -> the protocol dict."""
    say = say or (lambda m: print(m, file=sys.stderr, flush=True) if progress else None)
    seeds = {seed: read_seed(plan, *run_phases(plan, seed, progress=progress, say=say)) for seed in plan.seeds}
    where, same = marker_steps(plan)
    out = dict(source=RIEMANN_SOURCE, writeup=RIEMANN_SHAPES,
               settings=dict(phase1_steps=plan.phase1_steps, phase2_steps=plan.phase2_steps, rank=plan.rank,
                             grow_to=plan.grow_to, seeds=list(plan.seeds), dim=plan.dim, eps=plan.eps,
                             config_file=plan.config_file, overrides=plan.overrides),
               markers=dict(steps={str(k): v for k, v in where.items()}, same_steps=same),
               seeds={str(k): v for k, v in seeds.items()}, claims=claims_table(plan, seeds))
    out["png"] = plot_protocol(plan, seeds, plan.output / "protocol.png")
    write_json(plan.output / "protocol.json", out, indent=1)
    return out
