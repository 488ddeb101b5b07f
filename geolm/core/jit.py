"""The only Numba configuration in geolm: every kernel is decorated from here (cache=True, NumPy error model,
fastmath off except the named reassociation / contraction variants below).

Kernels compile lazily on first call (no signatures), so `import geolm` never compiles anything.
NUMBA_DISABLE_JIT=1 runs every kernel as plain Python (used by tests for coverage).
"""
import os

import numba

# OpenBLAS and Numba's thread pool alternate in every training step; OpenMP's spin-waiting between parallel
# regions steals the cores the BLAS threads need next. The workqueue layer sleeps instead.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

# error_model="numpy": float division by zero gives inf/nan as in NumPy instead of a ZeroDivisionError branch,
# a branch that would stop LLVM from vectorising every loop with a division (Adam's update among them).
njit = numba.njit(cache=True, fastmath=False, nogil=True, error_model="numpy")
# Reductions only (float64 accumulators): reassociation lets LLVM vectorise the sum; the result differs from the
# sequential sum only in the last bits of a float64.
njit_reassoc = numba.njit(cache=True, fastmath={"reassoc"}, nogil=True, error_model="numpy")
# Polynomial kernels (geolm.ops.expsum): reassociation for the sums and FMA contraction for Horner steps (one
# rounding instead of two: at least as accurate, and fewer instructions).
njit_poly = numba.njit(cache=True, fastmath={"reassoc", "contract"}, nogil=True, error_model="numpy")
njit_parallel = numba.njit(cache=True, fastmath=False, nogil=True, parallel=True, error_model="numpy")
prange = numba.prange


def set_threads(n):
    """Set Numba's thread count (bounded by its pool size)."""
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
