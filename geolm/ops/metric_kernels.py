"""Numba kernels of the low-rank metric (geolm.ops.metric): per-token BLAS/LAPACK through SciPy's pointers.

N flattened tokens . R metric rank (r) . D model width (d)

Per token (see geolm.ops.metric for the mathematics): syrk forms the upper (C order) triangle of U U^T, potrf
factors K = R^T R, potrs solves with the factor, potri forms K^-1 (only for a log-det cotangent); np.dot covers
U f, U^T s and K^-1 U. The kernels take the BLAS/LAPACK function pointers as arguments (not globals) so Numba can
cache them. Outputs are preallocated and come first; scratch is allocated once per token range; prange runs
over token chunks (`_metric_solve_nb`), a serial driver serves small problems (`use_parallel`).
BLAS is limited to one thread while a kernel runs (`blas_single_thread`): the kernel is already parallel.
"""
import ctypes
import functools
import math

import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  (loaded before threadpoolctl looks for BLAS libraries)
import scipy.linalg.cython_lapack  # noqa: F401
from numba.extending import get_cython_function_address

from ..core.jit import njit, njit_parallel, prange


@functools.cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController  # runtime dependency, imported on first use
    return ThreadpoolController()


def blas_single_thread():
    """Context limiting BLAS to one thread while a (token-parallel) kernel runs."""
    return _blas_controller().limit(limits=1, user_api="blas")


@functools.cache
def lapack(dtype):
    """(potrf, potrs, potri) for dtype as ctypes function pointers into SciPy's LAPACK (Fortran ABI).

    A C-order [r,r] block is the transpose in Fortran's view; for symmetric K, uplo='L' there is R upper in C
    order with K = R^T R.
    """
    pre = "s" if np.dtype(dtype) == np.float32 else "d"
    return tuple(ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * nargs))(
        get_cython_function_address("scipy.linalg.cython_lapack", pre + name))
        for name, nargs in (("potrf", 5), ("potrs", 8), ("potri", 5)))


@functools.cache
def blas_syrk(dtype):
    """?syrk for dtype as a ctypes function pointer into SciPy's BLAS (Fortran ABI), like lapack()."""
    pre = "s" if np.dtype(dtype) == np.float32 else "d"
    return ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 10))(
        get_cython_function_address("scipy.linalg.cython_blas", pre + "syrk"))


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


# ----------------------------------------------------------------------------- drivers

PARALLEL_FLOPS = 5e7  # work (flops) from which the prange kernels are used


def use_parallel(U):
    """True when U [N,r,d] is worth a parallel region: a region has a fixed cost (which grows when the cores are
    oversubscribed) that must be small against the work."""
    N, r, d = U.shape
    return N > 1 and N * (2 * r * r * d + r ** 3 + 8 * r * d) >= PARALLEL_FLOPS


def forward_nb(v, logdetK, R, s, info, U, f, eps, alpha):
    """Forward into preallocated v [N,d], logdetK [N], R [N,r,r], s [N,r], info [N] int32 (all of U's dtype but
    info); U [N,r,d], f [N,d] C-contiguous; eps, alpha Python floats."""
    dt = U.dtype.type
    with blas_single_thread():
        potrf, potrs, _ = lapack(U.dtype)
        kern = _metric_solve_nb if use_parallel(U) else _metric_solve_nb_serial
        kern(v, logdetK, R, s, info, U, f, eps, dt(alpha), dt(eps), potrf, potrs, blas_syrk(U.dtype))


def backward_nb(dU, df, dv, dlogdet, U, v, s, R, eps, alpha):
    """Backward into preallocated dU [N,r,d], df [N,d]; dlogdet [N] or None (then K^-1 is never formed)."""
    dt = U.dtype.type
    dl = dlogdet if dlogdet is not None else np.zeros(1, U.dtype)
    with blas_single_thread():
        _, potrs, potri = lapack(U.dtype)
        kern = _metric_solve_backward_nb if use_parallel(U) else _metric_solve_backward_nb_serial
        kern(dU, df, dv, dl, dlogdet is not None, U, v, s, R, alpha, dt(eps), dt(alpha), potrs, potri)
