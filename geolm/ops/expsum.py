"""exp in place with float64 row sums, float32: one vectorised Numba kernel instead of NumPy's exp + sum passes.

z [B,V] float32 -> z = exp(z) (in place), s [B] float64 row sums, bad = #entries outside the safe range.

exp(x) = 2^n * p(f),  n = round(x / ln2),  f = x - n*ln2 (Cody-Waite: ln2 = C1 - C2, C1 exact in 9 bits),
p(f) = 1 + f + f^2 * q(f) on |f| <= ln2/2, q the degree-5 minimax polynomial of Cephes expf (<= 1-2 ulp);
the product 2^n * p(f) is formed by adding n << 23 to p's exponent bits through an int32 view of the row, so the
loop vectorises (Numba/LLVM: no calls, float32 constants, FMA contraction; a second, read-only pass sums the row
in float64).
Entries below -87 give 0 (exp would be a float32 subnormal, < 1.7e-38: flushed to zero). Entries above 88 (exp
overflows float32) and NaN are not computed faithfully: they are counted in `bad` and the caller must redo those
rows another way (geolm.ops.losses.shifted_exp_rows: the shifted path).
`exp_rows_ref` is the NumPy reference (np.exp, float64 sums).
"""
import numpy as np

from ..core.jit import njit_poly

_LOG2E = np.float32(1.44269504088896341)
_C1 = np.float32(0.693359375)  # ln2 = C1 - C2, C1 = 355/512 exactly representable
_C2 = np.float32(-2.12194440e-4)
_P0 = np.float32(1.9875691500e-4)
_P1 = np.float32(1.3981999507e-3)
_P2 = np.float32(8.3334519073e-3)
_P3 = np.float32(4.1665795894e-2)
_P4 = np.float32(1.6666665459e-1)
_P5 = np.float32(5.0000001201e-1)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
_HI = np.float32(88.0)
_LO = np.float32(-87.0)
_ZERO = np.float32(0.0)
_I0 = np.int32(0)
_I23 = np.int32(23)


def exp_rows_ref(z):
    """NumPy reference: z = exp(z) in place (0 below -87) -> (s [B] float64 row sums, bad count)."""
    bad = int(np.count_nonzero(~(z <= 88.0)))
    low = z < -87.0
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        np.exp(z, out=z)
    z[low] = 0.0
    return z.sum(axis=1, dtype=np.float64), bad


@njit_poly
def _exp_rows_nb(z, s):
    # z [B,V] float32 in place (zi: its int32 view); s [B] float64 out
    B, V = z.shape
    zi = z.view(np.int32)
    bad = 0
    for b in range(B):
        row = z[b]
        rowi = zi[b]
        for j in range(V):
            x = row[j]
            bad += not (x <= _HI)  # also NaN
            low = x < _LO
            x = max(x, _LO)
            n = np.floor(x * _LOG2E + _HALF)
            f = x - n * _C1 - n * _C2
            q = ((((_P0 * f + _P1) * f + _P2) * f + _P3) * f + _P4) * f + _P5
            row[j] = _ZERO if low else q * f * f + f + _ONE  # p(f) in [0.7, 1.42]
            rowi[j] += _I0 if low else np.int32(n) << _I23  # exponent += n: p(f) * 2^n
        acc = 0.0
        for j in range(V):
            acc += row[j]
        s[b] = acc
    return bad


def exp_rows(z):
    """z [B,V] float32 C-contiguous: z = exp(z) in place -> (s [B] float64 row sums, bad count).

    bad > 0 means some entry was above 88 or NaN: those rows are not exact (see module doc)."""
    s = np.empty(z.shape[0], np.float64)
    bad = _exp_rows_nb(z, s)
    return s, int(bad)
