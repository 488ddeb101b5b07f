"""Bias + GELU (tanh approximation) in one pass each way: Numba kernels over row chunks, and their NumPy reference.

n rows . F features

    x = h + b,  u = c (x + a x^3),  c = sqrt(2/pi), a = 0.044715,  e = exp(-2u),  s = 1 / (1 + e) = sigmoid(2u)
    y = 0.5 x (1 + tanh u) = x s                                     (0.5 (1 + tanh u) = sigmoid(2u))
    g = dy/dx = s + 2 x s (1 - s) c (1 + 3 a x^2),  s (1 - s) = e s^2    (1 - tanh^2 u = 4 s (1 - s))
The sigmoid form is the same function as geolm.ops.activations.gelu_forward's tanh form without its cancellations:
1 + tanh u for negative x (y loses its relative accuracy) and 1 - tanh^2 u for large |x| (g loses its absolute
accuracy there, by ~|x|^3 ulp); here y and g are accurate to a few ulp.
forward:  h [n,F] (x W without its bias), b [F] -> y = gelu(h + b) written to out[:, :F] (out may be [n,F+1],
          then out[:, F] = 1: the augmented input of a next layer whose bias rides in its GEMM), and optionally
          g [n,F] (all the backward needs: neither x nor s is kept).
backward: dy [n,F], g -> dx = dy g [n,F], db = column sums of dx [F] (float64 partial sums per row chunk).
An output may be its input (out = h, dx = dy): correct, but LLVM's overlap check then runs the loop unvectorised.
float32: e by the Cephes polynomial of geolm.ops.expsum (a few ulp: no FMA contraction, so that every code path of
the kernel rounds alike and a forward with and without g gives the same y) on -2u in [-87, 87] (e a normal float32);
beyond, e is taken as 0 (s = g = 1, y = x) or as infinite (s = y = g = 0): the exact values differ from those by less
than 2e-38 relative (float64: np.exp, the same with +-700). NaN inputs give NaN outputs.
Kernels run prange over row chunks from `PARALLEL_SIZE` entries, after stumpy's layout;
`gelu_bias_forward_ref` / `gelu_bias_backward_ref` are the NumPy reference.
"""
import math

import numpy as np

from ..core.jit import njit, njit_parallel, prange
from .expsum import _C1, _C2, _HALF, _LOG2E, _ONE, _P0, _P1, _P2, _P3, _P4, _P5  # the float32 exp of expsum

GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715
# Entries from which the prange kernels are used. These kernels run between two GEMMs, while OpenBLAS's worker
# threads still hold the cores: below this size a parallel region's hand-off costs more than a second core gives,
# so a field block (FIELD_BLOCK x the f-MLP's hidden width) runs serially.
PARALLEL_SIZE = 1 << 23

_K1 = np.float32(-2.0 * GELU_C)  # -2u = x (K1 + K3 x^2)
_K3 = np.float32(-2.0 * GELU_C * GELU_A)
_ZERO = np.float32(0.0)
_ZLO = np.float32(-87.0)
_ZHI = np.float32(87.0)
_G1 = np.float32(2.0 * GELU_C)  # g = s + x e s^2 (G1 + G3 x^2)
_G3 = np.float32(6.0 * GELU_C * GELU_A)
_I23 = np.int32(23)


# ----------------------------------------------------------------------------- NumPy reference

def gelu_bias_forward_ref(h, b):
    """-> (y, g) as new arrays of h's dtype (np.exp in that dtype; the kernels' clamping of -2u)."""
    x = h + b
    lo, hi = (-87.0, 87.0) if h.dtype == np.float32 else (-700.0, 700.0)
    with np.errstate(over="ignore", invalid="ignore"):
        z = -2.0 * GELU_C * (x + GELU_A * x * x * x)  # -2u
        e = np.exp(np.clip(z, lo, hi))
        s = 1.0 / (1.0 + e)
        s = np.where(z > hi, 0.0, s)
        y = np.where(z > hi, 0.0, x * s)
        g = s + np.where((z < lo) | (z > hi), 0.0, x * (e * s * s) * (2.0 * GELU_C + 6.0 * GELU_C * GELU_A * x * x))
    return y.astype(h.dtype), g.astype(h.dtype)


def gelu_bias_backward_ref(dy, g):
    """-> (dx [n,F], db [F])."""
    dx = dy * g
    return dx, dx.sum(axis=0)


# ----------------------------------------------------------------------------- kernels

@njit
def _forward_rows32(lo, hi, h, b, out, g, want_g, e):
    """float32 rows lo..hi-1; e [F] float32 scratch (exp(-2u) of one row, built through its int32 view)."""
    F = h.shape[1]
    ei = e.view(np.int32)
    for i in range(lo, hi):
        hi_, oi, gi = h[i], out[i], g[i]
        for j in range(F):
            x = hi_[j] + b[j]
            z = min(max(x * (_K1 + _K3 * (x * x)), _ZLO), _ZHI)  # -2u, clamped
            n = np.floor(z * _LOG2E + _HALF)
            f = z - n * _C1 - n * _C2
            q = ((((_P0 * f + _P1) * f + _P2) * f + _P3) * f + _P4) * f + _P5
            e[j] = q * f * f + f + _ONE  # p(f) in [0.7, 1.42]
            ei[j] += np.int32(n) << _I23  # exponent += n: e = p(f) 2^n
        for j in range(F):  # beyond the clamp: e = 0 (s = 1, g = 1) or e = inf (s = y = g = 0)
            x = hi_[j] + b[j]
            z = x * (_K1 + _K3 * (x * x))
            sj = _ONE / (_ONE + e[j])
            oi[j] = _ZERO if z > _ZHI else x * sj
            if want_g:
                t = (x * (e[j] * sj * sj)) * (_G1 + _G3 * (x * x))
                gi[j] = (_ZERO if z > _ZHI else sj) + (_ZERO if (z < _ZLO or z > _ZHI) else t)
        if out.shape[1] > F:
            oi[F] = _ONE


@njit
def _forward_rows64(lo, hi, h, b, out, g, want_g, e):
    """float64 rows lo..hi-1 (np.exp; e unused)."""
    F = h.shape[1]
    for i in range(lo, hi):
        hi_, oi, gi = h[i], out[i], g[i]
        for j in range(F):
            x = hi_[j] + b[j]
            z = -2.0 * GELU_C * (x + GELU_A * x * x * x)
            ej = np.exp(min(max(z, -700.0), 700.0))
            sj = 1.0 / (1.0 + ej)
            oi[j] = 0.0 if z > 700.0 else x * sj
            if want_g:
                t = (x * (ej * sj * sj)) * (2.0 * GELU_C + 6.0 * GELU_C * GELU_A * (x * x))
                gi[j] = (0.0 if z > 700.0 else sj) + (0.0 if (z < -700.0 or z > 700.0) else t)
        if out.shape[1] > F:
            oi[F] = 1.0


@njit
def _backward_rows(lo, hi, dy, g, dx, db):
    """Rows lo..hi-1: dx = dy g; db [F] float64 += column sums of dx."""
    F = g.shape[1]
    for i in range(lo, hi):
        dyi, gi, dxi = dy[i], g[i], dx[i]
        for j in range(F):
            d = dyi[j] * gi[j]
            dxi[j] = d
            db[j] += d


def _nchunk(n, size):
    return min(n, 16) if n * size >= PARALLEL_SIZE else 1


@njit_parallel
def _forward_nb(h, b, out, g, want_g, nchunk, f32):
    n, F = h.shape
    for c in prange(nchunk):
        e = np.empty(F, h.dtype)
        if f32:
            _forward_rows32(c * n // nchunk, (c + 1) * n // nchunk, h, b, out, g, want_g, e)
        else:
            _forward_rows64(c * n // nchunk, (c + 1) * n // nchunk, h, b, out, g, want_g, e)


@njit_parallel
def _backward_nb(dy, g, dx, dbs, nchunk):
    n = g.shape[0]
    for c in prange(nchunk):
        dbs[c, :] = 0.0
        _backward_rows(c * n // nchunk, (c + 1) * n // nchunk, dy, g, dx, dbs[c])


@njit
def _forward_serial(h, b, out, g, want_g, f32):
    e = np.empty(h.shape[1], h.dtype)
    if f32:
        _forward_rows32(0, h.shape[0], h, b, out, g, want_g, e)
    else:
        _forward_rows64(0, h.shape[0], h, b, out, g, want_g, e)


@njit
def _backward_serial(dy, g, dx, dbs):
    dbs[0, :] = 0.0
    _backward_rows(0, g.shape[0], dy, g, dx, dbs[0])


# ----------------------------------------------------------------------------- drivers

def gelu_bias_forward_nb(h, b, out, g=None):
    """out [n,F] or [n,F+1] <- gelu(h + b) (and 1); g [n,F] <- gelu'(h + b) unless None. h [n,F], b [F], out, g
    C-contiguous, one float dtype (out overlapping h: correct, unvectorised)."""
    n, F = h.shape
    nchunk = _nchunk(n, F)
    want_g = g is not None
    g = g if want_g else out[:1]  # a placeholder the kernel does not write
    f32 = h.dtype == np.float32
    if nchunk > 1:
        _forward_nb(h, b, out, g, want_g, nchunk, f32)
    else:
        _forward_serial(h, b, out, g, want_g, f32)


def gelu_bias_backward_nb(dy, g, dx):
    """dx [n,F] <- dy g (dx = dy: correct, unvectorised); -> db [F] (g's dtype) = column sums of dx."""
    n, F = g.shape
    nchunk = _nchunk(n, F)
    dbs = np.empty((nchunk, F), np.float64)
    if nchunk > 1:
        _backward_nb(dy, g, dx, dbs, nchunk)
    else:
        _backward_serial(dy, g, dx, dbs)
    return dbs.sum(axis=0).astype(g.dtype)
