"""Low-rank metric g = eps*I + alpha*U^T U: solve g^-1 f and log det g without forming d x d.

N flattened tokens . R metric rank (r) . D model width (d)

Per token, U [r,d], f [d], eps > 0, alpha >= 0 (spec section 1.2):
    K      = eps*I_r + alpha*U U^T                        capacitance [r,r], SPD; K = R^T R (Cholesky)
    s      = K^-1 U f                                     [r]   (push-through: U g^-1 = K^-1 U, so s = U v)
    v      = g^-1 f = (f - alpha*U^T s) / eps             Woodbury
    logdet = (d - r)*log(eps) + log det K,   log det K = 2*sum(log diag R)     determinant lemma
Backward (cotangents dv [d], dl of logdet; g is symmetric so y solves with the same factor):
    y  = g^-1 dv = (dv - alpha*U^T t) / eps,  t = K^-1 U dv = U y
    df = y
    dU = -alpha*U (y v^T + v y^T) + 2*alpha*dl*K^-1 U = -alpha*(t v^T + s y^T) + 2*alpha*dl*K^-1 U
Cost per token: forward ~2 r^2 d + r^3/3 + 4 r d, backward ~8 r d + 2 r^2 d (the K^-1 U term, only with dl)
+ r^3; dense would be ~2 r d^2 + d^3.  Works for r = 1, r = d and r > d (valid, but then costlier than dense).

Numerics. In exact arithmetic every Cholesky pivot of K is >= eps (K >= eps*I). A pivot that is not finite
or below eps/2 means K is not positive definite at this precision (alpha*|U|^2/eps beyond what the dtype
resolves, or non-finite U): raise NumericalError naming eps, alpha and max|U|, never return NaN.
Cancellation in v = (f - alpha*U^T s)/eps (and in y): split f = f_par + f_perp, f_par in the row space of U.
Then v = f_perp/eps + (a part of size <= |f_par|/eps), and alpha*U^T s cancels f_par up to rounding
~ u*cond(K)*|f| (u the unit roundoff), so the relative error of v is ~ u*cond(K)*|f|/|f_perp|. A dense solve
in the same precision errs by ~ u*cond(g), and cond(K) <= cond(g). For generic f, |f_perp|^2 ~ (d - r)/d |f|^2:
with 2r <= d the Woodbury result is within a small factor of the dense solve's accuracy (or far better), but as r
approaches d, f_perp vanishes and float32 cancellation leaves errors of percent size at small eps, large alpha.
So float32 input with 2r > d is computed in float64 (`work_dtype`): K, its factor, s, v, y, dU and df, in token
chunks of at most WIDE_CHUNK_BYTES of float64 U; outputs are rounded back to float32 and the cache keeps the
float64 factor. float32 with 2r <= d and float64 input run in their own dtype (only log det K is summed in
float64); forming U U^T in float64 costs about twice the float32 Gram, paid only where r is close to d.

Tiers: the dense tier `dense_metric_forward/backward` (forms g [N,d,d]: np.linalg.solve/slogdet, backward
through np.linalg.inv; the baseline of the Riemann dense control and the benchmark, and in float64 the tests'
oracle), `metric_solve_ref` (vectorised NumPy over [N,r,r] stacks: matmul, np.linalg.cholesky, np.linalg.inv of
the factor), and the Numba kernels of geolm.ops.metric_kernels (per-token small-matrix code around LAPACK potrf
and one BLAS gemm, prange over tokens).
The public pair validates, dispatches (numba by default) and records the choice in the cache.
Reference: Woodbury identity / matrix determinant lemma; layout after stumpy stump.py.
"""
import math

import numpy as np

from ..core.errors import ConfigError, GeolmError, NumericalError
from .metric_kernels import backward_nb, forward_nb

WIDE_CHUNK_BYTES = 32 << 20  # float64 copies of U made at once in the float64-work path


# ----------------------------------------------------------------------------- validation / errors

def _check(U, f, eps, alpha):
    if not (isinstance(U, np.ndarray) and U.ndim == 3):
        raise GeolmError(f"metric U must be an array [N,r,d], got shape {np.shape(U)}; reshape the U-MLP output")
    if not (isinstance(f, np.ndarray) and f.ndim == 2 and f.shape == (U.shape[0], U.shape[2])):
        raise GeolmError(f"metric f must be [N,d] = {(U.shape[0], U.shape[2])} to match U {U.shape}, "
                         f"got {np.shape(f)}; pass the field output flattened over tokens")
    if U.dtype != f.dtype or U.dtype not in (np.float32, np.float64):
        raise GeolmError(f"metric U and f must share dtype float32 or float64, got {U.dtype} and {f.dtype}; "
                         "cast both with .astype")
    eps, alpha = float(eps), float(alpha)
    if not (eps > 0.0 and math.isfinite(eps)):
        raise ConfigError(f"metric eps must be finite and > 0, got {eps}; set eps to e.g. 0.1")
    if not (alpha >= 0.0 and math.isfinite(alpha)):
        raise ConfigError(f"metric alpha must be finite and >= 0, got {alpha}; set alpha to e.g. 1.0")
    return np.ascontiguousarray(U), np.ascontiguousarray(f), eps, alpha


def _not_pd_error(U, eps, alpha, bad, work=None):
    """NumericalError for tokens `bad` (indices) whose K failed to factor in dtype `work` (default U's)."""
    n0 = int(bad[0])
    umax = float(np.max(np.abs(U))) if U.size else 0.0
    if not np.all(np.isfinite(U[n0])):
        return NumericalError(f"metric U has non-finite entries at token {n0} ({len(bad)} token(s) affected, "
                              f"eps={eps:g}, alpha={alpha:g}); lower the learning rate or clip gradients")
    scale = alpha * float(np.sum(U[n0].astype(np.float64) ** 2)) / eps
    return NumericalError(
        f"metric K = eps*I + alpha*U U^T is not positive definite in {np.dtype(work or U.dtype)} for {len(bad)} of "
        f"{U.shape[0]} "
        f"tokens (first {n0}): eps={eps:g}, alpha={alpha:g}, max|U|={umax:.3g}, alpha*|U_n|^2/eps={scale:.3g}; "
        f"raise eps, lower alpha or the U-MLP output scale, or run in float64")


# ----------------------------------------------------------------------------- dense tier

def dense_metric_forward(U, f, eps, alpha):
    """U [N,r,d], f [N,d] -> (v = g^-1 f [N,d], logdet g [N], cache), g = eps I + alpha U^T U formed densely."""
    U, f, eps, alpha = _check(U, f, eps, alpha)
    D = f.shape[-1]
    g = alpha * np.matmul(U.transpose(0, 2, 1), U)  # [N,D,R] @ [N,R,D] -> [N,D,D]
    g += eps * np.eye(D, dtype=f.dtype)
    sign, logdet = np.linalg.slogdet(g)  # [N]
    if not np.all(sign > 0):
        raise NumericalError(f"dense metric not positive definite (eps={eps}, alpha={alpha}, max |U|="
                             f"{float(np.abs(U).max()):.3g}); raise --eps or lower --alpha")
    v = np.linalg.solve(g, f[..., None])[..., 0]  # [N,D,D] \ [N,D,1] -> [N,D]
    return v, logdet.astype(f.dtype), (U, g, v, alpha)


def dense_metric_backward(dv, dlogdet, cache):
    """(dv [N,d], dlogdet [N] or None) -> (dU [N,r,d], df [N,d]) via the dense inverse."""
    U, g, v, alpha = cache
    ginv = np.linalg.inv(g)  # [N,D,D] (symmetric)
    y = np.matmul(ginv, dv[..., None])[..., 0]  # [N,D]; v = g^-1 f  =>  df = g^-T dv
    dg = -y[:, :, None] * v[:, None, :]  # [N,D,D]
    if dlogdet is not None:
        dg += dlogdet[:, None, None] * ginv  # d log det g / dg = g^-T
    # g = eps I + alpha U^T U  =>  dU = alpha U (dg + dg^T)
    dU = alpha * np.matmul(U, dg + dg.transpose(0, 2, 1))  # [N,R,D] @ [N,D,D] -> [N,R,D]
    return dU, y


# ----------------------------------------------------------------------------- NumPy reference

def metric_solve_ref(U, f, eps, alpha):
    """Vectorised NumPy forward over [N,r,r] stacks. U [N,r,d], f [N,d] -> (v [N,d], logdet [N], cache)."""
    N, r, d = U.shape
    K = U @ U.transpose(0, 2, 1)  # [N,r,d] @ [N,d,r] -> [N,r,r]
    K *= alpha
    K[:, np.arange(r), np.arange(r)] += eps
    try:
        L = np.linalg.cholesky(K)  # K = L L^T, [N,r,r]
        diag = np.diagonal(L, axis1=1, axis2=2)  # [N,r]
        good = np.all((diag * diag > 0.5 * eps) & np.isfinite(diag), axis=1)  # exact pivots are >= eps
    except np.linalg.LinAlgError:
        good = np.zeros(N, bool)
    if not good.all():  # error path only: find the failing tokens one by one
        for n in np.nonzero(~good)[0]:
            try:
                dn = np.diagonal(np.linalg.cholesky(K[n]))
                good[n] = bool(np.all((dn * dn > 0.5 * eps) & np.isfinite(dn)))
            except np.linalg.LinAlgError:
                pass
        raise _not_pd_error(U, eps, alpha, np.nonzero(~good)[0])
    logdetK = 2.0 * np.log(diag).sum(axis=1)  # [N]
    Linv = np.linalg.inv(L)  # [N,r,r], lower
    w = U @ f[:, :, None]  # [N,r,d] @ [N,d,1] -> [N,r,1]
    s = Linv.transpose(0, 2, 1) @ (Linv @ w)  # K^-1 U f, [N,r,1]
    v = (f - alpha * (s.transpose(0, 2, 1) @ U)[:, 0]) / eps  # [N,1,r] @ [N,r,d] -> [N,d]
    logdet = (d - r) * math.log(eps) + logdetK
    return v, logdet, ("ref", U, v, s[:, :, 0], Linv, logdetK, eps, alpha, U.dtype)


def metric_solve_backward_ref(dv, dlogdet, cache):
    """Vectorised NumPy backward: (dv [N,d], dlogdet [N] or None) -> (dU [N,r,d], df [N,d])."""
    _, U, v, s, Linv, _, eps, alpha, _ = cache
    Kinv = Linv.transpose(0, 2, 1) @ Linv  # K^-1 = L^-T L^-1, [N,r,r]
    t = Kinv @ (U @ dv[:, :, None])  # t = K^-1 U dv, [N,r,1]
    y = (dv - alpha * (t.transpose(0, 2, 1) @ U)[:, 0]) / eps  # y = g^-1 dv, [N,d]
    # v = (f - alpha U^T K^-1 U f)/eps:  dU = -alpha (t v^T + s y^T)
    dU = -alpha * (t * v[:, None, :] + s[:, :, None] * y[:, None, :])  # [N,r,1]*[N,1,d] -> [N,r,d]
    if dlogdet is not None:
        # logdet = (d-r) log eps + log det K:  dU += 2 alpha dl K^-1 U
        dU += (2.0 * alpha) * dlogdet[:, None, None] * (Kinv @ U)  # [N,r,r] @ [N,r,d]
    return dU, y


# ----------------------------------------------------------------------------- public pair

def work_dtype(U):
    """The dtype the solve runs in: float64 for float32 U [N,r,d] with 2r > d (see Numerics), else U's."""
    _, r, d = U.shape
    return np.dtype(np.float64) if U.dtype == np.float32 and 2 * r > d else U.dtype


def _chunks(U):
    """Token ranges holding at most WIDE_CHUNK_BYTES of float64 U."""
    N, r, d = U.shape
    step = max(1, WIDE_CHUNK_BYTES // (8 * r * d))
    return [(lo, min(N, lo + step)) for lo in range(0, N, step)]


def _forward_numba(U, f, eps, alpha, work):
    N, r, d = U.shape
    v = np.empty((N, d), work)
    logdetK = np.empty(N, work)
    R = np.empty((N, r, r), work)
    s = np.empty((N, r), work)
    info = np.zeros(N, np.int32)
    if work == U.dtype:
        forward_nb(v, logdetK, R, s, info, U, f, eps, alpha)
    else:
        for lo, hi in _chunks(U):
            forward_nb(v[lo:hi], logdetK[lo:hi], R[lo:hi], s[lo:hi], info[lo:hi], U[lo:hi].astype(work),
                       f[lo:hi].astype(work), eps, alpha)
    if info.any():
        raise _not_pd_error(U, eps, alpha, np.nonzero(info)[0], work)
    return v, logdetK, R, s


def metric_solve_forward(U, f, eps, alpha, backend="numba"):
    """v = g^-1 f and log det g for g = eps*I + alpha*U^T U per token.

    U [N,r,d], f [N,d] (same float dtype), eps > 0, alpha >= 0 -> (v [N,d], logdet [N], cache), in U's dtype.
    backend "numba" (default) or "ref" (vectorised NumPy); the choice is recorded in the cache.
    Raises NumericalError if K = eps*I + alpha*U U^T does not factor at this precision.
    """
    U, f, eps, alpha = _check(U, f, eps, alpha)
    if backend not in ("numba", "ref"):
        raise ConfigError(f"metric backend must be 'numba' or 'ref', got {backend!r}")
    dtype, work = U.dtype, work_dtype(U)
    N, r, d = U.shape
    if backend == "ref":
        if work == dtype:
            return metric_solve_ref(U, f, eps, alpha)
        v, logdet, cache = metric_solve_ref(U.astype(work), f.astype(work), eps, alpha)
        return v.astype(dtype), logdet.astype(dtype), cache[:-1] + (dtype,)
    v, logdetK, R, s = _forward_numba(U, f, eps, alpha, work)
    logdet = logdetK + (d - r) * math.log(eps)
    cache = ("numba", U, v, s, R, logdetK, eps, alpha, dtype)
    if work == dtype:
        return v, logdet, cache
    return v.astype(dtype), logdet.astype(dtype), cache


def metric_solve_backward(dv, dlogdet, cache, dU_out=None):
    """(dv [N,d], dlogdet [N] or None, cache) -> (dU [N,r,d], df [N,d]) by the backend the forward used.

    dlogdet None skips the log-det term (no K^-1 is formed). dU_out: optional C-contiguous [N,r,d] array of U's
    dtype that receives dU (numba backend; saves allocating a fresh N*r*d array per call)."""
    backend, U, v, s, R, _, eps, alpha, dtype = cache
    work = R.dtype
    dv = np.ascontiguousarray(dv, dtype=work)
    if dlogdet is not None:
        dlogdet = np.ascontiguousarray(dlogdet, dtype=work)
    if backend == "ref":
        dU, df = metric_solve_backward_ref(dv, dlogdet, cache)
        return (dU, df) if work == dtype else (dU.astype(dtype), df.astype(dtype))
    N, r, d = U.shape
    if dU_out is not None and dU_out.shape == U.shape and dU_out.dtype == dtype and dU_out.flags.c_contiguous:
        dU = dU_out
    else:
        dU = np.empty((N, r, d), dtype)
    df = np.empty((N, d), work)
    if work == dtype:
        backward_nb(dU, df, dv, dlogdet, U, v, s, R, eps, alpha)
        return dU, df
    chunks = _chunks(U)
    dUw = np.empty((max((hi - lo for lo, hi in chunks), default=0), r, d), work)  # [chunk,r,d], reused
    for lo, hi in chunks:
        dl = dlogdet[lo:hi] if dlogdet is not None else None
        backward_nb(dUw[:hi - lo], df[lo:hi], dv[lo:hi], dl, U[lo:hi].astype(work), v[lo:hi], s[lo:hi], R[lo:hi],
                    eps, alpha)
        dU[lo:hi] = dUw[:hi - lo]
    return dU, df.astype(dtype)


def metric_logdet_parts(cache):
    """(const = (d - r)*log(eps) as a float, logdetK [N]) with logdet = const + logdetK."""
    _, U, _, _, _, logdetK, eps, _, _ = cache
    return (U.shape[2] - U.shape[1]) * math.log(eps), logdetK
