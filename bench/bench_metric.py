"""Metric solve + log-det (g = eps I + alpha U^T U), forward and backward, at the original's shapes.

    python bench/bench_metric.py              # N=6144 tokens (32 x 192), d=384, r=64 and r=24, plus a small shape
    python bench/bench_metric.py --quick      # tiny shapes, seconds (smoke test)
    python bench/bench_metric.py --shapes "6144,384,64"   # one shape (about a minute on 2 idle cores)

Contenders (all compute v = g^-1 f, log det g and, backward, dU, df with a log-det cotangent):
  numba  geolm.ops.metric public pair (per-token BLAS U U^T and K^-1 U, LAPACK Cholesky, prange over tokens)
  ref    geolm.ops.metric.metric_solve_ref (vectorised NumPy: stacked matmul, np.linalg.cholesky, np.linalg.inv)
  dense  geolm.ops.metric's dense tier: forms g [N,d,d]; np.linalg.solve + slogdet forward; backward through
         np.linalg.inv(g) (what the original's CPU fallback did). Too big at full N (3.6 GB per g in float32), so
         it is timed on --dense-tokens tokens and scaled linearly to N; the table says so.
Every contender is validated before timing: numba and ref against float64 dense on a token subset, numba
against ref on all N tokens, float32 dense against float64 dense.

FLOPs per token (counted as written here, 1 multiply-add = 2 FLOPs; same algorithmic count for numba and ref):
  woodbury fwd  2 r^2 d (U U^T) + r^3/3 (Cholesky) + 2 r^2 (two triangular solves) + 4 r d (U f, U^T s)
  woodbury bwd  r^3 (K^-1 from the factor) + 2 r^2 d (K^-1 U) + 2 r^2 (K^-1 U dv) + 10 r d (U dv, U^T t, the
                two rank-1 terms and the scaled sum)
  dense fwd     2 r d^2 (g = U^T U) + 2 d^3/3 + 2 d^2 (LU solve) + 2 d^3/3 (slogdet's LU)
  dense bwd     2 d^3 (inverse) + 4 d^2 (g^-1 dv, dg) + 2 r d^2 (U (dg + dg^T))
% peak = GFLOP/s / (float32 GEMM GFLOP/s measured at start).
"""
import argparse
import contextlib
import os
import sys

import geolm  # noqa: F401  (first: sets OPENBLAS_THREAD_TIMEOUT before NumPy loads OpenBLAS)
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

from geolm.ops.metric import (dense_metric_backward, dense_metric_forward, metric_solve_backward,  # noqa: E402
                              metric_solve_forward, work_dtype)

FULL = [(6144, 384, 64), (6144, 384, 24), (512, 128, 16)]  # (N, d, r)
QUICK = [(64, 32, 8), (8, 16, 16)]
EPS, ALPHA, USCALE = 0.1, 1.0, 0.1


def flops(N, d, r):
    wf = 2 * r * r * d + r ** 3 / 3 + 2 * r * r + 4 * r * d
    wb = r ** 3 + 2 * r * r * d + 2 * r * r + 10 * r * d
    df = 2 * r * d * d + 4 * d ** 3 / 3 + 2 * d * d
    db = 2 * d ** 3 + 4 * d * d + 2 * r * d * d
    return {"woodbury": (N * wf, N * wb), "dense": (N * df, N * db)}


def _null():
    return contextlib.nullcontext()


def _blas_limit(n):
    """Context factory limiting BLAS threads to n (None: no limit)."""
    if n is None:
        return _null
    from threadpoolctl import threadpool_limits
    return lambda: threadpool_limits(limits=n, user_api="blas")


# ---- one shape -------------------------------------------------------------------------------------------

def run_shape(N, d, r, dtype, args, peak):
    rng = np.random.default_rng(0)
    U = (USCALE * rng.standard_normal((N, r, d))).astype(dtype)
    f = rng.standard_normal((N, d)).astype(dtype)
    dv = rng.standard_normal((N, d)).astype(dtype)
    dl = rng.standard_normal(N).astype(dtype)
    nd = min(N, args.dense_tokens)
    nsub = min(N, 64)
    tol = 1e-3 if dtype == np.float32 else 1e-9

    # validation, before any timing
    sub = [U[:nsub].astype(np.float64), f[:nsub].astype(np.float64)]
    v64, l64, c64 = dense_metric_forward(*sub, EPS, ALPHA)
    base = (v64, l64) + dense_metric_backward(dv[:nsub].astype(np.float64), dl[:nsub].astype(np.float64), c64)
    outs = {}
    for name in ("numba", "ref"):
        v, l, c = metric_solve_forward(U, f, EPS, ALPHA, backend=name)
        dU, dff = metric_solve_backward(dv, dl, c)
        outs[name] = (v, l, dU, dff)
        harness.validate(f"{name} vs dense float64", [o[:nsub] for o in outs[name]], base, tol)
        del c
    err_nr = harness.validate("numba vs ref", outs["numba"], outs["ref"], tol)
    vd, ld, cd = dense_metric_forward(U[:nsub], f[:nsub], EPS, ALPHA)
    harness.validate("dense vs dense float64", (vd, ld) + dense_metric_backward(dv[:nsub], dl[:nsub], cd), base,
                     10 * tol)
    del outs, cd

    rep = args.repeat or (2 if args.quick else 3)
    T = {}
    lim = _blas_limit(args.blas_threads)
    for name in ("numba", "ref"):
        box = {}

        def fwd(name=name, box=box):
            box["c"] = metric_solve_forward(U, f, EPS, ALPHA, backend=name)[2]

        with (lim() if name == "ref" else _null()):
            tf = harness.measure(fwd, warmup=1, repeat=rep)
            tb = harness.measure(lambda box=box: metric_solve_backward(dv, dl, box["c"]), warmup=1, repeat=rep)
        box.clear()
        T[name] = (tf, tb, 1.0)
    Ud, fd, dvd, dld = U[:nd], f[:nd], dv[:nd], dl[:nd]
    box = {}

    def dfwd():
        box["c"] = dense_metric_forward(Ud, fd, EPS, ALPHA)[2]

    with lim():
        tf = harness.measure(dfwd, warmup=1, repeat=rep)
        tb = harness.measure(lambda: dense_metric_backward(dvd, dld, box["c"]), warmup=1, repeat=rep)
    box.clear()
    T["dense"] = (tf, tb, N / nd)

    F = flops(N, d, r)
    rows = []
    tot = {k: (T[k][0]["median"] + T[k][1]["median"]) * T[k][2] for k in T}
    for name in ("numba", "ref", "dense"):
        tf, tb, scale = T[name]
        fl = F["dense" if name == "dense" else "woodbury"]
        for phase, sec, iqr, gf in (("fwd", tf["median"], tf["iqr"], fl[0]), ("bwd", tb["median"], tb["iqr"], fl[1]),
                                    ("fwd+bwd", tf["median"] + tb["median"], tf["iqr"] + tb["iqr"], fl[0] + fl[1])):
            s = sec * scale
            other = {"fwd": 0, "bwd": 1}.get(phase)
            ref_s = (T["ref"][other]["median"] if other is not None else tot["ref"])
            den_s = ((T["dense"][other]["median"] * T["dense"][2]) if other is not None else tot["dense"])
            rows.append(dict(shape=f"N={N} d={d} r={r}", contender=name + (f" (x{scale:.0f}*)" if scale > 1 else ""),
                             phase=phase, seconds=s, iqr=iqr * scale, GFLOP=gf / 1e9, GFLOPs=gf / s / 1e9,
                             pct_peak=100 * gf / s / 1e9 / peak, x_vs_dense=den_s / s, x_vs_ref=ref_s / s))
    note = (f"* dense timed on {nd} of {N} tokens and scaled x{N / nd:.0f} (linear in N)" if nd < N else "")
    if work_dtype(U) != U.dtype:
        note = (note + "; " if note else "") + (f"N={N} d={d} r={r}: numba and ref compute in {work_dtype(U)} "
                                                f"(float32 with 2r > d, geolm.ops.metric Numerics)")
    return rows, note, err_nr, tot


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.common_args(ap)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="limit BLAS threads for the ref and dense contenders (default: BLAS's own setting)")
    ap.add_argument("--dense-tokens", type=int, default=64, help="tokens the dense path is timed on")
    ap.add_argument("--shapes", default=None,
                    help="N,d,r triples separated by ';' (default: 6144,384,64;6144,384,24;512,128,16)")
    args = ap.parse_args(argv)
    dtype = np.dtype(args.dtype).type
    print(harness.env_header())
    peak = harness.matmul_peak(np.float32)
    print(f"float32 matmul peak (measured now, 1024^3 GEMM): {peak:.1f} GFLOP/s; eps={EPS}, alpha={ALPHA}, "
          f"U ~ {USCALE} N(0,1), {args.dtype}; BLAS threads for ref/dense: "
          f"{args.blas_threads or 'default'}; numba: its threads, BLAS 1 thread inside")
    print(__doc__[__doc__.index("FLOPs per token"):__doc__.index("% peak")].rstrip())
    all_rows, notes, summary = [], [], {}
    shapes = (QUICK if args.quick else FULL) if not args.shapes else [
        tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";") if s.strip()]
    for N, d, r in shapes:
        rows, note, err, tot = run_shape(N, d, r, dtype, args, peak)
        all_rows += rows
        if note:
            notes.append(note)
        summary[(N, d, r)] = tot
        print(f"validated N={N} d={d} r={r}: numba vs ref max rel err {err:.1e} (plus both vs float64 dense)")
    print()
    harness.report(all_rows, ["shape", "contender", "phase", "seconds", "iqr", "GFLOP", "GFLOPs", "pct_peak",
                              "x_vs_dense", "x_vs_ref"])
    for n in notes:
        print(n)
    key = (6144, 384, 64)
    if key in summary and dtype == np.float32:
        t = summary[key]
        sd, sr = t["dense"] / t["numba"], t["ref"] / t["numba"]
        print(f"issue 6 targets at N=6144 d=384 r=64 float32 fwd+bwd: numba vs dense {sd:.1f}x (target >= 15x: "
              f"{'met' if sd >= 15 else 'NOT met'}), numba vs NumPy ref {sr:.1f}x (target >= 3x: "
              f"{'met' if sr >= 3 else 'NOT met'})")
    harness.write_json(args.json, dict(rows=all_rows, notes=notes, peak_gflops=peak, dtype=args.dtype))


if __name__ == "__main__":
    main()
