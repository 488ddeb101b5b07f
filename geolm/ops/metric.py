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

Numerics: in exact arithmetic every Cholesky pivot of K is >= eps (K >= eps*I). A pivot that is not finite
or below eps/2 means K is not positive definite at this precision (alpha*|U|^2/eps beyond what the dtype
resolves, or non-finite U): raise NumericalError naming eps, alpha and max|U|, never return NaN.
Everything runs in the input dtype (float32 in -> float32 math and out); only log det K is summed in float64.

Three tiers: tests/naive_metric.py (dense float64 oracle), `metric_solve_ref` (vectorised NumPy over
[N,r,r] stacks: matmul, np.linalg.cholesky, np.linalg.inv of the factor), `_metric_solve_nb` (Numba:
per token BLAS: syrk for U U^T (upper triangle only, half the multiplies of np.dot's gemm), np.dot for U f,
U^T s and K^-1 U, LAPACK potrf/potrs/potri; syrk and LAPACK through SciPy's cython pointers; prange over token
chunks; `_metric_solve_nb_serial` below PARALLEL_FLOPS of work).
The public pair validates, dispatches (numba by default) and records the choice in the cache; BLAS is
limited to one thread while the Numba kernel runs (threadpoolctl). Reference: Woodbury identity / matrix determinant lemma; layout after stumpy stump.py.
"""
import math

import numpy as np

from ..core.errors import GeolmError, ConfigError, NumericalError
from ..core.jit import njit, njit_parallel, prange

_CTL = None


def _blas_single_thread():
    """Context limiting BLAS to one thread (the Numba kernel is already parallel over tokens)."""
    global _CTL
    if _CTL is None:
        import scipy.linalg.cython_blas  # noqa: F401  (load SciPy's BLAS first so the controller sees it)
        import scipy.linalg.cython_lapack  # noqa: F401
        from threadpoolctl import ThreadpoolController
        _CTL = ThreadpoolController()
    return _CTL.limit(limits=1, user_api="blas")


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


def _not_pd_error(U, eps, alpha, bad):
    """NumericalError for tokens `bad` (indices) whose K failed to factor."""
    n0 = int(bad[0])
    umax = float(np.max(np.abs(U))) if U.size else 0.0
    if not np.all(np.isfinite(U[n0])):
        return NumericalError(f"metric U has non-finite entries at token {n0} ({len(bad)} token(s) affected, "
                              f"eps={eps:g}, alpha={alpha:g}); lower the learning rate or clip gradients")
    scale = alpha * float(np.sum(U[n0].astype(np.float64) ** 2)) / eps
    return NumericalError(
        f"metric K = eps*I + alpha*U U^T is not positive definite in {U.dtype} for {len(bad)} of {U.shape[0]} "
        f"tokens (first {n0}): eps={eps:g}, alpha={alpha:g}, max|U|={umax:.3g}, alpha*|U_n|^2/eps={scale:.3g}; "
        f"raise eps, lower alpha or the U-MLP output scale, or run in float64")


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
    return v, logdet, ("ref", U, v, s[:, :, 0], Linv, logdetK, eps, alpha)


def metric_solve_backward_ref(dv, dlogdet, cache):
    """Vectorised NumPy backward: (dv [N,d], dlogdet [N] or None) -> (dU [N,r,d], df [N,d])."""
    _, U, v, s, Linv, _, eps, alpha = cache
    Kinv = Linv.transpose(0, 2, 1) @ Linv  # K^-1 = L^-T L^-1, [N,r,r]
    t = Kinv @ (U @ dv[:, :, None])  # t = K^-1 U dv, [N,r,1]
    y = (dv - alpha * (t.transpose(0, 2, 1) @ U)[:, 0]) / eps  # y = g^-1 dv, [N,d]
    # v = (f - alpha U^T K^-1 U f)/eps:  dU = -alpha (t v^T + s y^T)
    dU = -alpha * (t * v[:, None, :] + s[:, :, None] * y[:, None, :])  # [N,r,1]*[N,1,d] -> [N,r,d]
    if dlogdet is not None:
        # logdet = (d-r) log eps + log det K:  dU += 2 alpha dl K^-1 U
        dU += (2.0 * alpha) * dlogdet[:, None, None] * (Kinv @ U)  # [N,r,r] @ [N,r,d]
    return dU, y


# ----------------------------------------------------------------------------- Numba kernels

def _lapack(dtype):
    """(potrf, potrs, potri) for dtype as ctypes function pointers into SciPy's LAPACK (Fortran ABI).

    They are passed to the kernels as arguments (not globals) so Numba can still cache the kernels.
    A C-order [r,r] block is the transpose in Fortran's view; for symmetric K, uplo='L' there is
    R upper in C order with K = R^T R.
    """
    key = np.dtype(dtype).char
    if key not in _LAPACK:
        import ctypes
        from numba.extending import get_cython_function_address
        vp = ctypes.c_void_p
        pre = "s" if key == "f" else "d"
        fns = []
        for name, nargs in (("potrf", 5), ("potrs", 8), ("potri", 5)):
            addr = get_cython_function_address("scipy.linalg.cython_lapack", pre + name)
            fns.append(ctypes.CFUNCTYPE(None, *([vp] * nargs))(addr))
        _LAPACK[key] = tuple(fns)
    return _LAPACK[key]


_LAPACK = {}


def _blas(dtype):
    """?syrk for dtype as a ctypes function pointer into SciPy's BLAS (Fortran ABI), like _lapack."""
    key = np.dtype(dtype).char
    if key not in _BLAS:
        import ctypes
        from numba.extending import get_cython_function_address
        addr = get_cython_function_address("scipy.linalg.cython_blas", ("s" if key == "f" else "d") + "syrk")
        _BLAS[key] = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 10))(addr)
    return _BLAS[key]


_BLAS = {}


@njit
def _forward_range(lo, hi, v, logdetK, R, s, info, U, f, eps, alpha_t, eps_t, potrf, potrs, syrk):
    """Forward for tokens lo..hi-1 (one thread; scratch allocated once per range)."""
    r, d = U.shape[1], U.shape[2]
    ib = np.empty(4, np.int32)  # Fortran ints: ib[0] = n = lda = ldb, ib[1] = nrhs, ib[2] = info, ib[3] = d
    up = np.empty(2, np.uint8)
    up[0] = 76  # 'L' in Fortran's (transposed) view = upper in C order
    up[1] = 84  # 'T'
    one = np.ones(1, U.dtype)
    zero = np.zeros(1, U.dtype)
    w = np.empty(r, U.dtype)
    tmp = np.empty(d, U.dtype)
    for n in range(lo, hi):
        Un = U[n]
        Rn = R[n]
        ib[0] = r
        ib[3] = d
        # upper (C order) triangle of U U^T: Fortran sees U as U^T [d,r], so C = A^T A with trans 'T', k = d
        syrk(up[0:1].ctypes, up[1:2].ctypes, ib[0:1].ctypes, ib[3:4].ctypes, one.ctypes, Un.ctypes,
             ib[3:4].ctypes, zero.ctypes, Rn.ctypes, ib[0:1].ctypes)
        for i in range(r):
            for j in range(i, r):
                Rn[i, j] *= alpha_t
            Rn[i, i] += eps_t  # K = eps I + alpha U U^T (upper triangle; potrf reads only that)
        ib[0] = r
        ib[1] = 1
        ib[2] = 0
        potrf(up.ctypes, ib[0:1].ctypes, Rn.ctypes, ib[0:1].ctypes, ib[2:3].ctypes)  # K = R^T R
        bad = ib[2]
        ld = 0.0
        for i in range(r):
            piv = float(Rn[i, i]) * float(Rn[i, i])
            if not (piv > 0.5 * eps and piv < np.inf):  # exact pivots are >= eps
                bad = i + 1
                break
            ld += math.log(piv)
        info[n] = bad
        if bad != 0:
            logdetK[n] = 0.0
            v[n, :] = 0.0
            s[n, :] = 0.0
            continue
        logdetK[n] = ld  # log det K = 2 sum log diag R
        for i in range(1, r):
            for j in range(i):
                Rn[i, j] = 0.0
        np.dot(Un, f[n], w)  # [r,d] @ [d] -> [r]
        potrs(up.ctypes, ib[0:1].ctypes, ib[1:2].ctypes, Rn.ctypes, ib[0:1].ctypes, w.ctypes, ib[0:1].ctypes,
              ib[2:3].ctypes)  # s = K^-1 U f
        for i in range(r):
            s[n, i] = w[i]
        np.dot(w, Un, tmp)  # U^T s, [r] @ [r,d] -> [d]
        for j in range(d):
            v[n, j] = (f[n, j] - alpha_t * tmp[j]) / eps_t  # v = (f - alpha U^T s) / eps


@njit
def _backward_range(lo, hi, dU, df, dv, dlogdet, has_dl, U, v, s, R, alpha, eps_t, alpha_t, potrs, potri):
    """Backward for tokens lo..hi-1 (one thread; scratch allocated once per range)."""
    r, d = U.shape[1], U.shape[2]
    ib = np.empty(4, np.int32)
    up = np.empty(1, np.uint8)
    up[0] = 76
    Kinv = np.empty((r, r), U.dtype)
    t = np.empty(r, U.dtype)
    a = np.empty(r, U.dtype)
    tmp = np.empty(d, U.dtype)
    for n in range(lo, hi):
        Un = U[n]
        ib[0] = r
        ib[1] = 1
        ib[2] = 0
        np.dot(Un, dv[n], a)  # U dv, [r,d] @ [d] -> [r]
        if has_dl:
            for i in range(r):
                for j in range(r):
                    Kinv[i, j] = R[n, i, j]
            potri(up.ctypes, ib[0:1].ctypes, Kinv.ctypes, ib[0:1].ctypes, ib[2:3].ctypes)  # upper of K^-1
            for i in range(1, r):
                for j in range(i):
                    Kinv[i, j] = Kinv[j, i]
            np.dot(Kinv, a, t)  # t = K^-1 U dv
        else:
            for i in range(r):
                t[i] = a[i]
            potrs(up.ctypes, ib[0:1].ctypes, ib[1:2].ctypes, R[n].ctypes, ib[0:1].ctypes, t.ctypes,
                  ib[0:1].ctypes, ib[2:3].ctypes)  # t = K^-1 U dv
        np.dot(t, Un, tmp)  # U^T t, [r] @ [r,d] -> [d]
        for j in range(d):
            df[n, j] = (dv[n, j] - alpha_t * tmp[j]) / eps_t  # y = g^-1 dv
        dUn = dU[n]
        if has_dl:
            np.dot(Kinv, Un, dUn)  # K^-1 U, [r,r] @ [r,d] -> [r,d]
            cl = 2.0 * alpha * dlogdet[n]  # logdet = ... + log det K:  dU += 2 alpha dl K^-1 U
            for i in range(r):
                ti = alpha_t * t[i]
                si = alpha_t * s[n, i]
                for j in range(d):
                    dUn[i, j] = cl * dUn[i, j] - ti * v[n, j] - si * df[n, j]
        else:
            for i in range(r):  # v = (f - alpha U^T K^-1 U f)/eps:  dU = -alpha (t v^T + s y^T)
                ti = alpha_t * t[i]
                si = alpha_t * s[n, i]
                for j in range(d):
                    dUn[i, j] = -ti * v[n, j] - si * df[n, j]


@njit_parallel
def _metric_solve_nb(v, logdetK, R, s, info, U, f, eps, alpha_t, eps_t, potrf, potrs, syrk):
    """Forward kernel, parallel over token chunks. Outputs v [N,d], logdetK [N], R [N,r,r] (upper Cholesky
    factor, K = R^T R), s [N,r] (= K^-1 U f), info [N] (0 ok, else failing pivot + 1); inputs U [N,r,d],
    f [N,d] C-contiguous; eps float64; alpha_t, eps_t in U's dtype; potrf, potrs: see _lapack; syrk: _blas."""
    N = U.shape[0]
    nchunk = min(N, 64)
    for c in prange(nchunk):
        _forward_range(c * N // nchunk, (c + 1) * N // nchunk, v, logdetK, R, s, info, U, f, eps, alpha_t,
                       eps_t, potrf, potrs, syrk)


@njit
def _metric_solve_nb_serial(v, logdetK, R, s, info, U, f, eps, alpha_t, eps_t, potrf, potrs, syrk):
    """Same as _metric_solve_nb on one thread (small problems: no parallel-region overhead)."""
    _forward_range(0, U.shape[0], v, logdetK, R, s, info, U, f, eps, alpha_t, eps_t, potrf, potrs, syrk)


@njit_parallel
def _metric_solve_backward_nb(dU, df, dv, dlogdet, has_dl, U, v, s, R, alpha, eps_t, alpha_t, potrs, potri):
    """Backward kernel, parallel over token chunks. Outputs dU [N,r,d], df [N,d]; inputs dv [N,d], dlogdet [N]
    (read iff has_dl), U, v, s, R from the forward; potrs, potri: see _lapack."""
    N = U.shape[0]
    nchunk = min(N, 64)
    for c in prange(nchunk):
        _backward_range(c * N // nchunk, (c + 1) * N // nchunk, dU, df, dv, dlogdet, has_dl, U, v, s, R, alpha,
                        eps_t, alpha_t, potrs, potri)


@njit
def _metric_solve_backward_nb_serial(dU, df, dv, dlogdet, has_dl, U, v, s, R, alpha, eps_t, alpha_t, potrs,
                                     potri):
    """Same as _metric_solve_backward_nb on one thread."""
    _backward_range(0, U.shape[0], dU, df, dv, dlogdet, has_dl, U, v, s, R, alpha, eps_t, alpha_t, potrs, potri)


def _parallel(U):
    """Use the prange kernels above PARALLEL_FLOPS of work (~1 ms on one core): a parallel region costs tens of
    microseconds on an idle machine, and milliseconds (omp layer) when the cores are oversubscribed."""
    N, r, d = U.shape
    return N > 1 and N * (2 * r * r * d + r ** 3 + 8 * r * d) >= PARALLEL_FLOPS


PARALLEL_FLOPS = 5e7


# ----------------------------------------------------------------------------- public pair

def metric_solve_forward(U, f, eps, alpha, backend="numba"):
    """v = g^-1 f and log det g for g = eps*I + alpha*U^T U per token.

    U [N,r,d], f [N,d] (same float dtype), eps > 0, alpha >= 0 -> (v [N,d], logdet [N], cache).
    backend "numba" (default) or "ref" (vectorised NumPy); the choice is recorded in the cache.
    Raises NumericalError if K = eps*I + alpha*U U^T does not factor at this precision.
    """
    U, f, eps, alpha = _check(U, f, eps, alpha)
    if backend == "ref":
        return metric_solve_ref(U, f, eps, alpha)
    if backend != "numba":
        raise ConfigError(f"metric backend must be 'numba' or 'ref', got {backend!r}")
    N, r, d = U.shape
    dt = U.dtype.type
    v = np.empty((N, d), U.dtype)
    logdetK = np.empty(N, U.dtype)
    R = np.empty((N, r, r), U.dtype)
    s = np.empty((N, r), U.dtype)
    info = np.zeros(N, np.int32)
    with _blas_single_thread():
        potrf, potrs, _ = _lapack(U.dtype)
        syrk = _blas(U.dtype)
        kern = _metric_solve_nb if _parallel(U) else _metric_solve_nb_serial
        kern(v, logdetK, R, s, info, U, f, eps, dt(alpha), dt(eps), potrf, potrs, syrk)
    if info.any():
        raise _not_pd_error(U, eps, alpha, np.nonzero(info)[0])
    logdet = logdetK + (d - r) * math.log(eps)
    return v, logdet, ("numba", U, v, s, R, logdetK, eps, alpha)


def metric_solve_backward(dv, dlogdet, cache, dU_out=None):
    """(dv [N,d], dlogdet [N] or None, cache) -> (dU [N,r,d], df [N,d]) by the backend the forward used.

    dU_out: optional C-contiguous [N,r,d] array of U's dtype that receives dU (numba backend; saves allocating
    a fresh N*r*d array per call)."""
    backend, U, v, s, R, _, eps, alpha = cache
    dv = np.ascontiguousarray(dv, dtype=U.dtype)
    if dlogdet is not None:
        dlogdet = np.ascontiguousarray(dlogdet, dtype=U.dtype)
    if backend == "ref":
        return metric_solve_backward_ref(dv, dlogdet, cache)
    N, r, d = U.shape
    dt = U.dtype.type
    if dU_out is not None and dU_out.shape == U.shape and dU_out.dtype == U.dtype and dU_out.flags.c_contiguous:
        dU = dU_out
    else:
        dU = np.empty((N, r, d), U.dtype)
    df = np.empty((N, d), U.dtype)
    dl = dlogdet if dlogdet is not None else np.zeros(1, U.dtype)
    with _blas_single_thread():
        _, potrs, potri = _lapack(U.dtype)
        kern = _metric_solve_backward_nb if _parallel(U) else _metric_solve_backward_nb_serial
        kern(dU, df, dv, dl, dlogdet is not None, U, v, s, R, alpha, dt(eps), dt(alpha), potrs, potri)
    return dU, df


def metric_logdet_parts(cache):
    """(const = (d - r)*log(eps) as a float, logdetK [N]) with logdet = const + logdetK."""
    _, U, _, _, _, logdetK, eps, _ = cache
    return (U.shape[2] - U.shape[1]) * math.log(eps), logdetK
