"""The geometric-LM table (spec 2.8-2.9): corpus -> tokenizer -> windows -> geometry -> every model -> results.

One tokenizer, vocabulary, split and UNK policy for all models; every model is scored on the same validation
targets (every position of every validation story, PAD left-padded context, no end-of-story target).
Geometry (train stories only): symmetric window-5 counts -> PPMI -> rank-k SVD -> unit sphere X; top-K PPMI graph
(nbr, A); successor geometry: directed window-1 counts -> PPMI -> out-role coordinates Xout (--successor-dim).
Under MPI the counts are computed on shards of the stories and summed (exact integers), the SVD runs on rank 0
and is broadcast; training is data-parallel through geolm.training.train.fit; only rank 0 writes.
Outputs: DIR/results.json, DIR/curves.png, DIR/models/<name>/ (checkpoints + metrics.jsonl), DIR/tokenizers/.
"""
import concurrent.futures as cf
import dataclasses
import functools
import math
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_info

from ..core.config import check_output_dir, opt, positive, require
from ..core.errors import ConfigError, GeolmError
from ..core.io import write_json
from ..core.params import ParamSpec
from ..data.batches import context_windows
from ..data.corpus import load_corpus
from ..data.tokenizer import get_tokenizer
from ..geometry.coords import sphere_coords, successor_coords
from ..geometry.graph import neighbour_graph, topk_graph
from ..geometry.pmi import cooccurrence, directed_cooccurrence, ppmi
from ..models import geometric as G
from ..models.kappa import kappa_variants
from ..models.ngram import bigram_fit, bigram_nll
from ..ops.losses import perplexity
from ..training.checkpoint import latest_checkpoint
from ..training.distributed import configure_threads, get_comm, root_only, thread_limit
from ..training.train import Task, TrainConfig, TrainingInterrupted, fit, record_deferred, run_deferred_eval
from .plots import plot_curves

TRAINED = tuple(G.MODELS)
KAPPA = {"geo_abs_kappa": "geo_abs", "hybrid_kappa": "hybrid"}
ALL_MODELS = ("bigram", "trigram", "neural_bigram", "geo_abs", "geo_rot", "geo_rot_nbrs", "hybrid", "hybrid_kappa",
              "geo_abs_kappa", "geo_attention", "geo_attention_full", "geo_shuffled", "geo_successor",
              "geo_successor_shuffled")
EVAL_BATCH = 512  # positions per evaluation forward: the [512, V] logits stay in cache for the exp pass


@dataclass(frozen=True)
class GeoRunConfig:
    data: str = opt("roneneldan/TinyStories", "hub dataset name, local training file/directory, or 'builtin'")
    val_data: str = opt(None, "local validation file (default: the sibling valid* file or the hub split)")
    vocab_size: int = opt(4096, "BPE vocabulary size (model vocabulary = tokens seen >= --min-count times, capped)")
    min_count: int = opt(5, "keep tokens seen at least this often; the rest are UNK")
    dim: int = opt(64, "MLP hidden width and attention width")
    epochs: int = opt(5, "training epochs per model")
    lr: float = opt(1e-4, "Adam learning rate (constant)")
    batch_size: int = opt(128, "examples per Adam step (global under MPI)")
    clip: float = opt(1.0, "global gradient-norm clip (0 = off)")
    max_train_stories: int = opt(2000, "first N training stories")
    max_val_stories: int = opt(1000, "first N validation stories")
    kappa_holdout: int = opt(1000, "held-out training stories (after the first N) used to fit the kappa coefficients")
    context: int = opt(8, "context tokens per prediction")
    k: int = opt(4, "graph neighbours per token")
    coord_dim: int = opt(3, "sphere dimension of the symmetric PPMI coordinates")
    window: int = opt(5, "co-occurrence window (tokens after each token, within a story)")
    ppmi_smoothing: float = opt(0.0, "context-distribution smoothing alpha for PPMI (0 = none, e.g. 0.75)")
    successor_dim: int = opt(32, "dimension of the successor (directed PPMI) coordinates")
    successor_context: int = opt(2, "last n context tokens whose successor coordinates geo_successor reads")
    models: str = opt("all", "comma-separated models (default all): " + ",".join(ALL_MODELS))
    seed: int = opt(0, "seed of initialisation, batch order and permutation controls")
    output: str = opt("runs/geometric", "output directory (results.json, curves.png, checkpoints, tokenizer)")
    threads: int = opt(0, "BLAS/Numba threads (0 = cores / MPI ranks on this node)")
    jobs: int = opt(0, "models trained in parallel processes, 1 thread each (0 = min(cores, 2); 1 = sequential)")
    resume: bool = opt(False, "continue each model from its newest checkpoint in --output")
    builtin_fallback: bool = opt(True, "use the built-in story generator when the hub cannot be reached "
                                       "(--no-builtin-fallback makes that an error)")

    def __post_init__(self):
        positive(self, "vocab_size", "min_count", "dim", "epochs", "lr", "batch_size", "max_train_stories",
                 "max_val_stories", "context", "k", "coord_dim", "window", "successor_dim", "successor_context")
        require(self.context >= 2, "context", f"needs at least 2 tokens (two ids for trigram), got {self.context}")
        require(self.successor_context <= self.context, "successor_context",
                f"must be <= --context {self.context}, got {self.successor_context}")
        require(0.0 <= self.ppmi_smoothing <= 1.0, "ppmi_smoothing", f"must be in [0, 1], got {self.ppmi_smoothing}")
        require(self.kappa_holdout >= 0 and self.clip >= 0 and self.threads >= 0 and self.jobs >= 0, "kappa_holdout",
                "--kappa-holdout, --clip, --threads and --jobs must be >= 0")
        model_list(self.models)


def model_list(models):
    """Parse --models: 'all' or a comma list of names from ALL_MODELS (order kept, duplicates dropped)."""
    names = list(ALL_MODELS) if models.strip() == "all" else [m.strip() for m in models.split(",") if m.strip()]
    bad = [m for m in names if m not in ALL_MODELS]
    if bad or not names:
        raise ConfigError(f"--models: unknown model {', '.join(bad) or '(empty)'}; valid: all or {','.join(ALL_MODELS)}")
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------------------- data + geometry

def _log(msg, comm):
    if comm.rank == 0:  # one write per line, so parallel model processes do not interleave mid-line
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()


def load_data(cfg, comm):
    """-> dict(tok, train/val/heldout id lists, source line, provenance fields)."""
    corpus = load_corpus(cfg.data, cfg.val_data, max_train=cfg.max_train_stories + cfg.kappa_holdout,
                         max_val=cfg.max_val_stories, seed=cfg.seed, quiet=comm.rank != 0,
                         allow_builtin=cfg.builtin_fallback)
    train = corpus.train[: cfg.max_train_stories]
    heldout = corpus.train[cfg.max_train_stories:]
    ho_src = f"training stories {cfg.max_train_stories}..{cfg.max_train_stories + len(heldout) - 1}"
    if not heldout and cfg.kappa_holdout:  # file too small: hold out the last 5 % of train (not trained on)
        n_ho = max(1, len(train) // 20) if len(train) > 1 else 0
        train, heldout = train[: len(train) - n_ho], train[len(train) - n_ho:]
        ho_src = f"last {n_ho} of the training stories (held out of training: the file has no more)"
    tok = get_tokenizer(train, cfg.vocab_size, min_frequency=cfg.min_count, cache_dir=Path(cfg.output),
                        min_count=cfg.min_count)
    tr, va, ho = tok.encode_stories(train), tok.encode_stories(corpus.val), tok.encode_stories(heldout)
    return dict(tok=tok, train=tr, val=va, heldout=ho, source=corpus.source, heldout_source=ho_src,
                n_train=len(train), n_val=len(corpus.val), n_heldout=len(heldout))


def _shard_counts(fn, stories, V, comm, **kw):
    """Counts of this rank's stories, summed over ranks (exact int64)."""
    C = fn(stories[comm.rank::comm.size], V, **kw).tocoo()
    if comm.size == 1:
        return C.tocsr()
    allp = _allgather_obj(comm, (C.row, C.col, C.data))
    r = np.concatenate([p[0] for p in allp])
    c = np.concatenate([p[1] for p in allp])
    d = np.concatenate([p[2] for p in allp])
    out = sp.coo_matrix((d, (r, c)), shape=C.shape).tocsr()
    out.sum_duplicates()
    return out


def _allgather_obj(comm, obj):
    raw = getattr(comm, "comm", None)
    if raw is not None and hasattr(raw, "allgather"):
        return raw.allgather(obj)
    return [obj]


def build_geometry(cfg, tok, train, comm):
    """Symmetric coords X [V,k], graph (nbr, A), successor coords Xout, their permutation controls, info."""
    V, unk = tok.V, tok.unk_id
    sm = cfg.ppmi_smoothing or None
    C = _shard_counts(cooccurrence, train, V, comm, window=cfg.window, exclude=(unk,))
    D = _shard_counts(directed_cooccurrence, train, V, comm, window=1, exclude=(unk,))

    def svd():
        P = ppmi(C, sm)
        X, info = sphere_coords(P, cfg.coord_dim, seed=cfg.seed, fill_rows=(unk,))
        nbr, _ = topk_graph(P, cfg.k)
        Xout, _, sinfo = successor_coords(ppmi(D, sm), cfg.successor_dim, seed=cfg.seed, fill_rows=(unk,))
        return X, nbr, Xout, info, sinfo

    if comm.size == 1:
        X, nbr, Xout, info, sinfo = svd()
    else:
        X, nbr, Xout, info, sinfo = comm.bcast_obj(svd() if comm.rank == 0 else None)
    A = neighbour_graph(nbr, V)
    rng = np.random.default_rng([cfg.seed, 7])
    perm, perm2 = rng.permutation(V), rng.permutation(V)
    pad = tok.pad_id
    tables = {"sym": G.build_tables(X, nbr, pad, Xout, cfg.successor_context),
              "sym_shuffled": G.build_tables(X[perm], nbr[perm], pad, Xout, cfg.successor_context),
              "succ": G.build_tables(X, nbr, pad, Xout, cfg.successor_context),
              "succ_shuffled": G.build_tables(X, nbr, pad, Xout[perm2], cfg.successor_context)}
    ginfo = {"spectrum_kept": info["spectrum_kept"], "coord_dim": cfg.coord_dim, "filled_rows": info["filled_rows"],
             "successor_spectrum_kept": sinfo["spectrum_kept"], "successor_dim": cfg.successor_dim,
             "graph_edges": int(A.nnz // 2), "nnz_ppmi_counts": int(C.nnz)}
    return dict(X=X, nbr=nbr, A=A, tables=tables, info=ginfo)


# ---------------------------------------------------------------------------- tasks

def make_task(mc, tables, Xtr, ytr, Xva, yva, tok_hash=""):
    """geolm.training.train.Task for one trained geometric model."""
    from ..core.params import ParamSpec
    from ..training.train import Task

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


def _epochs_from_history(history, spe):
    """[{"epoch", "train_loss", "val_ppl"}] from fit's history records."""
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
    return [{"epoch": e, "train_loss": float(np.mean(tr[e])) if e in tr else None, "val_ppl": out[e]}
            for e in sorted(out)]


# ---------------------------------------------------------------------------- the run

def _windows(stories, C, pad):
    X, y = context_windows(stories, C, pad)
    return np.ascontiguousarray(X, dtype=np.int32), np.ascontiguousarray(y, dtype=np.int32)


def run(cfg, *, progress=True, comm=None):
    """Train and score every requested model; write results.json and curves.png (rank 0). -> results dict."""
    comm = comm or get_comm()
    configure_threads(cfg.threads, comm)
    names = model_list(cfg.models)
    need = [n for n in names if n in TRAINED] + [KAPPA[n] for n in names if n in KAPPA]
    need = list(dict.fromkeys(need))
    out = Path(cfg.output)
    root_only(comm, check_output_dir, out)  # a bad --output fails on every rank, before any work
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    d = load_data(cfg, comm)
    tok, V, pad = d["tok"], d["tok"].V, d["tok"].pad_id
    Xtr, ytr = _windows(d["train"], cfg.context, pad)
    Xva, yva = _windows(d["val"], cfg.context, pad)
    Xho, yho = _windows(d["heldout"], cfg.context, pad) if d["heldout"] else (None, None)
    t_data = time.perf_counter() - t0
    n_tok_val = int(len(yva))
    data = {"source": d["source"], "train_stories": d["n_train"], "val_stories": d["n_val"], "vocab_size": V,
            "val_tokens": n_tok_val, "unk_rate": tok.unk_rate(d["val"]), "train_unk_rate": tok.unk_rate(d["train"]),
            "train_tokens": int(len(ytr)), "heldout_stories": d["n_heldout"], "heldout_source": d["heldout_source"],
            "tokenizer_hash": tok.hash, "seconds": t_data}
    _log(f"data: {d['source']}; {d['n_train']} train / {d['n_val']} val stories, V={V}, "
         f"{len(ytr)} train / {n_tok_val} val targets, val UNK rate {data['unk_rate']:.4f}", comm)

    t0 = time.perf_counter()
    geo = build_geometry(cfg, tok, d["train"], comm)
    data["geometry"] = dict(geo["info"], seconds=time.perf_counter() - t0)
    _log(f"geometry: {cfg.coord_dim}-D sphere keeps {geo['info']['spectrum_kept']:.3%} of the PPMI spectrum, "
         f"successor {cfg.successor_dim}-D keeps {geo['info']['successor_spectrum_kept']:.3%}, "
         f"{geo['info']['graph_edges']} graph edges ({data['geometry']['seconds']:.1f} s)", comm)

    results = {}
    if "bigram" in names:
        t0 = time.perf_counter()
        counts = bigram_fit(Xtr[:, -1], ytr, V)
        s, n = bigram_nll(counts, Xva[:, -1], yva)
        results["bigram"] = {"val_ppl": perplexity(s, n), "val_loss": s / n, "epochs": [], "params": 0,
                             "seconds": time.perf_counter() - t0}

    spe = max(1, math.ceil(len(ytr) / cfg.batch_size))
    jobs = _jobs(cfg, comm, len(need))
    _JOB.update(cfg=cfg, tables=geo["tables"], Xtr=Xtr, ytr=ytr, Xva=Xva, yva=yva, tok_hash=tok.hash, V=V,
                pad=pad, spe=spe, comm=comm, progress=progress and jobs == 1, names=names, jobs=jobs,
                X=geo["X"], A=geo["A"], Xho=Xho, yho=yho, stop=None)
    if jobs == 1:
        for entries, _, _ in map(_train_models, [[n] for n in need]):
            results.update(entries)  # also models trained only as the base of a kappa variant
    else:  # models in parallel processes, one BLAS thread each; a static balanced split of the estimated costs
        bins = _balanced_bins(need, jobs, names)
        _log(f"training {len(need)} models in {jobs} processes (1 thread each): "
             + " | ".join(",".join(b) for b in bins) + "; evaluations queued to whichever process is free", comm)
        ctx = multiprocessing.get_context("fork")
        _JOB["stop"] = ctx.Event()  # inherited by the forked workers: fit's should_stop
        with cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init) as pool:
            done = _run_pool(pool, bins, results)
        _merge_deferred(results, done, comm)

    results = {n: results[n] for base in ALL_MODELS for n in (base, base + "_fit") if n in results}  # table order
    summary = {"config": dataclasses.asdict(cfg), "data": data, "models": results,
               "seconds_total": time.perf_counter() - t_all, "threads": _threads()}
    if comm.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", summary)
        write_curves(out / "curves.png", results, cfg.epochs)
    return summary


_JOB = {}


# relative training cost per model (used to balance the process bins; unlisted models cost 44)
COST = {"geo_attention_full": 75, "geo_attention": 62, "trigram": 56, "hybrid": 56, "neural_bigram": 52}
KAPPA_COST = 9  # the two kappa variants scored on top of a trained base


def _cost(name, names=()):
    return COST.get(name, 44) + sum(KAPPA_COST for k, b in KAPPA.items() if b == name and k in names)


def _balanced_bins(need, jobs, names=()):
    """Split models into `jobs` lists, each trained in order by one process, minimising the largest estimated
    total (exact over subsets for 2 processes, longest-first greedy otherwise)."""
    cost = {n: _cost(n, names) for n in need}
    if jobs == 2 and len(need) <= 16:
        total = sum(cost.values())
        best = None
        for mask in range(1 << (len(need) - 1)):  # the last model stays in the second bin: halves the search
            a = sum(cost[n] for i, n in enumerate(need) if mask >> i & 1)
            if best is None or max(a, total - a) < best[0]:
                best = (max(a, total - a), mask)
        bins = [[n for i, n in enumerate(need) if best[1] >> i & 1], [n for i, n in enumerate(need)
                                                                       if not best[1] >> i & 1]]
    else:
        bins = [[] for _ in range(jobs)]
        for n in sorted(need, key=lambda n: -cost[n]):
            min(bins, key=lambda b: sum(cost[m] for m in b)).append(n)
    return [sorted(b, key=lambda n: -cost[n]) for b in bins if b]


def _train_models(names):
    """Train a list of models in order in this process -> ({name: entry}, deferred jobs, interrupted) (see
    _train_model). In a pool process an interrupt (fit checkpointed and raised TrainingInterrupted, a SystemExit
    that would kill the worker and leave its task unanswered) comes back as interrupted = exit code."""
    out, deferred = {}, []
    for n in names:
        try:
            entries, jobs = _train_model(n)
        except TrainingInterrupted as e:
            if _JOB["jobs"] == 1:
                raise
            return out, deferred, int(e.code)
        out.update(entries)
        deferred += jobs
    return out, deferred, None


def _worker_init():
    """Pool processes ignore SIGINT outside fit (in fit it means: checkpoint and stop), so Ctrl-C never prints a
    worker's traceback; the parent stops training workers through _JOB["stop"] (see _run_pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_pool(pool, bins, results):
    """Train the bins in the pool (a ProcessPoolExecutor), queueing each bin's deferred jobs as it finishes -> the
    finished jobs' results.

    SIGINT/SIGTERM to this process, or a worker stopped by one: the stop event is set, training workers checkpoint
    and stop after their current step, queued jobs are cancelled and running ones finish (their snapshots otherwise
    stay on disk for --resume); then TrainingInterrupted (exit 130 / 143) with the resume line. No process is killed,
    so no queue lock is left held. A worker that dies (e.g. out of memory) ends the run with a one-line GeolmError,
    not a hang."""
    got = {}
    old = {s: signal.signal(s, lambda signum, frame: got.setdefault("signum", signum))
           for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        train = {pool.submit(_train_models, b) for b in bins}
        jobs, done = set(), []
        while train or jobs:
            if "signum" in got:
                _JOB["stop"].set()
                for f in jobs:
                    f.cancel()
            finished, _ = cf.wait(train | jobs, timeout=0.2, return_when=cf.FIRST_COMPLETED)
            for f in finished:
                (train if f in train else jobs).discard(f)
                if f.cancelled():
                    continue
                try:
                    res = f.result()
                except cf.process.BrokenProcessPool as e:
                    if "signum" in got:
                        continue
                    raise GeolmError(f"a model process died ({e}); free memory or pass --jobs 1, then rerun with "
                                     "--resume") from None
                if len(res) == 3:  # a training bin: (entries, deferred jobs, interrupted exit code or None)
                    entries, deferred, intr = res
                    results.update(entries)
                    if intr is not None:
                        got.setdefault("signum", signal.SIGTERM if intr == 143 else signal.SIGINT)
                    elif "signum" not in got:
                        jobs |= {pool.submit(_run_deferred, j) for j in deferred}
                else:
                    done.append(res)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if "signum" in got:
        sys.stderr.write(f"interrupted; checkpoints and evaluation snapshots are in {Path(_JOB['cfg'].output)}"
                         f"/models; resume with the same command plus --resume\n")
        raise TrainingInterrupted(143 if got["signum"] == signal.SIGTERM else 130, 0, Path(_JOB["cfg"].output))
    return done


def _jobs(cfg, comm, n_models):
    """Parallel model processes: --jobs, or (0) one per core when there are >= 2 models and no MPI."""
    if comm.size > 1 or n_models < 2:
        return 1
    if cfg.jobs:
        return min(cfg.jobs, n_models)
    return max(1, min(os.cpu_count() or 1, n_models, 2))


def _log_every(spe):
    """A divisor of steps/epoch in [50, 400] (else spe), so fit's training-loss windows never straddle epochs."""
    return next((d for d in range(min(spe, 400), 49, -1) if spe % d == 0), spe)


def _model_config(name):
    J = _JOB
    cfg = J["cfg"]
    return G.GeoModelConfig(name=name, Vi=J["pad"] + 1, V=J["V"], H=cfg.dim, C=cfg.context, k=cfg.coord_dim,
                            n_succ=cfg.successor_context, k_succ=cfg.successor_dim)


def _model_task(mc):
    J = _JOB
    return make_task(mc, J["tables"][mc.table_set], J["Xtr"], J["ytr"], J["Xva"], J["yva"], J["tok_hash"])


def _train_model(name):
    """Train one model with geolm.training.train.fit -> ({name: entry, kappa variant names: entries}, deferred jobs).

    Sequential (one process): fit evaluates after every epoch and the kappa variants built on the model are scored
    right after it. Parallel processes (_JOB["jobs"] > 1): fit(defer_eval=True) saves each epoch's parameters as a
    snapshot instead of evaluating, and this returns the jobs: ("eval", name, step, None) per waiting snapshot and
    ("kappa", variant, name, final theta), which the pool runs on whichever process is free (_run_deferred):
    evaluations are small, independent pieces of work, so the two processes end together however unequal their
    models are. Same numbers as a sequential run with --threads 1 (BLAS bits depend on thread count). Snapshots
    left by an interrupted run are queued again (or, sequentially, evaluated by fit) when it is resumed."""
    J = _JOB
    cfg = J["cfg"]
    parallel = J["jobs"] > 1
    threads = 1 if parallel else cfg.threads
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, schedule="constant", clip=cfg.clip,
                       seed=cfg.seed, threads=threads, log_every=_log_every(J["spe"]), keep_checkpoints=1)
    mc = _model_config(name)
    task = _model_task(mc)
    theta = init_theta(mc, task.spec, cfg.seed)
    comm = J["comm"]
    run_dir = _run_dir(name)
    _log(f"[{name}] {task.spec.size:,} parameters, {J['spe']} steps/epoch x {cfg.epochs} epochs", comm)
    t0 = time.perf_counter()

    def on_eval(rec, theta):  # one line per epoch when fit's own progress lines are off (parallel processes)
        if not J["progress"]:
            _log(f"[{name}] epoch {rec['step'] / J['spe']:.0f}/{cfg.epochs} ({time.perf_counter() - t0:.0f} s)", comm)

    stop = J.get("stop")
    resume = cfg.resume and latest_checkpoint(run_dir) is not None  # a model the interrupted run never began starts
    res = fit(task, theta, tcfg, run_dir, resume=resume, progress=J["progress"], comm=comm, on_eval=on_eval,
              resume_hint="the same command plus --resume", should_stop=stop.is_set if stop is not None else None,
              defer_eval=parallel)
    secs = time.perf_counter() - t0
    entry = {"val_ppl": res["final_val_ppl"], "val_loss": res["val_loss"],
             "epochs": _epochs_from_history(res["history"], J["spe"]), "seconds": secs,
             "train_seconds": res["seconds"], "params": int(task.spec.size), "best_val_ppl": res["best_val_ppl"],
             "skipped_steps": res["skipped"], "threads": threads, "final_step": res["steps_done"]}
    out = {name: entry}
    kappas = [k for k, base in KAPPA.items() if base == name and k in J["names"]]
    if parallel:
        evals = [("eval", name, step, None) for step in res["pending"]]
        _log(f"[{name}] trained in {secs:.1f} s; {len(evals)} evaluations queued", comm)
        # kappa first: the longest jobs, so the queue's tail is short evaluations
        return out, [("kappa", k, name, theta.copy()) for k in kappas] + evals
    _log(f"[{name}] val ppl {_fmt(entry['val_ppl'])} in {secs:.1f} s", comm)
    for kname in kappas:
        out.update(_kappa_entries(kname, mc, task.spec, theta))
    return out, []


def _fmt(ppl):
    return "-" if ppl is None else f"{ppl:.2f}"


def _run_dir(name):
    return Path(_JOB["cfg"].output) / "models" / name


def _run_deferred(job):
    """One queued job in a pool process (one thread) -> (kind, name, arg, result, seconds); an evaluation's result
    is its completed eval record (geolm.training.train.run_deferred_eval)."""
    kind, name, arg, theta = job  # eval: (step, None); kappa: (base model, final theta)
    t0 = time.perf_counter()
    comm = _JOB["comm"]
    with thread_limit(1, comm):
        if kind == "eval":
            result = run_deferred_eval(_model_task(_model_config(name)), _run_dir(name), arg, comm)
        else:
            mc = _model_config(arg)
            result = _kappa_entries(name, mc, _model_task(mc).spec, theta)
    return kind, name, arg, result, time.perf_counter() - t0


def _merge_deferred(results, done, comm):
    """Put the finished queued jobs into results: kappa entries; each model's evaluations are recorded in its
    metrics.jsonl (record_deferred, which deletes their snapshots) and merged into its entry (per-epoch val_ppl,
    final val_ppl / val_loss, best_val_ppl, seconds incl. evaluation)."""
    spe = _JOB["spe"]
    evals = {}
    for kind, name, _, result, secs in done:
        if kind == "kappa":
            results.update(result)
        else:
            evals.setdefault(name, []).append((result, secs))
    for name, rows in evals.items():
        record_deferred(_run_dir(name), [r for r, _ in rows], comm)
        e = results[name]
        by_epoch = {int(round(r["step"] / spe)): r["val_ppl"] for r, _ in rows}
        known = {ep["epoch"] for ep in e["epochs"]}
        e["epochs"] += [{"epoch": k, "train_loss": None, "val_ppl": None} for k in sorted(by_epoch) if k not in known]
        e["epochs"].sort(key=lambda ep: ep["epoch"])
        for ep in e["epochs"]:
            if ep["epoch"] in by_epoch:
                ep["val_ppl"] = by_epoch[ep["epoch"]]
        for r, _ in rows:
            if r["step"] == e["final_step"]:
                e["val_loss"], e["val_ppl"] = r["val_loss"], r["val_ppl"]
        finite = [v for v in (ep["val_ppl"] for ep in e["epochs"]) if isinstance(v, float) and math.isfinite(v)]
        e["best_val_ppl"] = min(finite) if finite else None
        e["eval_seconds"] = sum(secs for _, secs in rows)
        e["seconds"] += e["eval_seconds"]
        _log(f"[{name}] val ppl {_fmt(e['val_ppl'])}; {e['seconds']:.1f} s with evaluation", comm)


def _kappa_entries(kname, mc, spec, theta):
    """The published (1, 1) and the held-out-fitted kappa/angle variants of a trained model -> {name: entry}."""
    J = _JOB
    cfg = J["cfg"]
    t0 = time.perf_counter()
    kres = kappa_variants(mc, J["tables"][mc.table_set], J["X"], J["A"], spec.views(theta), J["Xva"], J["yva"],
                          J["Xho"], J["yho"], J["pad"], cfg.seed, EVAL_BATCH)
    kt = time.perf_counter() - t0
    _log(f"[{kname}] published (1, 1): ppl {kres['published']['val_ppl']:.2f}; fitted "
         f"({kres['fit']['a']:.3f}, {kres['fit']['b']:.3f}): ppl {kres['fitted']['val_ppl']:.2f} ({kt:.1f} s)",
         J["comm"])
    return {kname: dict(kres["published"], epochs=[], params=int(spec.size), seconds=kt, base=mc.name,
                        coefficients=[1.0, 1.0]),
            kname + "_fit": dict(kres["fitted"], epochs=[], params=int(spec.size) + 2, seconds=kt, base=mc.name,
                                 fit=kres["fit"])}


def _threads():
    try:
        return max((i.get("num_threads", 0) for i in threadpool_info()), default=0)
    except Exception:  # noqa: BLE001
        return 0


def write_curves(path, results, epochs):
    curves = {}
    for name, r in results.items():
        if r.get("epochs"):
            curves[name] = ([e["epoch"] for e in r["epochs"]], [e["val_ppl"] for e in r["epochs"]])
        elif r.get("val_ppl") is not None:  # untrained (bigram, kappa): flat line
            curves[name] = ([1, max(1, epochs)], [r["val_ppl"]] * 2)
    if curves:
        plot_curves(curves, path, title="geometric LMs: validation perplexity", logy=True)


def table(summary):
    """Printable final table: model, params, val ppl, seconds."""
    rows = [f"{'model':<24}{'params':>12}{'val ppl':>12}{'seconds':>10}"]
    for name, r in summary["models"].items():
        v = r.get("val_ppl")
        rows.append(f"{name:<24}{r.get('params', 0):>12,}{_fmt(v):>12}"
                    f"{r.get('seconds', 0.0):>10.1f}")
    return "\n".join(rows)
