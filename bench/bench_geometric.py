"""Geometric LMs: examples/s of every trained model's training step, the MLP loop's fraction of the matmul peak,
and the projected (or, with --table, measured) wall time of the whole 2k-story, 5-epoch table.

    python bench/bench_geometric.py              # V = 3297 (the 2k-story vocabulary), B = 128, H = 64, C = 8
    python bench/bench_geometric.py --quick      # tiny shapes (CI smoke test)
    python bench/bench_geometric.py --table --data ../shared/data/tinystories   # run the real table (minutes)
    python bench/bench_geometric.py --pairs      # two processes side by side: the shared-cache slowdown

Step = what geolm.training.train.fit does per batch: task.loss_and_grads (zero grad, features, forward, fused in-place
softmax cross-entropy, backward) + global norm + clip + Adam. Timed with 1 BLAS thread and with all threads.
Baseline (validated first, then timed): the straightforward trigram step, one-hot matrix [B, 2 Vi] @ W1 through
geolm.ops.mlp and geolm.ops.losses, against the row-lookup / in-place-xent step of geolm.models.geometric.
FLOPs (GEMMs only, 2 m n k): forward 2 B F H + 2 B H V (row lookups count as none), backward 2 B H V (dW2)
+ 2 B H V (dh) + 2 B F H (dW1); attention models add their d x d projections and scores. % peak uses the
matmul peak measured with the same thread count.
Projection of the table: epochs x (steps/epoch x step + eval batches x eval forward), summed over models;
"2 procs" = the sum of 1-thread times / 2 (geometric_run --jobs 2 trains two models at a time, one thread each).
--pairs: ms per training step of a model alone (one process, one thread) and while a second process runs another
model's steps (or, as the control, "compute": an in-cache [64,128] @ [128,128] GEMM loop that uses the core but
hardly any memory): the slowdown two table processes inflict on each other through the shared L3 and memory.
"""
import argparse
import os
import queue
import sys
import tempfile
import time

import geolm  # noqa: F401  (first: sets OPENBLAS_THREAD_TIMEOUT before NumPy loads OpenBLAS)
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

from geolm.models import geometric as G
from geolm.apps.geometric_config import EVAL_BATCH, GeoRunConfig  # noqa: E402
from geolm.apps.geometric_report import table  # noqa: E402
from geolm.apps.geometric_run import run  # noqa: E402
from geolm.ops.losses import xent_backward, xent_forward  # noqa: E402
from geolm.ops.mlp import mlp_backward, mlp_forward  # noqa: E402
from geolm.training.optim import adam_init, adam_step, clip_scale, global_norm  # noqa: E402

FULL = dict(V=3297, B=128, H=64, C=8, k=3, K=4, n_succ=2, k_succ=32, train=425_866, val=199_329, epochs=5)
QUICK = dict(V=300, B=32, H=16, C=8, k=3, K=4, n_succ=2, k_succ=8, train=20_000, val=5_000, epochs=1)
TABLE = ("trigram", "geo_abs", "geo_rot", "geo_rot_nbrs", "hybrid", "geo_attention", "geo_shuffled")
# the table: every published model name (the kappa variants re-weight trained geo_abs / hybrid)
DEFAULT_PAIRS = "hybrid:trigram,hybrid:geo_abs,geo_abs:geo_rot,hybrid:compute,geo_abs:compute"
TABLE_MODELS = ("bigram", "trigram", "geo_abs", "geo_rot", "geo_rot_nbrs", "hybrid", "hybrid_kappa", "geo_abs_kappa",
                "geo_attention", "geo_shuffled")


def make_tables(sh, rng):
    V = sh["V"]
    X = rng.standard_normal((V, sh["k"]))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Xo = rng.standard_normal((V, sh["k_succ"]))
    Xo /= np.linalg.norm(Xo, axis=1, keepdims=True)
    nbr = np.stack([rng.choice(V, sh["K"], replace=False) for _ in range(V)]).astype(np.int32)
    return G.build_tables(X, nbr, V, Xo, sh["n_succ"])


def flops(mc, B):
    f = 2 * B * mc.F * mc.H + 6 * B * mc.H * mc.V + 2 * B * mc.F * mc.H
    if mc.kind == "attn":
        K1 = (mc.C if mc.full else 1) + 4
        f += 3 * (2 * B * mc.H * mc.H + 2 * 2 * B * K1 * mc.H * mc.H) + 6 * B * mc.H * mc.H
    return f


def problem(name, sh, tables, rng):
    mc = G.GeoModelConfig(name=name, Vi=sh["V"] + 1, V=sh["V"], H=sh["H"], C=sh["C"], k=sh["k"],
                          n_succ=sh["n_succ"], k_succ=sh["k_succ"])
    spec, theta = G.init_params(mc, rng)
    grad = np.zeros_like(theta)
    ctx = rng.integers(0, sh["V"], (sh["B"], sh["C"])).astype(np.int32)
    ctx[0, :3] = sh["V"]  # some PAD
    y = rng.integers(0, sh["V"], sh["B"]).astype(np.int32)
    return mc, spec, theta, grad, ctx, y


def lean_step(mc, spec, theta, grad, adam, tables, ctx, y):
    """What geolm.training.train.fit does per batch: zero, loss+grads, global norm (finite guard + clip), fused clip+Adam."""
    loss, _ = G.loss_and_grads(theta, grad, (ctx, y), mc, spec, tables)
    norm = global_norm(grad)
    adam_step(theta, grad, adam, 1e-4, grad_scale=clip_scale(norm, 1.0))
    return loss


COMPUTE = "compute"  # the --pairs control partner


def _pair_worker(i, name, sh, seconds, barrier, out):
    """Process i of --pairs: one BLAS thread, build the model's problem, warm up, wait for the partner, then
    run training steps (or the in-cache GEMM loop) for `seconds` -> out.put((i, ms per step))."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        rng = np.random.default_rng(0)
        if name == COMPUTE:
            a = rng.standard_normal((64, 128)).astype(np.float32)
            b = rng.standard_normal((128, 128)).astype(np.float32)
            fn = lambda: a @ b  # noqa: E731
        else:
            tables = make_tables(sh, rng)
            mc, spec, theta, grad, ctx, y = problem(name, sh, tables, rng)
            adam = adam_init(theta)
            fn = lambda: lean_step(mc, spec, theta, grad, adam, tables, ctx, y)  # noqa: E731
        for _ in range(3):
            fn()
        barrier.wait(timeout=600)  # a partner that failed while building breaks the barrier instead of hanging
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            n += 1
        out.put((i, 1e3 * (time.perf_counter() - t0) / n))


def parse_pairs(text):
    """'a:b,c:d' -> [(a, b), (c, d)]; a clear one-line exit on an unknown name or a malformed pair."""
    pairs = [tuple(x.strip() for x in p.split(":")) for p in text.split(",") if p.strip()]
    bad = [":".join(p) for p in pairs if len(p) != 2] + [n for p in pairs for n in p
                                                         if n not in G.MODELS and n != COMPUTE]
    if bad or not pairs:
        raise SystemExit(f"--pairs: unknown model or malformed pair {(bad or [text])[0]!r}; give A:B pairs of "
                         f"{', '.join(G.MODELS)} or {COMPUTE}")
    return pairs


def run_pairs(pairs, sh, seconds, repeats):
    """-> rows: each model's ms/step alone and beside each partner, run as forked processes; medians over
    `repeats` rounds (each round times every model alone, then every pair: the VM's drift hits both alike)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")

    def together(names):
        barrier, out = ctx.Barrier(len(names)), ctx.Queue()
        procs = [ctx.Process(target=_pair_worker, args=(i, n, sh, seconds, barrier, out))
                 for i, n in enumerate(names)]
        for pr in procs:
            pr.start()
        res = []
        while len(res) < len(procs):  # poll, so a process that died never leaves the parent waiting
            try:
                res.append(out.get(timeout=1.0))
            except queue.Empty:
                if any(pr.exitcode for pr in procs):
                    for pr in procs:
                        pr.terminate()
                    raise RuntimeError(f"a --pairs process failed (see its traceback above): {names}")
        for pr in procs:
            pr.join()
        return [ms for _, ms in sorted(res)]

    names = list(dict.fromkeys(n for pr in pairs for n in pr))
    runs_alone, runs_pair = [], []
    for _ in range(repeats):
        runs_alone.append({n: together([n])[0] for n in names})
        runs_pair.append([together(list(pr)) for pr in pairs])
    alone = {n: float(np.median([r[n] for r in runs_alone])) for n in names}
    rows = []
    print(f"\n{'model':<16}{'alone ms':>10}{'partner':>16}{'paired ms':>11}{'slowdown':>10}")
    for i, (a, b) in enumerate(pairs):
        both = np.median([r[i] for r in runs_pair], axis=0)
        for n, other, ms in ((a, b, both[0]), (b, a, both[1])):
            print(f"{n:<16}{alone[n]:>10.3f}{other:>16}{ms:>11.3f}{100 * (ms / alone[n] - 1):>9.1f}%")
            rows.append(dict(what="pair", model=n, partner=other, alone_ms=alone[n], paired_ms=ms,
                             slowdown=ms / alone[n] - 1))
    return rows


def naive_trigram_loss_grads(spec, theta, ctx, y, Vi):
    """Baseline: dense one-hot [B, 2 Vi] through geolm.ops.mlp + geolm.ops.losses."""
    p = spec.views(theta)
    B = len(y)
    x = np.zeros((B, 2 * Vi), theta.dtype)
    x[np.arange(B), ctx[:, -2]] = 1.0
    x[np.arange(B), Vi + ctx[:, -1]] = 1.0
    logits, cache = mlp_forward(x, p, act="relu")
    loss, xc = xent_forward(logits, y)
    _, dp = mlp_backward(xent_backward(1.0, xc), cache)
    return loss, dp


def validate_baseline(spec, theta, tables, mc, ctx, y):
    t64 = theta.astype(np.float64)
    g = np.zeros_like(t64)
    loss, _ = G.loss_and_grads(t64, g, (ctx, y), mc, spec, tables)
    ref, dp = naive_trigram_loss_grads(spec, t64, ctx, y, mc.Vi)
    gv = spec.views(g)
    err = max(float(np.abs(gv[a][b] - dp[a][b]).max()) for a in dp for b in dp[a])
    if abs(loss - ref) > 1e-9 or err > 1e-9:
        raise AssertionError(f"lean trigram step disagrees with the one-hot baseline: loss {loss} vs {ref}, "
                             f"grad err {err:.2e}")
    return err


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.common_args(ap)
    ap.add_argument("--models", default=",".join(G.MODELS), help="comma list of trained models to time")
    ap.add_argument("--table", action="store_true", help="also run the real table via geolm.apps.geometric_run (slow)")
    ap.add_argument("--data", default=None, help="data for --table (default: the geometric_run default)")
    ap.add_argument("--table-models", default=",".join(TABLE_MODELS),
                    help="models of the --table run (default: the published table's ten; 'all' adds the controls "
                         "and successor models)")
    ap.add_argument("--pairs", nargs="?", const=DEFAULT_PAIRS, default=None, metavar="A:B,...",
                    help="time models alone and two at a time in two processes (default pairs: %(const)s; "
                         f"'{COMPUTE}' = the in-cache GEMM control)")
    ap.add_argument("--pair-seconds", type=float, default=None, help="seconds per --pairs measurement (default 4)")
    ap.add_argument("--pair-repeats", type=int, default=None, help="--pairs rounds, medians reported (default 3)")
    args = ap.parse_args(argv)
    pairs = parse_pairs(args.pairs) if args.pairs else []
    if (args.pair_seconds is not None and args.pair_seconds <= 0) or (args.pair_repeats is not None
                                                                     and args.pair_repeats < 1):
        raise SystemExit("--pair-seconds must be > 0 and --pair-repeats >= 1")
    sh = dict(QUICK if args.quick else FULL)
    args.repeat = args.repeat or (2 if args.quick else 7)
    print(harness.env_header())
    from threadpoolctl import threadpool_limits

    peak1 = harness.matmul_peak(np.float32)
    with threadpool_limits(1):
        peak_1t = harness.matmul_peak(np.float32)
    print(f"float32 matmul peak (measured): {peak1:.1f} GFLOP/s all threads, {peak_1t:.1f} GFLOP/s one thread")
    print("shapes: " + ", ".join(f"{k}={v}" for k, v in sh.items()))

    rng = np.random.default_rng(0)
    tables = make_tables(sh, rng)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    rows = []

    mc, spec, theta, grad, ctx, y = problem("trigram", sh, tables, rng)
    err = validate_baseline(spec, theta, tables, mc, ctx, y)
    t_naive = harness.measure(lambda: naive_trigram_loss_grads(spec, theta, ctx, y, mc.Vi), warmup=1,
                              repeat=args.repeat)[0]
    g = np.zeros_like(theta)
    t_lean = harness.measure(lambda: G.loss_and_grads(theta, g, (ctx, y), mc, spec, tables), warmup=1,
                             repeat=args.repeat)[0]
    print(f"\ntrigram loss+grads: one-hot matmul baseline {1e3 * t_naive:.2f} ms, row lookups + in-place xent "
          f"{1e3 * t_lean:.2f} ms ({t_naive / t_lean:.1f}x; validated, max grad err {err:.1e})")
    rows.append(dict(what="trigram loss+grads baseline (one-hot matmul)", seconds=t_naive))
    rows.append(dict(what="trigram loss+grads lean", seconds=t_lean, speedup=t_naive / t_lean))

    B = sh["B"]
    spe = -(-sh["train"] // B)
    n_eval = -(-sh["val"] // EVAL_BATCH)
    print(f"\n{'model':<24}{'params':>10}{'thr':>4}{'l&g ms':>9}{'step ms':>9}{'ex/s':>9}{'GF/s':>7}"
          f"{'%peak l&g':>10}{'%peak step':>11}{'eval ms':>9}{'5ep s':>8}")
    proj = {1: 0.0, 0: 0.0}
    for name in names:
        mc, spec, theta, grad, ctx, y = problem(name, sh, tables, rng)
        adam = adam_init(theta)
        F = flops(mc, B)
        cb = rng.integers(0, sh["V"], (EVAL_BATCH, sh["C"])).astype(np.int32)
        yb = rng.integers(0, sh["V"], EVAL_BATCH).astype(np.int32)
        for thr in (1, 0):
            with threadpool_limits(1 if thr == 1 else None):
                peak = peak_1t if thr == 1 else peak1
                t_lg = harness.measure(lambda: G.loss_and_grads(theta, grad, (ctx, y), mc, spec, tables), warmup=1,
                                       repeat=args.repeat)[0]
                t_st = harness.measure(lambda: lean_step(mc, spec, theta, grad, adam, tables, ctx, y), warmup=1,
                                       repeat=args.repeat)[0]
                t_ev = harness.measure(lambda: G.eval_nll(theta, (cb, yb), mc, spec, tables), warmup=1,
                                       repeat=max(3, args.repeat // 2))[0]
            t5 = sh["epochs"] * (spe * t_st + n_eval * t_ev)
            if name in TABLE:
                proj[thr] += t5
            lab = "1" if thr == 1 else "all"
            print(f"{name:<24}{spec.size:>10,}{lab:>4}{1e3 * t_lg:>9.2f}{1e3 * t_st:>9.2f}{B / t_st:>9,.0f}"
                  f"{F / t_st / 1e9:>7.1f}{100 * F / t_lg / 1e9 / peak:>9.1f}%{100 * F / t_st / 1e9 / peak:>10.1f}%"
                  f"{1e3 * t_ev:>9.1f}{t5:>8.1f}")
            rows.append(dict(what=name, threads=lab, params=spec.size, lg_s=t_lg, step_s=t_st,
                             examples_per_s=B / t_st, gflops_step=F / t_st / 1e9, frac_peak_lg=F / t_lg / 1e9 / peak,
                             frac_peak_step=F / t_st / 1e9 / peak, eval_batch_s=t_ev, eval_batch=EVAL_BATCH,
                             projected_5ep_s=t5))
    print(f"\nprojected table ({', '.join(n for n in TABLE if n in names)}; {spe} steps/epoch, {n_eval} eval batches,"
          f" {sh['epochs']} epochs; bigram and kappa re-weighting add seconds):")
    print(f"  sequential, all threads: {proj[0]:.0f} s;  2 processes x 1 thread (--jobs 2): {proj[1] / 2:.0f} s "
          f"(target < 180 s)")
    rows.append(dict(what="projected table", sequential_s=proj[0], jobs2_s=proj[1] / 2))

    if pairs:
        seconds = args.pair_seconds or (0.3 if args.quick else 4.0)
        repeats = args.pair_repeats or (1 if args.quick else 3)
        print(f"\n--pairs: {seconds:g} s per measurement, median of {repeats} rounds, one BLAS thread per process")
        rows += run_pairs(pairs, sh, seconds, repeats)

    if args.table:
        out = tempfile.mkdtemp(prefix="bench_geometric_table_")
        cfg = GeoRunConfig(data=args.data or GeoRunConfig.data, output=out, models=args.table_models,
                           epochs=sh["epochs"] if not args.quick else 1,
                           max_train_stories=2000 if not args.quick else 50,
                           max_val_stories=1000 if not args.quick else 20)
        t0 = time.perf_counter()
        summary = run(cfg, progress=False)
        wall = time.perf_counter() - t0
        print(table(summary))
        cpu = sum(r.get("seconds", 0.0) for n, r in summary["models"].items() if not n.endswith("_fit"))
        target = "" if args.quick else " (target < 180 s)"
        print(f"whole table wall time: {wall:.1f} s{target} for {args.table_models}; "
              f"{summary['data']['source']}; data + tokenizer {summary['data']['seconds']:.1f} s, geometry "
              f"{summary['data']['geometry']['seconds']:.1f} s, per-model seconds summed {cpu:.1f} s; output {out}")
        rows.append(dict(what="table wall time", seconds=wall, models=args.table_models, model_seconds_sum=cpu,
                         output=out))
    harness.write_json(args, dict(shapes=sh, peak_gflops=peak1, peak_gflops_1thread=peak_1t, rows=rows))


if __name__ == "__main__":
    main()
