"""Numba kernels of the low-rank metric (geolm.ops.metric): small-matrix code per token, a block of tokens at a time.

N flattened tokens . R metric rank (r) . D model width (d)

Per token, U [r,d] (see geolm.ops.metric for the mathematics):
  forward   K = eps I + alpha U U^T, upper triangle, as 4 x 4 tiles of dot products over d (`gram_upper`);
            K = R^T R (LAPACK ?potrf through SciPy's pointer; R upper in C order);
            s = K^-1 U f (`solve_factor`: R^T x = U f, then R s = x);  v = (f - alpha U^T s) / eps
  backward  a = U dv. Without a log-det cotangent: t = K^-1 a (solve_factor), y = (dv - alpha U^T t) / eps,
            dU = -alpha (t v^T + s y^T). With one (dl): K^-1 = Ri Ri^T, Ri = R^-1 (`inverse_factor`, then
            gram_upper of Ri), t = K^-1 a, and dU = (2 alpha dl K^-1) U (one r x r x d GEMM: BLAS ?gemm through
            SciPy's pointer) - alpha (t v^T + s y^T) (added in one pass after y).
The syrk, gemv, potrs and potri calls per token of a BLAS/LAPACK chain cost more in call and blocking overhead than
in arithmetic at r ~ 64 and gain little from wider vectors (potri most of all); the Gram tiles, R^-1, the solves
and the vector products are Numba code; potrf (blocked Cholesky) and the log-det GEMM (one large product) stay
in LAPACK/BLAS.
Numerics: the dot products (Gram tiles, U f, U dv, the back-substitution sums) are summed with reassociation and
FMA contraction (jit.njit_poly: vectorised partial sums); they round differently from a sequential float sum (and
from BLAS's own order) by the same order of magnitude. Pivots: exact Cholesky pivots of K are >= eps; a pivot not
finite or below eps/2 sets info (failing pivot + 1) and the token's outputs to 0 (the caller raises).
Outputs are preallocated and come first; scratch is allocated once per token range; prange runs over token
chunks (`_metric_solve_nb`), a serial driver serves small problems (`use_parallel`). BLAS/LAPACK is limited to one
thread while a kernel runs (`blas_single_thread`): the kernel is already parallel.
References: the per-token helpers' NumPy counterparts are np.linalg (tests/ops/test_metric_kernels.py); the whole
solve's is geolm.ops.metric.metric_solve_ref.
"""
import ctypes
import functools
import math

import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  (loaded before threadpoolctl looks for BLAS libraries)
import scipy.linalg.cython_lapack  # noqa: F401  (get_cython_function_address needs the module loaded)
from numba.extending import get_cython_function_address

from ..core.jit import njit_parallel, njit_poly, prange


@functools.cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController  # runtime dependency, imported on first use
    return ThreadpoolController()


def blas_single_thread():
    """Context limiting BLAS to one thread while a (token-parallel) kernel runs."""
    return _blas_controller().limit(limits=1, user_api="blas")


# OpenBLAS kernel sets with a small-matrix GEMM path (no packing) for products of m*n*k <= 1e6: there the log-det
# GEMM (m = d, n = k = r) is cut into row chunks within that bound so that it takes that path; elsewhere it runs as
# one call (packing amortised over the whole product).
SMALL_GEMM_ARCHS = ("SkylakeX", "Cooperlake", "SapphireRapids")
SMALL_GEMM_MNK = 1_000_000


@functools.cache
def gemm_row_chunk(r, d):
    """Rows of U^T per log-det GEMM call: d, or a chunk with chunk * r * r <= SMALL_GEMM_MNK when SciPy's OpenBLAS
    runs one of SMALL_GEMM_ARCHS (the chunks compute the same products; each is summed over r in its own order)."""
    libs = [i for i in _blas_controller().info() if i.get("internal_api") == "openblas"]
    lib = next((i for i in libs if "scipy.libs" in str(i.get("filepath", ""))), libs[0] if libs else {})
    chunk = SMALL_GEMM_MNK // max(1, r * r)
    if lib.get("architecture") not in SMALL_GEMM_ARCHS or chunk < 16 or chunk >= d:
        return d
    return -(-d // -(-d // chunk))  # equal chunks: ceil(d / number of chunks)


@functools.cache
def lapack_potrf(dtype):
    """?potrf for dtype as a ctypes function pointer into SciPy's LAPACK (Fortran ABI). A C-order [r,r] block is
    the transpose in Fortran's view: for symmetric K, uplo='L' there is R upper in C order with K = R^T R."""
    pre = "s" if np.dtype(dtype) == np.float32 else "d"
    return ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 5))(
        get_cython_function_address("scipy.linalg.cython_lapack", pre + "potrf"))


@functools.cache
def blas_gemm(dtype):
    """?gemm for dtype as a ctypes function pointer into SciPy's BLAS (Fortran ABI; a pointer argument, not a
    global, so Numba can cache the kernels that call it)."""
    pre = "s" if np.dtype(dtype) == np.float32 else "d"
    return ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 13))(
        get_cython_function_address("scipy.linalg.cython_blas", pre + "gemm"))


# ----------------------------------------------------------------------------- per-token helpers

@njit_poly
def gram_upper(K, U, alpha, eps):
    """K [r,r] upper triangle = alpha U U^T + eps I for U [r,d] (the diagonal 4 x 4 tiles also write below the
    diagonal: callers read the upper triangle only). alpha, eps in U's dtype; K may be a strided view."""
    r, d = U.shape
    r4 = r - r % 4
    zero = U.dtype.type(0)
    for i0 in range(0, r4, 4):
        a0, a1, a2, a3 = U[i0], U[i0 + 1], U[i0 + 2], U[i0 + 3]
        for j0 in range(i0, r4, 4):
            b0, b1, b2, b3 = U[j0], U[j0 + 1], U[j0 + 2], U[j0 + 3]
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = zero
            for k in range(d):  # 16 sums, vectorised over k: 8 loads per 16 FMAs
                x0, x1, x2, x3 = a0[k], a1[k], a2[k], a3[k]
                y0, y1, y2, y3 = b0[k], b1[k], b2[k], b3[k]
                s00 += x0 * y0
                s01 += x0 * y1
                s02 += x0 * y2
                s03 += x0 * y3
                s10 += x1 * y0
                s11 += x1 * y1
                s12 += x1 * y2
                s13 += x1 * y3
                s20 += x2 * y0
                s21 += x2 * y1
                s22 += x2 * y2
                s23 += x2 * y3
                s30 += x3 * y0
                s31 += x3 * y1
                s32 += x3 * y2
                s33 += x3 * y3
            K[i0, j0], K[i0, j0 + 1] = alpha * s00, alpha * s01
            K[i0, j0 + 2], K[i0, j0 + 3] = alpha * s02, alpha * s03
            K[i0 + 1, j0], K[i0 + 1, j0 + 1] = alpha * s10, alpha * s11
            K[i0 + 1, j0 + 2], K[i0 + 1, j0 + 3] = alpha * s12, alpha * s13
            K[i0 + 2, j0], K[i0 + 2, j0 + 1] = alpha * s20, alpha * s21
            K[i0 + 2, j0 + 2], K[i0 + 2, j0 + 3] = alpha * s22, alpha * s23
            K[i0 + 3, j0], K[i0 + 3, j0 + 1] = alpha * s30, alpha * s31
            K[i0 + 3, j0 + 2], K[i0 + 3, j0 + 3] = alpha * s32, alpha * s33
    for i in range(r):  # the last r % 4 columns of every row (all of the last r % 4 rows' upper part)
        for j in range(max(i, r4), r):
            acc = zero
            for k in range(d):
                acc += U[i, k] * U[j, k]
            K[i, j] = alpha * acc
    for i in range(r):
        K[i, i] += eps


@njit_poly
def matvec(w, U, x):
    """w [r] = U x for U [r,d], x [d]."""
    r, d = U.shape
    zero = U.dtype.type(0)
    for i in range(r):
        acc = zero
        for k in range(d):
            acc += U[i, k] * x[k]
        w[i] = acc


@njit_poly
def rmatvec(out, U, w):
    """out [d] = U^T w for U [r,d], w [r] (rows accumulated in order)."""
    r, d = U.shape
    for k in range(d):
        out[k] = 0.0
    for i in range(r):
        wi = w[i]
        for k in range(d):
            out[k] += wi * U[i, k]


# The triangular solves and R^-1 below update whole rows of length r (zeros outside the triangle make that exact):
# a row operation is then one full-length vector loop, where the shortened rows of the textbook loops would run
# mostly in scalar remainder code at r ~ 64; the full rows do more element operations, all of them vectorised.

@njit_poly
def solve_factor(R, w):
    """In place: w [r] <- K^-1 w for K = R^T R, R [r,r] upper with zero strict lower triangle: R^T x = w
    (forward), then R s = x (backward)."""
    r = R.shape[0]
    zero = R.dtype.type(0)
    for i in range(r):
        xi = w[i] / R[i, i]
        Ri = R[i]
        for j in range(r):  # w_j -= R_ij x_i for j > i (R_ij = 0 for j < i; w_i is replaced below)
            w[j] -= Ri[j] * xi
        w[i] = xi
    for i in range(r - 1, -1, -1):
        Ri = R[i]
        xi = w[i]
        w[i] = zero  # the sum below then runs over j > i only (R_ij = 0 for j < i), never through R_ii x_i
        acc = zero
        for j in range(r):
            acc += Ri[j] * w[j]
        w[i] = (xi - acc) / Ri[i]


@njit_poly
def inverse_factor(Ri, R):
    """Ri [r,r] = R^-1 (upper) for R [r,r] upper with zero strict lower triangle; then K^-1 = Ri Ri^T."""
    r = R.shape[0]
    for i in range(r - 1, -1, -1):  # row i of R Ri = I:  R_ii Ri_i = e_i - sum_{k>i} R_ik Ri_k
        row = Ri[i]
        for j in range(r):
            row[j] = 0.0
        row[i] = 1.0
        for k in range(i + 1, r):
            c = R[i, k]
            Rk = Ri[k]
            for j in range(r):
                row[j] -= c * Rk[j]
        rii = R[i, i]
        for j in range(r):
            row[j] /= rii


# ----------------------------------------------------------------------------- token ranges

@njit_poly
def _forward_range(lo, hi, v, logdetK, R, s, info, U, f, eps, alpha_t, eps_t, potrf):
    """Forward for tokens lo..hi-1 (one thread; scratch allocated once per range)."""
    r, d = U.shape[1], U.shape[2]
    tmp = np.empty(d, U.dtype)
    ib = np.empty(2, np.int32)  # Fortran ints: n = lda = r, info
    up = np.empty(1, np.uint8)
    up[0] = 76  # 'L' in Fortran's (transposed) view = upper in C order
    for n in range(lo, hi):
        Un, Rn, sn, vn, fn = U[n], R[n], s[n], v[n], f[n]
        gram_upper(Rn, Un, alpha_t, eps_t)  # K = eps I + alpha U U^T
        ib[0] = r
        ib[1] = 0
        potrf(up.ctypes, ib[0:1].ctypes, Rn.ctypes, ib[0:1].ctypes, ib[1:2].ctypes)  # K = R^T R
        bad = ib[1]
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
            vn[:] = 0.0
            sn[:] = 0.0
            continue
        logdetK[n] = ld  # log det K = 2 sum log diag R
        for i in range(1, r):
            for j in range(i):
                Rn[i, j] = 0.0
        matvec(sn, Un, fn)
        solve_factor(Rn, sn)  # s = K^-1 U f
        rmatvec(tmp, Un, sn)
        for j in range(d):
            vn[j] = (fn[j] - alpha_t * tmp[j]) / eps_t  # v = (f - alpha U^T s) / eps


@njit_poly
def _backward_range(lo, hi, dU, df, dv, dlogdet, has_dl, U, v, s, R, alpha, eps_t, alpha_t, gemm, mchunk):
    """Backward for tokens lo..hi-1 (one thread; scratch allocated once per range); the GEMM in row chunks of
    mchunk (gemm_row_chunk)."""
    r, d = U.shape[1], U.shape[2]
    M = np.empty((r, r), U.dtype)
    Ri = np.empty((r, r), U.dtype)
    a = np.empty(r, U.dtype)
    t = np.empty(r, U.dtype)
    tmp = np.empty(d, U.dtype)
    one, zero = U.dtype.type(1), U.dtype.type(0)
    ib = np.empty(4, np.int32)  # Fortran ints: chunk rows, r, ld = d, last chunk's rows
    ib[1] = r
    ib[2] = d
    tr = np.empty(1, np.uint8)
    tr[0] = 78  # 'N'
    sc = np.empty(2, U.dtype)  # GEMM alpha = 1, beta = 0
    sc[0] = 1.0
    sc[1] = 0.0
    for n in range(lo, hi):
        Un, dUn, sn, vn, yn, dvn = U[n], dU[n], s[n], v[n], df[n], dv[n]
        matvec(a, Un, dvn)  # U dv
        if has_dl:
            inverse_factor(Ri, R[n])
            gram_upper(M, Ri, one, zero)  # K^-1 = R^-1 R^-T (upper triangle)
            for i in range(r):
                for j in range(i):
                    M[i, j] = M[j, i]
            matvec(t, M, a)  # t = K^-1 U dv
            cl = U.dtype.type(2.0 * alpha * dlogdet[n])  # logdet = ... + log det K:  dU = 2 alpha dl K^-1 U + ...
            for i in range(r):
                for j in range(r):
                    M[i, j] *= cl
            # C order dU = M U is, in Fortran's view, dU^T [d,r] = U^T [d,r] @ M^T (M symmetric): rows c0..c0+m
            Uf, dUf = Un.ravel(), dUn.ravel()
            for c0 in range(0, d, mchunk):
                ib[0] = min(mchunk, d - c0)
                gemm(tr.ctypes, tr.ctypes, ib[0:1].ctypes, ib[1:2].ctypes, ib[1:2].ctypes, sc[0:1].ctypes,
                     Uf[c0:].ctypes, ib[2:3].ctypes, M.ctypes, ib[1:2].ctypes, sc[1:2].ctypes, dUf[c0:].ctypes,
                     ib[2:3].ctypes)
        else:
            t[:] = a
            solve_factor(R[n], t)  # t = K^-1 U dv
        rmatvec(tmp, Un, t)
        for j in range(d):
            yn[j] = (dvn[j] - alpha_t * tmp[j]) / eps_t  # y = g^-1 dv = df
        for i in range(r):  # v = (f - alpha U^T K^-1 U f) / eps:  dU += -alpha (t v^T + s y^T)
            ti = alpha_t * t[i]
            si = alpha_t * sn[i]
            row = dUn[i]
            if has_dl:
                for j in range(d):
                    row[j] = row[j] - ti * vn[j] - si * yn[j]
            else:
                for j in range(d):
                    row[j] = -ti * vn[j] - si * yn[j]


# ----------------------------------------------------------------------------- drivers

@njit_parallel
def _metric_solve_nb(v, logdetK, R, s, info, U, f, eps, alpha_t, eps_t, potrf):
    """Forward kernel, parallel over token chunks. Outputs v [N,d], logdetK [N], R [N,r,r] (upper Cholesky
    factor, K = R^T R), s [N,r] (= K^-1 U f), info [N] (0 ok, else failing pivot + 1); inputs U [N,r,d],
    f [N,d] C-contiguous; eps float64; alpha_t, eps_t in U's dtype; potrf: lapack_potrf(U.dtype)."""
    N = U.shape[0]
    nchunk = min(N, 64)
    for c in prange(nchunk):
        _forward_range(c * N // nchunk, (c + 1) * N // nchunk, v, logdetK, R, s, info, U, f, eps, alpha_t, eps_t,
                       potrf)


@njit_poly
def _metric_solve_nb_serial(v, logdetK, R, s, info, U, f, eps, alpha_t, eps_t, potrf):
    """Same as _metric_solve_nb on one thread (small problems: no parallel-region overhead)."""
    _forward_range(0, U.shape[0], v, logdetK, R, s, info, U, f, eps, alpha_t, eps_t, potrf)


@njit_parallel
def _metric_solve_backward_nb(dU, df, dv, dlogdet, has_dl, U, v, s, R, alpha, eps_t, alpha_t, gemm, mchunk):
    """Backward kernel, parallel over token chunks. Outputs dU [N,r,d], df [N,d]; inputs dv [N,d], dlogdet [N]
    (read iff has_dl), U, v, s, R from the forward; gemm: blas_gemm(U.dtype); mchunk: gemm_row_chunk(r, d)."""
    N = U.shape[0]
    nchunk = min(N, 64)
    for c in prange(nchunk):
        _backward_range(c * N // nchunk, (c + 1) * N // nchunk, dU, df, dv, dlogdet, has_dl, U, v, s, R, alpha,
                        eps_t, alpha_t, gemm, mchunk)


@njit_poly
def _metric_solve_backward_nb_serial(dU, df, dv, dlogdet, has_dl, U, v, s, R, alpha, eps_t, alpha_t, gemm,
                                     mchunk):
    """Same as _metric_solve_backward_nb on one thread."""
    _backward_range(0, U.shape[0], dU, df, dv, dlogdet, has_dl, U, v, s, R, alpha, eps_t, alpha_t, gemm, mchunk)


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
    kern = _metric_solve_nb if use_parallel(U) else _metric_solve_nb_serial
    with blas_single_thread():
        kern(v, logdetK, R, s, info, U, f, eps, dt(alpha), dt(eps), lapack_potrf(U.dtype))


def backward_nb(dU, df, dv, dlogdet, U, v, s, R, eps, alpha):
    """Backward into preallocated dU [N,r,d], df [N,d]; dlogdet [N] or None (then K^-1 is never formed)."""
    dt = U.dtype.type
    dl = dlogdet if dlogdet is not None else np.zeros(1, U.dtype)
    kern = _metric_solve_backward_nb if use_parallel(U) else _metric_solve_backward_nb_serial
    _, r, d = U.shape
    if dlogdet is None:
        kern(dU, df, dv, dl, False, U, v, s, R, alpha, dt(eps), dt(alpha), blas_gemm(U.dtype), d)
        return
    with blas_single_thread():
        kern(dU, df, dv, dl, True, U, v, s, R, alpha, dt(eps), dt(alpha), blas_gemm(U.dtype), gemm_row_chunk(r, d))
