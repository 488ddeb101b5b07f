"""The geometric-LM table (spec 2.8-2.9): data and geometry (geometric_data) -> every model -> results.

    summary = run(GeoRunConfig(...))        # -> dict, also written to OUTPUT/results.json (+ curves.png)

Every trained model goes through geolm.training.train.fit; the bigram is counted; the kappa variants score a trained
base model (geolm.models.kappa). Sequentially (--jobs 1) fit evaluates after every epoch; in parallel processes
(geolm.apps.model_pool) fit(defer_eval=True) snapshots instead and the evaluations and kappa scorings are queued to
whichever process is free: the same numbers as a sequential run at --threads 1. Under MPI training is
data-parallel and only rank 0 writes. The work of a run is one GeoJob, passed explicitly to every function below.
With --seeds the models are trained once per seed on the same data and geometry and each row reports mean +- sd
(geometric_report); every run is compared with the write-up's figures (geolm.apps.published).
Outputs: DIR/results.json, DIR/curves.png, DIR/models/<name>/ (checkpoints + metrics.jsonl; with --seeds
DIR/seed<S>/models/<name>/), DIR/tokenizers/.
"""
import dataclasses
import functools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info

from ..core.config import check_output_dir
from ..core.io import write_json
from ..core.params import ParamSpec
from ..models import geometric as G
from ..models.kappa import kappa_variants
from ..models.ngram import bigram_fit, bigram_nll
from ..ops.losses import perplexity
from ..training.checkpoint import latest_checkpoint
from ..training.distributed import configure_threads, get_comm, root_only, thread_limit
from ..training.train import Task, TrainConfig, TrainingInterrupted, fit, record_deferred, run_deferred_eval
from .geometric_config import ALL_MODELS, EVAL_BATCH, KAPPA, TRAINED, GeoRunConfig, lr_of, model_list, seed_list
from .geometric_data import GeoData, log, prepare_data
from .geometric_report import aggregate_seeds, fmt, table, write_curves
from .model_pool import balanced_bins, run_pool
from .published import compare, run_setting

__all__ = ["GeoRunConfig", "GeoJob", "run", "table", "make_task", "init_theta", "epochs_from_history", "loss_curve",
           "cost", "finished_run"]

# relative training cost per model (balances the process bins; unlisted models cost 44)
COST = {"geo_attention_full": 75, "geo_attention": 62, "trigram": 56, "hybrid": 56, "neural_bigram": 52,
        "hybrid_successor": 58, "hybrid_successor_shuffled": 58}
KAPPA_COST = 9  # the two kappa variants scored on top of a trained base


@dataclass(frozen=True, eq=False)
class GeoJob:
    """The work of one table run: settings, shared data, the requested model names, the seed of initialisation,
    batch order and kappa fit, the directory holding models/<name>/, steps per epoch, processes, comm."""

    cfg: GeoRunConfig
    data: GeoData
    names: tuple
    seed: int
    root: Path
    spe: int
    jobs: int
    progress: bool
    comm: Any

    def run_dir(self, name):
        return self.root / "models" / name


def cost(name, names=()):
    """Estimated training cost of a model, with the kappa variants scored on it."""
    return COST.get(name, 44) + sum(KAPPA_COST for k, b in KAPPA.items() if b == name and k in names)


# ---------------------------------------------------------------------------- tasks

def make_task(mc, tables, Xtr, ytr, Xva, yva, tok_hash=""):
    """geolm.training.train.Task for one trained geometric model."""
    spec = ParamSpec(G.param_shapes(mc))

    def make_batch(idx):
        return Xtr[idx], ytr[idx]

    def val_batches():
        for i in range(0, len(yva), EVAL_BATCH):
            yield Xva[i:i + EVAL_BATCH], yva[i:i + EVAL_BATCH]

    return Task(family=f"geometric/{mc.name}", cfg=mc, spec=spec, n_train=len(ytr), make_batch=make_batch,
                loss_and_grads=functools.partial(G.loss_and_grads, cfg=mc, spec=spec, tables=tables),
                eval_nll=functools.partial(G.eval_nll, cfg=mc, spec=spec, tables=tables), val_batches=val_batches,
                tokenizer_hash=tok_hash)


def init_theta(mc, spec, seed):
    return G.init_params(mc, np.random.default_rng([seed, sum(map(ord, mc.name))]))[1]


def model_config(job, name):
    cfg, tok = job.cfg, job.data.tok
    return G.GeoModelConfig(name=name, Vi=tok.pad_id + 1, V=tok.V, H=cfg.dim, C=cfg.context, k=cfg.coord_dim,
                            n_succ=cfg.successor_context, k_succ=cfg.successor_dim)


def model_task(job, mc):
    d = job.data
    return make_task(mc, d.geo["tables"][mc.table_set], d.Xtr, d.ytr, d.Xva, d.yva, d.tok.hash)


def _val_loss(ppl):
    return math.log(ppl) if isinstance(ppl, float) and math.isfinite(ppl) and ppl > 0 else None


def epochs_from_history(history, spe):
    """[{"epoch", "train_loss", "val_ppl", "val_loss"}] from fit's history records (train_loss: mean training loss
    over the epoch's steps; val_loss = log val_ppl, mean NLL per target of the scored set)."""
    out = {}
    tr = {}
    for r in history:
        if r.get("kind") == "train" and isinstance(r.get("loss"), float):
            e = (r["step"] - 1) // spe + 1
            tr.setdefault(e, []).append(r["loss"])
        if r.get("kind") == "eval":
            e = int(round(r["step"] / spe))
            if r.get("val_ppl") is not None or e not in out:  # a deferred evaluation's record follows the pending one
                out[e] = r.get("val_ppl")
    return [{"epoch": e, "train_loss": float(np.mean(tr[e])) if e in tr else None, "val_ppl": out[e],
             "val_loss": _val_loss(out[e])} for e in sorted(out)]


def loss_curve(history, spe, per_epoch=8):
    """[[epochs trained, mean training loss over that 1/per_epoch of an epoch]] from fit's train records."""
    bins = {}
    for r in history:
        if r.get("kind") == "train" and isinstance(r.get("loss"), float) and math.isfinite(r["loss"]):
            bins.setdefault(math.ceil(r["step"] * per_epoch / spe), []).append(r["loss"])
    return [[b / per_epoch, float(np.mean(v))] for b, v in sorted(bins.items())]


# ---------------------------------------------------------------------------- training and scoring

def _log_every(spe):
    """A divisor of steps/epoch in [50, 400] (else spe), so fit's training-loss windows never straddle epochs."""
    return next((d for d in range(min(spe, 400), 49, -1) if spe % d == 0), spe)


def train_models(job, names, stop=None):
    """Train a list of models in order in this process -> ({name: entry}, deferred jobs, interrupted) (see
    train_model). In a pool process an interrupt (fit checkpointed and raised TrainingInterrupted, a SystemExit
    that would end the worker with its bin unanswered) comes back as interrupted = exit code."""
    out, deferred = {}, []
    for n in names:
        try:
            entries, jobs = train_model(job, n, stop)
        except TrainingInterrupted as e:
            if job.jobs == 1:
                raise
            return out, deferred, int(e.code)
        out.update(entries)
        deferred += jobs
    return out, deferred, None


def train_model(job, name, stop=None):
    """Train one model with fit -> ({name: entry, kappa variant names: entries}, deferred jobs).

    Sequential (job.jobs == 1): fit evaluates after every epoch and the kappa variants built on the model are scored
    right after it. Parallel: fit(defer_eval=True) saves each epoch's parameters as a snapshot instead, and this
    returns the jobs ("eval", name, step, None) per waiting snapshot and ("kappa", variant, name, final theta) for
    the pool (run_deferred). Snapshots left by an interrupted run are queued again (or, sequentially, evaluated by
    fit) when it is resumed. stop: fit's should_stop event in a pool process, else None."""
    cfg, comm, spe = job.cfg, job.comm, job.spe
    parallel = job.jobs > 1
    threads = 1 if parallel else cfg.threads
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=lr_of(cfg, name), schedule="constant",
                       clip=cfg.clip, seed=job.seed, threads=threads, log_every=_log_every(spe), keep_checkpoints=1)
    mc = model_config(job, name)
    task = model_task(job, mc)
    theta = init_theta(mc, task.spec, job.seed)
    run_dir = job.run_dir(name)
    log(f"[{name}] {task.spec.size:,} parameters, {spe} steps/epoch x {cfg.epochs} epochs", comm)
    t0 = time.perf_counter()

    def on_eval(rec, theta):  # one line per epoch when fit's own progress lines are off (parallel processes)
        if not job.progress:
            log(f"[{name}] epoch {rec['step'] / spe:.0f}/{cfg.epochs} ({time.perf_counter() - t0:.0f} s)", comm)

    resume = cfg.resume and latest_checkpoint(run_dir) is not None  # a model the interrupted run never began starts
    res = fit(task, theta, tcfg, run_dir, resume=resume, progress=job.progress, comm=comm, on_eval=on_eval,
              resume_hint="the same command plus --resume", should_stop=stop.is_set if stop is not None else None,
              defer_eval=parallel)
    secs = time.perf_counter() - t0
    entry = {"val_ppl": res["final_val_ppl"], "val_loss": res["val_loss"], "lr": tcfg.lr,
             "epochs": epochs_from_history(res["history"], spe), "seconds": secs,
             "train_seconds": res["seconds"], "params": int(task.spec.size), "best_val_ppl": res["best_val_ppl"],
             "skipped_steps": res["skipped"], "threads": threads, "final_step": res["steps_done"]}
    out = {name: entry}
    kappas = [k for k, base in KAPPA.items() if base == name and k in job.names]
    if parallel:
        evals = [("eval", name, step, None) for step in res["pending"]]
        log(f"[{name}] trained in {secs:.1f} s; {len(evals)} evaluations queued", comm)
        # kappa first: the longest jobs, so the queue's tail is short evaluations
        return out, [("kappa", k, name, theta.copy()) for k in kappas] + evals
    log(f"[{name}] val ppl {fmt(entry['val_ppl'])} in {secs:.1f} s", comm)
    for kname in kappas:
        out.update(kappa_entries(job, kname, mc, task.spec, theta))
    return out, []


def run_deferred(job, item):
    """One queued job in a pool process (one thread) -> (kind, name, arg, result, seconds); an evaluation's result
    is its completed eval record (geolm.training.train.run_deferred_eval)."""
    kind, name, arg, theta = item  # eval: (step, None); kappa: (base model, final theta)
    t0 = time.perf_counter()
    with thread_limit(1, job.comm):
        if kind == "eval":
            result = run_deferred_eval(model_task(job, model_config(job, name)), job.run_dir(name), arg, job.comm)
        else:
            mc = model_config(job, arg)
            result = kappa_entries(job, name, mc, model_task(job, mc).spec, theta)
    return kind, name, arg, result, time.perf_counter() - t0


def merge_deferred(job, results, done):
    """Put the finished queued jobs into results: kappa entries; each model's evaluations are recorded in its
    metrics.jsonl (record_deferred, which deletes their snapshots) and merged into its entry (per-epoch val_ppl,
    final val_ppl / val_loss, best_val_ppl, seconds incl. evaluation)."""
    spe, comm = job.spe, job.comm
    evals = {}
    for kind, name, _, result, secs in done:
        if kind == "kappa":
            results.update(result)
        else:
            evals.setdefault(name, []).append((result, secs))
    for name, rows in evals.items():
        record_deferred(job.run_dir(name), [r for r, _ in rows], comm)
        e = results[name]
        by_epoch = {int(round(r["step"] / spe)): r["val_ppl"] for r, _ in rows}
        known = {ep["epoch"] for ep in e["epochs"]}
        e["epochs"] += [{"epoch": k, "train_loss": None, "val_ppl": None, "val_loss": None}
                        for k in sorted(by_epoch) if k not in known]
        e["epochs"].sort(key=lambda ep: ep["epoch"])
        for ep in e["epochs"]:
            if ep["epoch"] in by_epoch:
                ep["val_ppl"] = by_epoch[ep["epoch"]]
                ep["val_loss"] = _val_loss(ep["val_ppl"])
        for r, _ in rows:
            if r["step"] == e["final_step"]:
                e["val_loss"], e["val_ppl"] = r["val_loss"], r["val_ppl"]
        finite = [v for v in (ep["val_ppl"] for ep in e["epochs"]) if isinstance(v, float) and math.isfinite(v)]
        e["best_val_ppl"] = min(finite) if finite else None
        e["eval_seconds"] = sum(secs for _, secs in rows)
        e["seconds"] += e["eval_seconds"]
        log(f"[{name}] val ppl {fmt(e['val_ppl'])}; {e['seconds']:.1f} s with evaluation", comm)


def kappa_entries(job, kname, mc, spec, theta):
    """The published (1, 1) and the held-out-fitted kappa/angle variants of a trained model -> {name: entry}."""
    d = job.data
    t0 = time.perf_counter()
    kres = kappa_variants(mc, d.geo["tables"][mc.table_set], d.geo["X"], d.geo["A"], spec.views(theta), d.Xva,
                          d.yva, d.Xho, d.yho, d.tok.pad_id, job.seed, EVAL_BATCH)
    kt = time.perf_counter() - t0
    log(f"[{kname}] published (1, 1): ppl {kres['published']['val_ppl']:.2f}; fitted "
        f"({kres['fit']['a']:.3f}, {kres['fit']['b']:.3f}): ppl {kres['fitted']['val_ppl']:.2f} ({kt:.1f} s)",
        job.comm)
    return {kname: dict(kres["published"], epochs=[], params=int(spec.size), seconds=kt, base=mc.name,
                        coefficients=[1.0, 1.0]),
            kname + "_fit": dict(kres["fitted"], epochs=[], params=int(spec.size) + 2, seconds=kt, base=mc.name,
                                 fit=kres["fit"])}


# ---------------------------------------------------------------------------- the run

def _jobs(cfg, comm, n_models):
    """Parallel model processes: --jobs, or (0) one per core when there are >= 2 models and no MPI."""
    if comm.size > 1 or n_models < 2:
        return 1
    if cfg.jobs:
        return min(cfg.jobs, n_models)
    return max(1, min(os.cpu_count() or 1, n_models, 2))


def _threads():
    try:
        return max((i.get("num_threads", 0) for i in threadpool_info()), default=0)
    except Exception:  # noqa: BLE001
        return 0


def bigram_entry(data):
    t0 = time.perf_counter()
    counts = bigram_fit(data.Xtr[:, -1], data.ytr, data.tok.V)
    s, n = bigram_nll(counts, data.Xva[:, -1], data.yva)
    return {"val_ppl": perplexity(s, n), "val_loss": s / n, "epochs": [], "params": 0,
            "seconds": time.perf_counter() - t0}


def train_table(job, need):
    """Train the models `need` (in job.jobs processes) and score their kappa variants -> {name: entry}."""
    if job.jobs == 1:
        results = {}
        for n in need:
            results.update(train_models(job, [n])[0])  # also models trained only as the base of a kappa variant
        return results
    # parallel processes, one BLAS thread each; a static balanced split of the estimated costs
    bins = balanced_bins(need, job.jobs, {n: cost(n, job.names) for n in need})
    log(f"training {len(need)} models in {job.jobs} processes (1 thread each): "
        + " | ".join(",".join(b) for b in bins) + "; evaluations queued to whichever process is free", job.comm)
    results, done = run_pool(job, bins, train_models, run_deferred, job.jobs, job.root / "models")
    merge_deferred(job, results, done)
    return results


def finished_run(cfg):
    """The results.json of a finished run of cfg in cfg.output (the same configuration up to --resume), else None."""
    try:
        summary = json.loads((Path(cfg.output) / "results.json").read_text())
    except (OSError, ValueError):
        return None
    want = json.loads(json.dumps(dataclasses.asdict(cfg)))
    have = dict(summary.get("config") or {}, resume=want["resume"])
    return summary if have == want else None


def run(cfg, *, progress=True, comm=None):
    """Train and score every requested model (once per seed with --seeds); compare with the published figures;
    write results.json and curves.png (rank 0). -> results dict."""
    comm = comm or get_comm()
    configure_threads(cfg.threads, comm)
    names = model_list(cfg.models)
    need = [n for n in names if n in TRAINED] + [KAPPA[n] for n in names if n in KAPPA]
    need = list(dict.fromkeys(need))
    seeds = seed_list(cfg.seeds)
    out = Path(cfg.output)
    root_only(comm, check_output_dir, out)  # a bad --output fails on every rank, before any work
    t_all = time.perf_counter()
    data = prepare_data(cfg, comm)
    bigram = bigram_entry(data) if "bigram" in names else None
    jobs = _jobs(cfg, comm, len(need))
    per_seed = {}
    for i, seed in enumerate(seeds or [cfg.seed]):
        if seeds:
            log(f"seed {seed} ({i + 1}/{len(seeds)}): models in {out / f'seed{seed}'}", comm)
        job = GeoJob(cfg=cfg, data=data, names=tuple(names), seed=seed, root=out / f"seed{seed}" if seeds else out,
                     spe=max(1, math.ceil(len(data.ytr) / cfg.batch_size)), jobs=jobs,
                     progress=progress and jobs == 1, comm=comm)
        results = {"bigram": dict(bigram, seconds=bigram["seconds"] if i == 0 else 0.0)} if bigram else {}
        results.update(train_table(job, need))
        per_seed[seed] = {n: results[n] for base in ALL_MODELS for n in (base, base + "_fit")
                          if n in results}  # table order
    results = aggregate_seeds(per_seed) if seeds else per_seed[cfg.seed]
    published = compare(run_setting(cfg, data.info), results)
    for name, c in published.pop("models").items():
        results[name]["published"] = c
    summary = {"config": dataclasses.asdict(cfg), "data": data.info, "models": results, "published": published,
               "seconds_total": time.perf_counter() - t_all, "threads": _threads()}
    if seeds:
        summary["seeds"] = seeds
    if comm.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", summary)
        write_curves(out / "curves.png", results, cfg.epochs)
    return summary
