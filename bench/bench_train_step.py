"""One full Riemannian training step at the original's shapes: time, tokens/s, useful FLOPs vs the matmul peak,
the split between parts, the dense-metric step, and peak memory against the number of RK4 steps and the batch.

    python bench/bench_train_step.py            # batch 32, seq 192, d 384, r 64, h_U 128, h_f 1536, S 4,
                                                # 4 layers x 6 heads, vocab 4096, float32
    python bench/bench_train_step.py --quick    # tiny shapes, seconds (CI smoke test)

The step = encoder forward, RK4 forward (S steps x 4 field evaluations), head + cross-entropy + penalties,
discrete adjoint (per stage, in reverse: recompute its field cache from the stored stage input, then its VJP),
encoder backward, global-norm clip, Adam.

FLOPs are counted analytically, 2*m*n*k per matmul (GEMMs only; elementwise, softmax, LayerNorm, RK4 axpys
and Adam are not counted):
  encoder layer (fwd)  N (2 D 3D + 2 D D + 2*2 D F) + 2*2 B T^2 D      (qkv, proj, MLP, full QK^T and AV)
  head (fwd)           2 N D V
  field eval (fwd)     f-MLP 2 N (D h_f + h_f D), U-MLP 2 N (D h_U + h_U R D), Woodbury 2 N R^2 D + 4 N R D
                       (dense: 2 N R D^2 for g = U^T U + 2/3 N D^3 for one LU, as in the issue's count)
  useful = 3 x fwd (forward + backward of activations and weights) for encoder and head;
           4 x fwd for the 4 S field evaluations (forward, recompute in the adjoint, 2 x for their VJPs).
The time split runs each part's own forward / backward on the same shapes, in the proportion the step calls
them (a field part costs 4S x (2 fwd + bwd)); the field's parts run the step's own block functions over its
blocks of riemann_field.FIELD_BLOCK tokens; "other" = step - sum of parts (RK4 axpys, embeddings, LayerNorm,
clip, Adam, Python). The in-situ split runs one more step under cProfile and charges each geolm function's
own time (and that of the NumPy / built-in calls it makes) to the part its module belongs to: what each part costs
inside the step, where it follows other parts' work (BLAS threads still spinning, caches holding other data).
The dense step is estimated: Woodbury step - Woodbury metric part + dense metric part, the dense solve being
timed on --dense-tokens tokens and scaled linearly to N (the dense g is N x D x D: 3.6 GB per field evaluation in
float32 at N = 6144, one evaluation's live at a time in the backward). At --quick shapes the
dense step also runs for real, so the estimate is checked against a measurement.
On a shared machine wall time depends on what else runs; the CPU-time columns (process time of all threads,
against the GEMM's GFLOP per CPU-second) measure efficiency without that noise (spinning BLAS threads count).
Peak memory: tracemalloc (NumPy registers its buffers with it) in a fresh subprocess per (batch, RK4 step count),
one step after a warm-up on one sequence, minus the state held before the step (theta, grad, Adam moments, batch),
and the subprocess's peak resident set (maxrss: everything, the interpreter and the warm-up included).
    python bench/bench_train_step.py --mem-only --mem-steps 4,8,16 --mem-batch 8     # against RK4 steps
    python bench/bench_train_step.py --mem-only --mem-steps 4 --mem-batch 8,16,32    # against batch
A/B of the bias + GELU kernels' paths inside the step (steps alternate in one process, the order flipped per pair):
    python bench/bench_train_step.py --ab-gelu 3
Page faults: minor page faults (getrusage ru_minflt) per steady-state step, in a fresh subprocess each, with a
riemann.FieldWorkspace held over the steps (as training holds one) and with fresh allocations (workspace=None):
the workspace exists so that the U-MLP's large blocks are not new, first-touched memory at every evaluation.
"""
import argparse
import cProfile
import dataclasses
import gc
import json
import math
import os
import pstats
import resource
import subprocess
import sys
import time

import geolm  # noqa: F401  (first: sets OPENBLAS_THREAD_TIMEOUT before NumPy loads OpenBLAS)
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

from geolm.models import riemann, riemann_field  # noqa: E402
from geolm.ops.losses import xent_backward, xent_forward  # noqa: E402
from geolm.ops.metric import (dense_metric_backward, dense_metric_forward, metric_solve_backward,  # noqa: E402
                              metric_solve_forward)
from geolm.ops.mlp import mlp_forward  # noqa: E402
from geolm.training.optim import adam_init, adam_step, clip_grad_norm  # noqa: E402
from geolm.ops.transformer import encoder_backward, encoder_forward  # noqa: E402

FULL = dict(batch=32, seq=192, dim=384, rank=64, hidden=128, field_hidden=1536, ode_steps=4, layers=4, heads=6,
            vocab=4096)
QUICK = dict(batch=2, seq=16, dim=32, rank=4, hidden=8, field_hidden=64, ode_steps=2, layers=1, heads=2, vocab=128)


def core_peak(n=1024, repeat=5):
    """float32 GEMM GFLOP per CPU-second (all threads' CPU time): the per-core peak, robust to other processes
    time-slicing the cores (wall-clock peaks are not)."""
    return harness.matmul_peak(np.float32, n, repeat, clock=time.process_time)


def make_cfg(sh, metric="lowrank", ode_steps=None):
    return riemann.RiemannConfig(vocab_size=sh["vocab"], n_vocab=sh["vocab"], dim=sh["dim"], layers=sh["layers"],
                                 heads=sh["heads"], ff_mult=4, seq_len=sh["seq"], rank=sh["rank"],
                                 hidden=sh["hidden"], field_hidden=sh["field_hidden"],
                                 ode_steps=ode_steps or sh["ode_steps"], metric=metric)


def make_problem(sh, metric="lowrank", ode_steps=None, seed=0):
    """-> (cfg, spec, theta, grad, adam state, batch). Weights are moved off the zero-f init so the flow is real."""
    cfg = make_cfg(sh, metric, ode_steps)
    rng = np.random.default_rng(seed)
    spec, theta = riemann.init_params(cfg, rng)
    p = spec.views(theta)
    f2 = p["field"]["f"]["fc2"]["w"]
    f2[...] = rng.normal(0.0, 0.3 / math.sqrt(f2.shape[0]), size=f2.shape)  # nonzero field
    u2 = p["field"]["U"]["fc2"]["w"] if "U" in p["field"] else None
    if u2 is not None:
        u2[...] = rng.normal(0.0, 0.3 / math.sqrt(u2.shape[0]), size=u2.shape)  # g visibly != eps I
    ids = rng.integers(0, sh["vocab"] - 3, size=(sh["batch"], sh["seq"] + 1)).astype(np.int32)
    batch = (ids[:, :-1].copy(), ids[:, 1:].copy())
    return cfg, spec, theta, np.zeros_like(theta), adam_init(theta), batch


def train_step(theta, grad, adam, batch, cfg, spec, workspace=None):
    loss, stats = riemann.loss_and_grads(theta, grad, batch, cfg, spec, workspace=workspace)
    clip_grad_norm(grad, 1.0)
    adam_step(theta, grad, adam, 1e-4)
    return loss


def flops(sh, metric="lowrank"):
    """Analytic forward GEMM FLOPs per part -> dict, and the useful total of one training step."""
    B, T, D, R, hU, hf, S, L, V = (sh[k] for k in ("batch", "seq", "dim", "rank", "hidden", "field_hidden",
                                                   "ode_steps", "layers", "vocab"))
    N, F = B * T, 4 * D
    fw = {"encoder": L * (N * (2 * D * 3 * D + 2 * D * D + 2 * 2 * D * F) + 2 * 2 * B * T * T * D),
          "head": 2 * N * D * V,
          "f_mlp": 2 * N * (D * hf + hf * D),
          "u_mlp": 2 * N * (D * hU + hU * R * D),
          "metric": (2 * N * R * R * D + 4 * N * R * D) if metric != "dense"
          else (2 * N * R * D * D + (2 / 3) * N * D ** 3)}
    mult = {"encoder": 3, "head": 3, "f_mlp": 4 * 4 * S, "u_mlp": 4 * 4 * S, "metric": 4 * 4 * S}
    per_step = {k: fw[k] * mult[k] for k in fw}
    return fw, per_step, sum(per_step.values())


def _tc(fn, args, step=False):
    """(median wall seconds, median process CPU seconds over all threads) of fn() via the harness (the warm-up call
    compiles any Numba kernel; CPU time is robust to time-slicing by other processes). Default repeats: quick 2;
    full shapes 3 for the parts, 1 for the step."""
    rep = args.repeat or (2 if args.quick else (1 if step else 3))
    cpu = []

    def timed():
        c = time.process_time()
        fn()
        cpu.append(time.process_time() - c)

    t = harness.measure(timed, warmup=1, repeat=rep)[0]
    return t, float(np.median(cpu[1:]))


def _t(fn, args, step=False):
    """Median wall seconds of fn() (see _tc)."""
    return _tc(fn, args, step)[0]


def part_times(sh, cfg, spec, theta, batch, ws, args):
    """(wall, CPU) seconds per training step spent in each part, each timed on its own at the step's shapes (U / dU
    buffers from the step's workspace ws, its slots as one field evaluation uses them)."""
    rf = riemann_field
    p = spec.views(theta)
    B, T, D = sh["batch"], sh["seq"], sh["dim"]
    N, S = B * T, cfg.ode_steps
    ids, targets = batch
    rng = np.random.default_rng(1)
    wall, cpu = {}, {}

    def tc(fn):
        return np.array(_tc(fn, args))

    # encoder
    t_f = tc(lambda: encoder_forward(ids, p["enc"], cfg.heads))
    h, cenc = encoder_forward(ids, p["enc"], cfg.heads)
    dh = rng.normal(size=h.shape).astype(h.dtype)
    t = t_f + tc(lambda: encoder_backward(dh, cenc))
    wall["encoder"], cpu["encoder"] = t
    del cenc
    z = np.ascontiguousarray(h.reshape(N, D))

    def head():  # final LN + linear + cross-entropy, forward and backward
        logits, ch = riemann.head_forward(z, p, cfg)
        ce, cx = xent_forward(logits, targets.reshape(-1))
        riemann.head_backward(xent_backward(1.0, cx), ch, cfg)

    wall["head"], cpu["head"] = tc(head)
    # the field's parts: 4S evaluations forward, 4S recomputed in the adjoint, 4S backward; each part runs the
    # functions the step runs, over the step's blocks of FIELD_BLOCK tokens (U / dU buffers from a workspace)
    pf = p["field"]
    n_ev = 4 * S
    blocks = [(lo, min(N, lo + rf.FIELD_BLOCK)) for lo in range(0, N, rf.FIELD_BLOCK)]

    def mlp_fwd(name):
        wb = rf.augment_fc2(pf[name], ws) if name == "U" else None  # as the step: bias inside the GEMM
        return [rf.block_mlp_forward(z[lo:hi], pf[name], wb, ws, (b,)) for b, (lo, hi) in enumerate(blocks)]

    def mlp_bwd(name, outs):
        dp = rf.zeros_like_tree(pf[name])
        for y, c in outs:
            rf.block_mlp_backward(y.reshape(y.shape[0], -1), c, dp, ws, name)  # any cotangent of y's shape

    def each_block(fn):
        def go():
            for lo, hi in blocks:
                fn(lo, hi)
        return go

    t_f = tc(each_block(lambda lo, hi: rf.block_mlp_forward(z[lo:hi], pf["f"])))
    fo = mlp_fwd("f")
    t = n_ev * (2 * t_f + tc(lambda: mlp_bwd("f", fo)))
    wall["f_mlp"], cpu["f_mlp"] = t
    f = np.concatenate([y for y, _ in fo])  # [N,D]
    if "U" in pf:
        t_f = tc(lambda: mlp_fwd("U"))
        uo = mlp_fwd("U")
        t = n_ev * (2 * t_f + tc(lambda: mlp_bwd("U", uo)))
        wall["u_mlp"], cpu["u_mlp"] = t
        Us = [u.reshape(hi - lo, cfg.rank, D) for (u, _), (lo, hi) in zip(uo, blocks)]
        t_f = tc(each_block(lambda lo, hi: metric_solve_forward(Us[lo // rf.FIELD_BLOCK], f[lo:hi], cfg.eps,
                                                                cfg.alpha)))
        cms = [metric_solve_forward(U, f[lo:hi], cfg.eps, cfg.alpha)[2] for U, (lo, hi) in zip(Us, blocks)]
        dld = rng.normal(size=N).astype(f.dtype)

        def metric_bwd():
            for cm, (lo, hi) in zip(cms, blocks):
                metric_solve_backward(f[lo:hi], dld[lo:hi], cm, dU_out=ws.take(("U", "dU"), cm[1].shape, f.dtype))

        t = n_ev * (2 * t_f + tc(metric_bwd))
        wall["metric"], cpu["metric"] = t
        del uo, Us, cms
    return wall, cpu, z, f


# module -> part of the in-situ split (functions outside geolm are charged to their geolm callers)
SITU_PARTS = {"riemann_field.py": "field MLPs (GEMMs)", "metric.py": "metric solve",
              "metric_kernels.py": "metric solve", "activations.py": "bias + GELU", "gelu_kernels.py": "bias + GELU",
              "ode.py": "RK4 combinations", "optim.py": "clip + Adam"}
SITU_ENCODER = ("transformer.py", "attention.py", "mlp.py", "linear.py", "layernorm.py", "losses.py", "riemann.py",
                "embedding.py")


def _situ_part(path):
    name = os.path.basename(path)
    return SITU_PARTS.get(name) or ("encoder + head" if name in SITU_ENCODER else "other")


def in_situ_split(step):
    """Run step() once under cProfile -> (wall seconds, {part: seconds}) by SITU_PARTS. A function outside geolm
    (NumPy's Python layer, built-ins, threadpoolctl) is charged to the geolm functions that called it, in proportion
    to the time each caller spent in it, up the call chain."""
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    step()
    prof.disable()
    wall = time.perf_counter() - t
    stats = pstats.Stats(prof).stats
    memo = {}

    def shares(func, seen=()):  # {part: fraction} of func's own time
        if func in memo:
            return memo[func]
        path = func[0]
        if os.sep + "geolm" + os.sep in path:
            out = {_situ_part(path): 1.0}
        else:
            callers = stats[func][4] if func in stats else {}
            total = sum(v[3] for v in callers.values())
            out = {}
            for c, v in callers.items():
                if total <= 0 or c in seen or c == func:
                    continue
                for k, w in shares(c, seen + (func,)).items():
                    out[k] = out.get(k, 0.0) + w * v[3] / total
            out = out or {"other": 1.0}
        memo[func] = out
        return out

    parts = {}
    for func, (_, _, own, _, _) in stats.items():
        for k, w in shares(func).items():
            parts[k] = parts.get(k, 0.0) + own * w
    return wall, parts


def situ_report(wall, parts, per, peak):
    """Table rows of the in-situ split, with each part's fraction of the peak where its GEMM FLOPs are counted."""
    gf = {"field MLPs (GEMMs)": per.get("f_mlp", 0.0) + per.get("u_mlp", 0.0), "metric solve": per.get("metric", 0.0),
          "encoder + head": per.get("encoder", 0.0) + per.get("head", 0.0)}
    rows = []
    for k, t in sorted(parts.items(), key=lambda kv: -kv[1]):
        g = gf.get(k, 0.0) / 1e9
        rows.append(dict(part=k, s_in_step=t, share_pct=100 * t / wall, gflop=g, gflops=g / t if t > 0 else 0.0,
                         pct_peak=100 * g / t / peak if t > 0 and g else 0.0))
    return rows


def dense_metric_time(sh, cfg, spec, theta, z, f, args):
    """Dense vs Woodbury metric solve (fwd + bwd) on a token subset; validated; -> per-token seconds each."""
    n = min(args.dense_tokens, z.shape[0])
    pf = spec.views(theta)["field"]
    u, _ = mlp_forward(z[:n], pf["U"])
    U = np.ascontiguousarray(u.reshape(n, cfg.rank, cfg.dim))
    fs = np.ascontiguousarray(f[:n])
    rng = np.random.default_rng(2)
    dv = rng.normal(size=fs.shape).astype(fs.dtype)
    dl = rng.normal(size=n).astype(fs.dtype)
    v_w, l_w, c_w = metric_solve_forward(U, fs, cfg.eps, cfg.alpha)
    v_d, l_d, c_d = dense_metric_forward(U, fs, cfg.eps, cfg.alpha)
    gw, gd = metric_solve_backward(dv, dl, c_w), dense_metric_backward(dv, dl, c_d)
    errs = {k: harness.max_rel_err(a, b) for k, a, b in
            (("v", v_w, v_d), ("logdet", l_w, l_d), ("dU", gw[0], gd[0]), ("df", gw[1], gd[1]))}
    harness.validate("Woodbury vs dense metric (v, logdet, dU, df)", [v_w, l_w, *gw], [v_d, l_d, *gd], 2e-2)

    def run(fwd, bwd):
        def go():
            _, _, c = fwd(U, fs, cfg.eps, cfg.alpha)
            bwd(dv, dl, c)
        return go

    t_w = _t(run(metric_solve_forward, metric_solve_backward), args)
    t_wf = _t(lambda: metric_solve_forward(U, fs, cfg.eps, cfg.alpha), args)
    t_d = _t(run(dense_metric_forward, dense_metric_backward), args)
    t_df = _t(lambda: dense_metric_forward(U, fs, cfg.eps, cfg.alpha), args)
    # per step per token: 4S x (2 fwd + bwd) = 4S x (fwd + (fwd+bwd))
    n_ev = 4 * cfg.ode_steps
    return {"tokens": n, "woodbury_s_per_token": n_ev * (t_wf + t_w) / n,
            "dense_s_per_token": n_ev * (t_df + t_d) / n, "max_rel_err": max(errs.values()), "errs": errs,
            "eval_woodbury_s": t_w, "eval_dense_s": t_d}


# ----------------------------------------------------------------------------- memory (child process)

def mem_child(sh, S):
    import tracemalloc
    cfg, spec, theta, grad, adam, batch = make_problem(sh, ode_steps=S)
    ws = riemann.FieldWorkspace()
    train_step(theta, grad, adam, (batch[0][:1], batch[1][:1]), cfg, spec, ws)  # warm-up on one sequence: JIT load
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    train_step(theta, grad, adam, batch, cfg, spec, ws)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({"S": S, "batch": sh["batch"], "peak_bytes": peak - base, "workspace_bytes": ws.nbytes,
                      "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def faults_child(sh, mode, steps):
    """Print minor page faults per step over `steps` steady-state steps (after two warm-up steps)."""
    cfg, spec, theta, grad, adam, batch = make_problem(sh)
    ws = riemann.FieldWorkspace() if mode == "workspace" else None
    for _ in range(2):  # JIT load, workspace slots, allocator state
        train_step(theta, grad, adam, batch, cfg, spec, ws)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        train_step(theta, grad, adam, batch, cfg, spec, ws)
    f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    print(json.dumps({"mode": mode, "steps": steps, "minflt_per_step": (f1 - f0) / steps,
                      "workspace_MiB": ws.nbytes / 2**20 if ws is not None else 0.0}))


def page_faults(sh, steps, args):
    """{mode: child record} for the workspace and fresh-allocation modes, each in its own process."""
    out = {}
    for mode in ("workspace", "fresh"):
        cmd = [sys.executable, os.path.abspath(__file__), "--faults-child", mode, "--faults-steps", str(steps),
               "--shapes", json.dumps(sh), "--threads", str(args.threads)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"page-fault child ({mode}) failed: {r.stderr.strip().splitlines()[-1:]}")
        out[mode] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def memory_sweep(sh, steps, batches, args):
    """One child record per (batch, S), each in a fresh process."""
    rows = []
    for B in batches:
        for S in steps:
            cmd = [sys.executable, os.path.abspath(__file__), "--mem-child", str(S), "--shapes",
                   json.dumps(dict(sh, batch=B)), "--threads", str(args.threads)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"memory child batch={B} S={S} failed: {r.stderr.strip().splitlines()[-1:]}")
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return rows


def memory_report(sh, mem):
    """Table rows: peak per (batch, S), and the growth per added RK4 step in units of one [N,D] state."""
    mrows = []
    for m in mem:
        N = m["batch"] * sh["seq"]
        state = N * sh["dim"] * 4  # one float32 [N,D] array
        first = next(r for r in mem if r["batch"] == m["batch"])  # the smallest S at this batch
        extra, ds = m["peak_bytes"] - first["peak_bytes"], m["S"] - first["S"]
        mrows.append(dict(batch=m["batch"], N=N, S=m["S"], peak_MiB=m["peak_bytes"] / 2**20,
                          KiB_per_token=m["peak_bytes"] / N / 2**10, workspace_MiB=m["workspace_bytes"] / 2**20,
                          maxrss_MiB=m["maxrss_kb"] / 1024, growth_per_step_MiB=extra / ds / 2**20 if ds else 0.0,
                          states_per_step=extra / ds / state if ds else 0.0))
    return mrows


def gelu_ab(sh, pairs):
    """Alternate training steps with the bias + GELU kernels serial at field-block size (the library's
    gelu_kernels.PARALLEL_SIZE) and parallel at every size (PARALLEL_SIZE 0), in one process, `pairs` pairs, the
    order flipped every pair -> {mode: [seconds]}."""
    from geolm.ops import gelu_kernels
    default = gelu_kernels.PARALLEL_SIZE
    modes = {"serial at block size (default)": default, "parallel": 0}
    cfg, spec, theta, grad, adam, batch = make_problem(sh)
    ws = riemann.FieldWorkspace()
    times = {m: [] for m in modes}
    try:
        for size in modes.values():  # warm-up of both paths (compiles)
            gelu_kernels.PARALLEL_SIZE = size
            train_step(theta, grad, adam, batch, cfg, spec, ws)
        for i in range(pairs):
            for m in (list(modes) if i % 2 == 0 else list(modes)[::-1]):
                gelu_kernels.PARALLEL_SIZE = modes[m]
                t = time.perf_counter()
                train_step(theta, grad, adam, batch, cfg, spec, ws)
                times[m].append(time.perf_counter() - t)
    finally:
        gelu_kernels.PARALLEL_SIZE = default
    a, b = (np.array(v) for v in times.values())
    print(f"bias + GELU A/B, {pairs} pairs of steps, alternating order: " + ", ".join(
        f"{m} mean {np.mean(v):.3f} s ({' '.join(f'{x:.2f}' for x in v)})" for m, v in times.items())
        + f"; paired difference (parallel - default) mean {np.mean(b - a):+.3f} s")
    return times


# ----------------------------------------------------------------------------- main

def time_step(sh, peak, args):
    """Time the step, its parts and the dense estimate; print tables; -> (rows, parts, dense info)."""
    N = sh["batch"] * sh["seq"]
    cfg, spec, theta, grad, adam, batch = make_problem(sh)
    print(f"parameters: {spec.size:,}")
    ws = riemann.FieldWorkspace()  # one per run, as training holds it
    t_step, cpu_step = _tc(lambda: train_step(theta, grad, adam, batch, cfg, spec, ws), args, step=True)
    peak2 = harness.matmul_peak(np.float32)  # again right after the step: the machine is shared
    cpeak = core_peak()
    print(f"float32 matmul peak after the step: {peak2:.1f} GFLOP/s (using the larger); per core-second "
          f"{cpeak:.1f} GFLOP")
    peak = max(peak, peak2)
    fw, per, total = flops(sh)
    gfs = total / t_step / 1e9
    rows = [dict(what="train step (Woodbury)", seconds=t_step, cpu_seconds=cpu_step, tokens_per_s=N / t_step,
                 gflop=total / 1e9, gflops=gfs, frac_peak=gfs / peak,
                 frac_core_peak=total / 1e9 / cpu_step / cpeak)]
    print(f"step: {t_step:.3f} s wall ({cpu_step:.3f} s CPU over all threads), {N / t_step:,.0f} tokens/s, "
          f"useful {total / 1e9:.1f} GFLOP -> {gfs:.1f} GFLOP/s = {100 * gfs / peak:.1f}% of the measured float32 "
          f"matmul peak; per CPU-second {total / 1e9 / cpu_step:.1f} GFLOP = "
          f"{100 * total / 1e9 / cpu_step / cpeak:.1f}% of the per-core peak")

    parts, pcpu, z, f = part_times(sh, cfg, spec, theta, batch, ws, args)
    parts["other"] = max(t_step - sum(parts.values()), 0.0)
    pcpu["other"] = max(cpu_step - sum(pcpu.values()), 0.0)
    prow = []
    for k, t in parts.items():
        g = per.get(k, 0.0) / 1e9
        gs = g / t if t > 0 and g else 0.0
        prow.append(dict(part=k, s_per_step=t, share_pct=100 * t / t_step, gflop=g, gflops=gs,
                         pct_peak=100 * gs / peak, cpu_s=pcpu[k],
                         pct_core_peak=100 * g / pcpu[k] / cpeak if pcpu[k] > 0 and g else 0.0))
    print()
    harness.report(prow)
    rows += [dict(what=f"part {r['part']}", seconds=r["s_per_step"], gflop=r["gflop"], gflops=r["gflops"])
             for r in prow]
    t_prof, situ = in_situ_split(lambda: train_step(theta, grad, adam, batch, cfg, spec, ws))
    srow = situ_report(t_prof, situ, per, peak)
    print(f"\nin-situ split (one step under cProfile: {t_prof:.3f} s; each function's own time charged to its part)")
    harness.report(srow)
    rows += [dict(what=f"in situ {r['part']}", seconds=r["s_in_step"], gflop=r["gflop"], gflops=r["gflops"])
             for r in srow]

    dm = dense_metric_time(sh, cfg, spec, theta, z, f, args)
    dense_metric_step = dm["dense_s_per_token"] * N
    t_dense = t_step - parts["metric"] + dense_metric_step
    _, per_d, total_d = flops(sh, "dense")
    print(f"\ndense metric vs Woodbury, one field evaluation fwd+bwd on {dm['tokens']} tokens (validated, max rel "
          f"err {dm['max_rel_err']:.1e}): dense {dm['eval_dense_s']:.4f} s, Woodbury {dm['eval_woodbury_s']:.4f} s "
          f"({dm['eval_dense_s'] / dm['eval_woodbury_s']:.1f}x)")
    print(f"dense step (estimated: step - metric part {parts['metric']:.2f} s + dense metric scaled to N={N}: "
          f"{dense_metric_step:.1f} s): {t_dense:.1f} s -> Woodbury step is {t_dense / t_step:.1f}x faster "
          f"(dense useful FLOPs {total_d / 1e9:.0f} G)")
    rows.append(dict(what="train step (dense, estimated)", seconds=t_dense, tokens_per_s=N / t_dense,
                     gflop=total_d / 1e9, speedup_woodbury=t_dense / t_step))
    if args.quick:  # small enough to run the dense step for real and check the estimate
        cfg_d = dataclasses.replace(cfg, metric="dense")
        theta_d, grad_d, adam_d = theta.copy(), np.zeros_like(theta), adam_init(theta)
        t_real = _t(lambda: train_step(theta_d, grad_d, adam_d, batch, cfg_d, spec), args)
        print(f"dense step measured at quick shapes: {t_real:.4f} s (estimate {t_dense:.4f} s)")
        rows.append(dict(what="train step (dense, measured)", seconds=t_real))

    return rows, parts, dm


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.common_args(ap)
    ap.add_argument("--batch", type=int, default=None, help="override the batch size (default 32; quick 2)")
    ap.add_argument("--threads", type=int, default=0, help="BLAS and Numba threads (default: all cores)")
    ap.add_argument("--dense-tokens", type=int, default=96, help="tokens on which the dense metric is timed")
    ap.add_argument("--mem-steps", default="4,8,16", help="RK4 step counts for the memory sweep ('' to skip)")
    ap.add_argument("--mem-batch", default="8",
                    help="batch sizes of the memory sweep, comma-separated (full shapes; each with every --mem-steps)")
    ap.add_argument("--mem-only", action="store_true", help="run only the memory sweep")
    ap.add_argument("--faults-steps", type=int, default=3,
                    help="steady-state steps over which page faults are counted (0 to skip)")
    ap.add_argument("--ab-gelu", type=int, default=0, metavar="PAIRS",
                    help="run only an A/B of the GELU kernels' serial and parallel paths over PAIRS pairs of steps")
    ap.add_argument("--mem-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--faults-child", choices=["workspace", "fresh"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--shapes", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ab_gelu < 0:
        ap.error(f"--ab-gelu: needs a number of step pairs >= 1 (0 = no A/B); got {args.ab_gelu}")
    if args.threads:
        from geolm.training.distributed import configure_threads
        configure_threads(args.threads)
    if args.mem_child is not None:
        return mem_child(json.loads(args.shapes), args.mem_child)
    if args.faults_child is not None:
        return faults_child(json.loads(args.shapes), args.faults_child, args.faults_steps)
    sh = dict(QUICK if args.quick else FULL)
    if args.batch:
        sh["batch"] = args.batch
    N = sh["batch"] * sh["seq"]
    print(harness.env_header())
    peak = None
    if not args.mem_only:
        peak = harness.matmul_peak(np.float32)
        print(f"float32 matmul peak (measured): {peak:.1f} GFLOP/s")
    print("shapes: " + ", ".join(f"{k}={v}" for k, v in sh.items()) + f", N={N} tokens, float32")
    if args.ab_gelu:
        return harness.write_json(args, dict(shapes=sh, peak_gflops=peak, gelu_ab=gelu_ab(sh, args.ab_gelu)))

    rows, parts, dm, faults = [], {}, {}, {}
    if not args.mem_only:
        rows, parts, dm = time_step(sh, peak, args)
    if args.faults_steps > 0 and not args.mem_only:
        faults = page_faults(sh, args.faults_steps, args)
        fw, ff = faults["workspace"]["minflt_per_step"], faults["fresh"]["minflt_per_step"]
        print(f"\nminor page faults per steady-state step ({args.faults_steps} steps, fresh process each): "
              f"{fw:,.0f} with a FieldWorkspace ({faults['workspace']['workspace_MiB']:.1f} MiB held), {ff:,.0f} "
              f"with fresh allocations")
        rows.append(dict(what="minor page faults per step", workspace=fw, fresh=ff))
    steps = [int(s) for s in args.mem_steps.split(",") if s.strip()]
    if steps:
        batches = [sh["batch"]] if args.quick else [int(b) for b in args.mem_batch.split(",") if b.strip()]
        mem = memory_sweep(sh, steps, batches, args)
        print(f"\npeak traced memory of one step (seq {sh['seq']}; one [N,D] float32 state = N x "
              f"{sh['dim'] * 4 / 2**10:.1f} KiB); maxrss = the process's peak resident memory")
        harness.report(memory_report(sh, mem))
        rows += [dict(what=f"peak memory batch={m['batch']} S={m['S']}", bytes=m["peak_bytes"],
                      maxrss_bytes=m["maxrss_kb"] * 1024) for m in mem]
        print("states_per_step: the extra memory of one more RK4 step in [N,D] states (the adjoint stores each "
              "step's boundary state and its 3 stage inputs: ~4, plus per-stage scalars), not per-stage caches")
    harness.write_json(args, dict(shapes=sh, peak_gflops=peak, rows=rows, parts=parts, dense=dm,
                                  page_faults=faults))


if __name__ == "__main__":
    main()
