"""PyTorch as a peer: geolm's Riemann and geometric training steps against the same steps written with torch
autograd, validated against geolm, then timed side by side at equal threads, with the peak memory of each.

    pip install -e ".[peers]"                      # torch==2.13.0 (CPU build); without it: one line, exit 0
    python bench/bench_peers.py                    # Riemann at the original shapes (batch 8), geometric hybrid
    python bench/bench_peers.py --quick            # tiny shapes, seconds (CI smoke test)
    python bench/bench_peers.py --validate-only    # float64 and float32 agreement only

The torch steps (torch is imported only here, never by geolm/ or tests/):
  riemann    wte[ids] + wpe, causal pre-LN blocks (fused qkv, scaled_dot_product_attention, GELU tanh MLP), then
             dz/dt = g(z)^-1 f(z), g = eps I + alpha U^T U, by Woodbury: K = eps I_r + alpha U U^T,
             torch.linalg.cholesky + cholesky_solve, v = (f - alpha U^T K^-1 U f) / eps, log det g =
             (d - r) log eps + 2 sum log diag chol(K); classical RK4 (weights 1/6, 1/3, 1/3, 1/6), S steps on [0, 1];
             penalties as riemann.penalties; final LayerNorm + tied head; cross-entropy (ignore -1);
             global-norm clip; fused AdamW with the Riemann TRAIN_DEFAULTS' lr, betas, eps and weight decay.
             Plain autograd: every stage's activations stay alive until backward (geolm's adjoint recomputes them).
  geometric  frozen coordinate features X[ctx] + one-hot id rows of fc1 (row gathers), ReLU, fc2, mean
             cross-entropy, clip 1, Adam as bench_geometric.lean_step (lr 1e-4, betas (0.9, 0.999), eps 1e-8;
             fused AdamW with decay 0).
Both sides start from geolm's parameters and data (geolm init -> spec.named(theta) -> tensors).
Validation, before anything is timed (a mismatch aborts naming the array): loss, every gradient, and every
parameter's update after one optimiser step, norm-wise relative error ||a - b|| / ||b|| per array, float64
<= 1e-9 and float32 <= 1e-3, on small shapes; at the timed shapes the two sides' first-step losses must agree
to 1e-3 as well.
Timing: each side in its own subprocess, one after the other; geolm's BLAS and Numba threads =
torch.set_num_threads = --threads (default: all cores; --quick: 1). One step on a single sequence (kernel
loading, on throw-away parameters), one warm-up step at the timed shape from the initial parameters, then the
median of --repeat steps.
Memory: the process's peak resident set (VmHWM, reset after the warm-up) over the timed steps: interpreter,
libraries, parameters, optimiser state, data and the step's temporaries; "step MiB" = that peak minus the
resident set just before the warm-up step (imports, parameters, data, optimiser and loaded kernels, after the
C heap's free memory went back to the OS: glibc malloc_trim).
FLOPs: bench_train_step.flops and bench_geometric.flops (GEMMs only; the Riemann count includes the adjoint's
recomputed field evaluations, which autograd does not run): one numerator for both sides, so the ratio of their
fractions of peak is the speed ratio. The peak is harness.matmul_peak (NumPy's BLAS); torch's own float32 GEMM
rate is printed beside it.
Riemann batch 8 instead of the original's 32: autograd keeps the U-MLP output [N, r, d] of all 4 S field
evaluations until backward, 16 x N r d floats = 2.4 GB at batch 8 (N = 1536) but 9.7 GB at batch 32, beside the
other activations, on a machine whose memory other work shares.
"""
import argparse
import dataclasses
import gc
import inspect
import json
import math
import os
import subprocess
import sys
import time

import geolm  # noqa: F401  (first: sets OPENBLAS_THREAD_TIMEOUT before NumPy loads OpenBLAS)
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_geometric as bg  # noqa: E402
import bench_train_step as ts  # noqa: E402
import harness  # noqa: E402

from geolm.apps.riemann_settings import TRAIN_DEFAULTS  # noqa: E402
from geolm.training.distributed import configure_threads  # noqa: E402
from geolm.training.optim import adam_init, adam_step, clip_scale, global_norm  # noqa: E402
from geolm.models import riemann  # noqa: E402

torch = TF = None  # imported by load_torch: never in the geolm timing process, whose memory it would inflate

NO_TORCH = "bench_peers: PyTorch is not installed; pip install -e '.[peers]' (torch==2.13.0, CPU) to compare"

RIEMANN = dict(ts.FULL, batch=8)
RIEMANN_QUICK = dict(ts.QUICK)
RIEMANN_VALID = dict(batch=2, seq=12, dim=16, rank=4, hidden=8, field_hidden=24, ode_steps=2, layers=2, heads=2,
                     vocab=50)
GEO, GEO_QUICK = dict(bg.FULL), dict(bg.QUICK)
GEO_VALID = dict(bg.QUICK, V=80, B=24, H=12)
# the Riemann pipeline's AdamW (TRAIN_DEFAULTS) at its peak learning rate (adam_eps: TrainConfig's default,
# which is adam_step's)
OPT_RIEMANN = dict(lr=TRAIN_DEFAULTS["lr"], b1=TRAIN_DEFAULTS["b1"], b2=TRAIN_DEFAULTS["b2"],
                   eps=inspect.signature(adam_step).parameters["eps"].default, wd=TRAIN_DEFAULTS["weight_decay"],
                   clip=TRAIN_DEFAULTS["clip"])
OPT_GEO = dict(lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, clip=1.0)  # bench_geometric.lean_step's Adam
TOL = {np.float64: 1e-9, np.float32: 1e-3}
LOSS_TOL_TIMED = 1e-3


def load_torch():
    """Import torch into this module's globals; -> False when it is not installed."""
    global torch, TF
    try:
        import torch as t
        import torch.nn.functional as f
    except ImportError:
        return False
    torch, TF = t, f
    return True


# ----------------------------------------------------------------------------- geolm steps

def geolm_riemann_step(cfg, spec, theta, batch, o):
    """What geolm.training.train.fit does per step: loss_and_grads, global norm, fused clip + AdamW (theta in
    place). -> (step() -> loss, grad buffer)."""
    grad, adam, ws = np.zeros_like(theta), adam_init(theta), riemann.FieldWorkspace()

    def step():
        loss, _ = riemann.loss_and_grads(theta, grad, batch, cfg, spec, workspace=ws)
        norm = global_norm(grad)
        adam_step(theta, grad, adam, o["lr"], o["b1"], o["b2"], o["eps"], o["wd"],
                  grad_scale=clip_scale(norm, o["clip"]))
        return float(loss)
    return step, grad


def geolm_geo_step(mc, spec, theta, tables, ctx, y):
    """bench_geometric.lean_step (zero, loss + grads, norm, fused clip + Adam). -> (step() -> loss, grad)."""
    grad, adam = np.zeros_like(theta), adam_init(theta)
    return (lambda: float(bg.lean_step(mc, spec, theta, grad, adam, tables, ctx, y))), grad


# ----------------------------------------------------------------------------- torch steps

def torch_params(spec, theta):
    """{dotted name: leaf tensor} holding a copy of geolm's parameters (same values and dtype)."""
    return {n: torch.from_numpy(v.copy()).requires_grad_() for n, v in spec.named(theta).items()}


def torch_step(loss_fn, P, o, keep=None):
    """-> step() -> loss: zero grads, loss_fn(P), backward, global-norm clip, fused AdamW (decoupled decay).
    Clipping is clip_grad_norm_'s two kernels (get_total_norm, _foreach_mul_) with geolm's factor
    clip / (norm + 1e-12) (clip_grad_norm_ adds 1e-6, a 1e-6 / norm relative difference Adam passes on).
    keep (a dict) receives each parameter's gradient before clipping."""
    params = list(P.values())
    opt = torch.optim.AdamW(params, lr=o["lr"], betas=(o["b1"], o["b2"]), eps=o["eps"], weight_decay=o["wd"],
                            fused=True)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(P)
        loss.backward()
        if keep is not None:
            keep.update({n: p.grad.detach().clone() for n, p in P.items() if p.grad is not None})
        grads = [p.grad for p in params if p.grad is not None]
        scale = clip_scale(float(torch.nn.utils.get_total_norm(grads)), o["clip"])
        if scale != 1.0:
            torch._foreach_mul_(grads, scale)  # clip_grads_with_norm_'s kernel, with geolm's factor
        opt.step()
        return float(loss.detach())
    return step


def riemann_torch_loss(cfg, ids, targets):
    """ids, targets int [B,T] (target -1 ignored) -> loss_fn(P) = CE + penalties, as riemann.loss_forward."""
    if cfg.metric != "lowrank" or cfg.no_ode or not cfg.tie_head:
        raise SystemExit("bench_peers: the torch Riemann step covers metric lowrank, the ODE and a tied head only")
    B, T = ids.shape
    D, H, R, V, S = cfg.dim, cfg.heads, cfg.rank, cfg.V, cfg.ode_steps
    N, E, h = B * T, D // H, 1.0 / S
    ids = torch.from_numpy(np.asarray(ids, np.int64))
    targets = torch.from_numpy(np.asarray(targets, np.int64).reshape(-1))
    const = (D - R) * math.log(cfg.eps)

    def lin(x, P, pre):  # x W + b, W [in,out]
        return TF.linear(x, P[pre + ".w"].t(), P[pre + ".b"])

    def mlp(x, P, pre):
        return lin(TF.gelu(lin(x, P, pre + ".fc1"), approximate="tanh"), P, pre + ".fc2")

    def ln(x, P, pre):
        return TF.layer_norm(x, (x.shape[-1],), P[pre + ".w"], P[pre + ".b"], 1e-5)

    def loss_fn(P):
        f2s, lds = [], []
        eps_i = cfg.eps * torch.eye(R, dtype=P["enc.wte"].dtype)

        def field(z):  # z [N,D] -> v = g(z)^-1 f(z) [N,D]; |f|^2 and log det g [N] into the penalty lists
            f = mlp(z, P, "field.f")  # [N,D]
            u = mlp(z, P, "field.U").view(-1, R, D)  # [N,R*D] -> [N,R,D]
            K = torch.baddbmm(eps_i, u, u.transpose(1, 2), alpha=cfg.alpha)  # eps I + alpha U U^T [N,R,R]
            L = torch.linalg.cholesky(K)
            s = torch.cholesky_solve(torch.bmm(u, f.unsqueeze(2)), L)  # K^-1 U f [N,R,1]
            f2s.append((f * f).sum(1))
            lds.append(const + 2.0 * torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1))
            return (f - cfg.alpha * torch.bmm(u.transpose(1, 2), s).squeeze(2)) / cfg.eps

        x = P["enc.wte"][ids] + P["enc.wpe"][:T]  # [B,T,D]
        for i in range(cfg.layers):
            b = f"enc.blocks.{i}"
            q, k, v = lin(ln(x, P, b + ".ln1"), P, b + ".attn.qkv").view(B, T, 3, H, E).permute(2, 0, 3, 1, 4)
            a = TF.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B,H,T,E]
            x = x + lin(a.transpose(1, 2).reshape(B, T, D), P, b + ".attn.proj")
            x = x + mlp(ln(x, P, b + ".ln2"), P, b + ".mlp")
        z = x.reshape(N, D)
        for _ in range(S):  # classical RK4
            k1 = field(z)
            k2 = field(z + (0.5 * h) * k1)
            k3 = field(z + (0.5 * h) * k2)
            k4 = field(z + h * k3)
            z = z + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        logits = TF.linear(ln(z, P, "ln_f"), P["enc.wte"][:V], P["head.b"])  # tied head [N,V]
        ce = TF.cross_entropy(logits, targets, ignore_index=-1)
        pen_f = cfg.lambda_field * torch.stack(f2s).sum() / N
        ld = torch.stack(lds)  # [4S,N]
        pen_m = (cfg.lambda_metric * (ld * ld).sum() / ld.numel() if cfg.metric_penalty == "point"
                 else cfg.lambda_metric * ld.mean() ** 2)
        return ce + pen_f + pen_m
    return loss_fn


def geo_torch_loss(mc, tables, ctx, y):
    """ctx [B,C], y [B] -> loss_fn(P): relu(X[ctx] W1[:F] + sum_j W1[F + j Vi + id_j] + b1) W2 + b2, mean CE."""
    if mc.kind != "mlp" or mc.features not in ("none", "abs"):
        raise SystemExit(f"bench_peers: the torch geometric step covers MLP models with features none/abs, not "
                         f"{mc.name!r}; pick --geo-model hybrid, geo_abs, trigram or neural_bigram")
    B, C = ctx.shape
    F, J, Vi = mc.F, mc.n_ids, mc.Vi
    X = torch.from_numpy(tables["X"])  # [Vi,k] frozen coordinates
    ctx = torch.from_numpy(np.asarray(ctx, np.int64))
    y = torch.from_numpy(np.asarray(y, np.int64))
    offs = F + Vi * torch.arange(J)

    def loss_fn(P):
        w1 = P["fc1.w"]
        pre = w1[offs + ctx[:, C - J:]].sum(1) + P["fc1.b"]  # one-hot id slots = row gathers [B,H]
        if F:
            pre = pre + X[ctx].reshape(B, -1).to(w1.dtype) @ w1[:F]  # frozen features [B,F]
        logits = TF.linear(torch.relu(pre), P["fc2.w"].t(), P["fc2.b"])  # [B,V]
        return TF.cross_entropy(logits, y)
    return loss_fn


# ----------------------------------------------------------------------------- problems

def riemann_problem(sh, seed=0):
    """-> (cfg, spec, theta float32, batch) from bench_train_step.make_problem (field weights off zero)."""
    cfg, spec, theta, _, _, batch = ts.make_problem(sh, seed=seed)
    return cfg, spec, theta, batch


def geo_problem(sh, name, seed=0):
    """-> (mc, spec, theta float32, tables, ctx, y) from bench_geometric's synthetic tables and problem."""
    rng = np.random.default_rng(seed)
    tables = bg.make_tables(sh, rng)
    mc, spec, theta, _, ctx, y = bg.problem(name, sh, tables, rng)
    return mc, spec, theta, tables, ctx, y


def sides(which, sh, args):
    """-> (make(side, small, theta) -> step, items per step, useful FLOPs per step, theta)."""
    if which == "riemann":
        cfg, spec, theta, (ids, tg) = riemann_problem(sh)

        def make(side, small, th):
            b = (ids[:1], tg[:1]) if small else (ids, tg)
            if side == "geolm":
                return geolm_riemann_step(cfg, spec, th, b, OPT_RIEMANN)[0]
            return torch_step(riemann_torch_loss(cfg, *b), torch_params(spec, th), OPT_RIEMANN)
        return make, sh["batch"] * sh["seq"], ts.flops(sh)[2], theta
    mc, spec, theta, tables, ctx, y = geo_problem(sh, args.geo_model)

    def make(side, small, th):
        b = (ctx[:8], y[:8]) if small else (ctx, y)
        if side == "geolm":
            return geolm_geo_step(mc, spec, th, tables, *b)[0]
        return torch_step(geo_torch_loss(mc, tables, *b), torch_params(spec, th), OPT_GEO)
    return make, sh["B"], bg.flops(mc, sh["B"]), theta


# ----------------------------------------------------------------------------- validation

def compare(label, checks, tol):
    """checks [(array name, got, want)] -> worst norm-wise rel err; SystemExit naming the first array beyond tol."""
    worst = 0.0
    for name, got, want in checks:
        e = harness.norm_rel_err(got, want)
        if not e <= tol:
            raise SystemExit(f"bench_peers: VALIDATION FAILED ({label}): {name}: torch differs from geolm by "
                             f"rel err {e:.2e} > {tol:.0e}")
        worst = max(worst, e)
    return worst


def validate_one(label, spec, theta32, dtype, geolm_make, torch_make, o, opt_name):
    """One step on each side from the same parameters; -> row of worst errors.

    Checks loss, every gradient, and every parameter's update: against geolm's whole step in float64, and
    against geolm's clip + adam_step applied to torch's own gradient in both dtypes (in float32 Adam's first
    step, ~lr sign(g), turns round-off gradients, e.g. the key bias's exact 0, into updates of arbitrary sign)."""
    theta0 = theta32.astype(dtype)
    th = theta0.copy()
    step, grad = geolm_make(th)
    loss_g = step()
    P, keep = torch_params(spec, theta0), {}
    loss_t = torch_make(P, keep)()
    g_t = np.zeros_like(theta0)  # torch's gradient in geolm's layout
    for n, v in spec.named(g_t).items():
        if n in keep:
            v[...] = keep[n].numpy()
    th_ref, adam = theta0.copy(), adam_init(theta0)
    adam_step(th_ref, g_t, adam, o["lr"], o["b1"], o["b2"], o["eps"], o["wd"],
              grad_scale=clip_scale(global_norm(g_t), o["clip"]))
    tol = TOL[dtype]
    named0, named_g, named_t = spec.named(theta0), spec.named(grad), spec.named(g_t)
    upd_t = {n: P[n].detach().numpy() - named0[n] for n in named0}
    lab = f"{label}, {np.dtype(dtype).name}"
    row = dict(check=lab, arrays=len(named0), loss=loss_g,
               loss_err=compare(lab, [("loss", np.array([loss_t]), np.array([loss_g]))], tol),
               max_grad_err=compare(lab, [(f"gradient of {n}", named_t[n], g) for n, g in named_g.items()], tol))
    row["max_update_err_same_grad"] = compare(lab, [(f"{opt_name} update of {n} (same gradient)", upd_t[n],
                                                     u - named0[n]) for n, u in spec.named(th_ref).items()], tol)
    if dtype == np.float64:
        row["max_update_err"] = compare(lab, [(f"{opt_name} update of {n}", upd_t[n], u - named0[n])
                                              for n, u in spec.named(th).items()], tol)
    row["tol"] = tol
    return row


def validate(args):
    """Riemann (default penalties, and penalties x100 in float64) and the geometric model, float64 and float32."""
    rows = []
    cfg, spec, theta, (ids, tg) = riemann_problem(RIEMANN_VALID, seed=1)
    tg = tg.copy()
    tg[0, :3] = -1  # ignored targets
    strong = dataclasses.replace(cfg, lambda_field=0.1, lambda_metric=1e-4)
    for c, dtype, lab in ((cfg, np.float64, "riemann"), (strong, np.float64, "riemann, penalties x100"),
                          (cfg, np.float32, "riemann")):
        rows.append(validate_one(
            lab, spec, theta, dtype,
            lambda th, c=c: geolm_riemann_step(c, spec, th, (ids, tg), OPT_RIEMANN),
            lambda P, keep, c=c: torch_step(riemann_torch_loss(c, ids, tg), P, OPT_RIEMANN, keep), OPT_RIEMANN,
            "AdamW"))
    mc, spec, theta, tables, ctx, y = geo_problem(GEO_VALID, args.geo_model, seed=1)
    for dtype in (np.float64, np.float32):
        rows.append(validate_one(
            f"geometric {args.geo_model}", spec, theta, dtype,
            lambda th: geolm_geo_step(mc, spec, th, tables, ctx, y),
            lambda P, keep: torch_step(geo_torch_loss(mc, tables, ctx, y), P, OPT_GEO, keep), OPT_GEO, "Adam"))
    print("\nvalidation (torch vs geolm, one step from the same parameters; norm-wise rel err per array):")
    harness.report(rows)
    return rows


# ----------------------------------------------------------------------------- timing (one side per process)

def child(spec_str, args):
    """Time one side in this process; print one JSON line."""
    which, side = spec_str.split(":")
    sh = json.loads(args.shapes)
    n = configure_threads(args.threads)
    if side == "torch":
        torch.set_num_threads(n)
    make, items, flop, theta = sides(which, sh, args)
    make(side, True, theta.copy())()  # one sequence on throw-away parameters: kernels load / compile
    step = make(side, False, theta)
    gc.collect()
    harness.trim_heap()  # the RSS below counts live memory, not what the throw-away step freed
    rss0 = harness.rss_bytes()
    loss0 = step()  # warm-up at the timed shape, from the initial parameters
    inner = args.inner

    def block():
        for _ in range(inner):
            step()

    harness.reset_peak_rss()
    tm = harness.measure(block, warmup=0, repeat=args.repeat)
    peak = harness.peak_rss_bytes()
    print(json.dumps(dict(which=which, side=side, threads=n, loss0=loss0, seconds=tm["median"] / inner,
                          iqr=tm["iqr"] / inner, times=[t / inner for t in tm["times"]], items=items, flop=flop,
                          rss_before=rss0, peak_rss=peak)))


def run_child(which, side, sh, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", f"{which}:{side}", "--shapes", json.dumps(sh),
           "--threads", str(args.threads), "--repeat", str(args.repeat), "--inner", str(args.inner),
           "--geo-model", args.geo_model]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench_peers: the {which} {side} timing process failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def torch_matmul_peak(n=1024, repeat=5):
    """torch's float32 n x n x n GEMM rate now, best of `repeat` (GFLOP/s), at torch's current threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.mm(a, b)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9


def torch_header():
    show = torch.__config__.show()
    keep = [ln.strip(" -") for ln in show.splitlines() if "Math Kernel Library" in ln or "CPU capability" in ln]
    return f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; " + "; ".join(keep)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.common_args(ap)
    ap.add_argument("--threads", type=int, default=0, help="threads of each side: geolm's BLAS and Numba threads, "
                    "torch.set_num_threads (default: all cores; --quick: 1, as at tiny shapes a busy machine's "
                    "time-slicing of the per-op thread barriers would dominate)")
    ap.add_argument("--validate-only", action="store_true", help="validate torch against geolm, time nothing")
    ap.add_argument("--models", default="riemann,geometric", help="comma list of riemann, geometric")
    ap.add_argument("--batch", type=int, default=None, help="Riemann batch (default 8; quick 2)")
    ap.add_argument("--geo-model", default="hybrid", help="geometric MLP model (features none/abs)")
    ap.add_argument("--inner", type=int, default=None, help=argparse.SUPPRESS)  # steps per timed sample
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--shapes", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not (args.child or "").endswith(":geolm") and not load_torch():
        print(NO_TORCH)
        harness.write_json(args, dict(skipped=NO_TORCH))
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or any(m not in ("riemann", "geometric") for m in models):
        raise SystemExit(f"--models: give a comma list of riemann, geometric, got {args.models!r}")
    if args.child:
        return child(args.child, args)
    args.threads = configure_threads(args.threads or (1 if args.quick else 0))
    torch.set_num_threads(args.threads)
    print(harness.env_header())
    print(torch_header())
    vrows = validate(args)
    if args.validate_only:
        harness.write_json(args, dict(validation=vrows))
        return 0

    peak, tpeak = harness.matmul_peak(np.float32), torch_matmul_peak()
    print(f"\nthreads per side: {args.threads} (geolm: BLAS and Numba; torch: intra-op); float32 matmul peak "
          f"(NumPy BLAS) {peak:.1f} GFLOP/s, torch.mm {tpeak:.1f} GFLOP/s")
    shapes = {"riemann": dict(RIEMANN_QUICK if args.quick else RIEMANN), "geometric": GEO_QUICK if args.quick else GEO}
    if args.batch:
        shapes["riemann"]["batch"] = args.batch
    summary = {}
    for which in models:
        sh = shapes[which]
        a = argparse.Namespace(**dict(vars(args), repeat=args.repeat or (2 if args.quick else 3 if which == "riemann"
                                                                         else 7),
                                      inner=args.inner or (1 if which == "riemann" else 3 if args.quick else 10)))
        print(f"\n{which}: " + ", ".join(f"{k}={v}" for k, v in sh.items()) + ", float32"
              + (f", model {args.geo_model}" if which == "geometric" else ""))
        res = {side: run_child(which, side, sh, a) for side in ("geolm", "torch")}
        dl = abs(res["torch"]["loss0"] - res["geolm"]["loss0"]) / abs(res["geolm"]["loss0"])
        if not dl <= LOSS_TOL_TIMED:
            raise SystemExit(f"bench_peers: VALIDATION FAILED ({which} at the timed shapes): first-step loss torch "
                             f"{res['torch']['loss0']:.6g} vs geolm {res['geolm']['loss0']:.6g} (rel {dl:.1e})")
        ratio = res["torch"]["seconds"] / res["geolm"]["seconds"]
        summary[which] = dict(shapes=sh, geolm_over_torch=ratio, first_loss_rel_diff=dl, repeat=a.repeat,
                              inner=a.inner, raw=res)
        print(f"{which}: geolm {res['geolm']['seconds']:.4g} s, torch {res['torch']['seconds']:.4g} s per step -> "
              f"geolm is {ratio:.2f}x torch's speed (first-step losses agree to {dl:.1e})")
    peak2 = harness.matmul_peak(np.float32)  # again after the runs (the machine may be shared): the larger counts
    peak = max(peak, peak2)
    rows = []
    for which, sm in summary.items():
        for side, m in sm["raw"].items():
            gfs = m["flop"] / m["seconds"] / 1e9
            rows.append(dict(model=which, side=side, threads=m["threads"], step_s=m["seconds"], iqr_s=m["iqr"],
                             per_s=m["items"] / m["seconds"], unit="tokens" if which == "riemann" else "examples",
                             gflops=gfs, frac_peak=gfs / peak, peak_rss_MiB=m["peak_rss"] / 2 ** 20,
                             step_MiB=(m["peak_rss"] - m["rss_before"]) / 2 ** 20,
                             geolm_over_torch=sm["geolm_over_torch"] if side == "geolm" else "",
                             first_loss=m["loss0"]))
    print(f"\ngeolm vs PyTorch, validated above; median step time; frac_peak of {peak:.1f} GFLOP/s (the larger of the "
          f"peaks before and after); peak_rss = the whole process over the timed steps, step_MiB = above its "
          f"resident set before the first step:")
    harness.report(rows)
    harness.write_json(args, dict(threads=args.threads, peak_gflops=peak, torch_mm_gflops=tpeak, torch=torch_header(),
                                  validation=vrows, rows=rows, summary=summary))
    return 0

if __name__ == "__main__":
    sys.exit(main())
