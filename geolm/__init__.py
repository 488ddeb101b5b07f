"""geolm: geometric language models on a CPU, forward and backward written by hand.

Modules are small and flat; import what you need, e.g. `from geolm import metric, ode`.
Importing geolm compiles nothing: Numba kernels compile lazily on first call.
"""
import os

# OpenBLAS worker threads busy-wait 2^28 cycles (~0.1 s) after every GEMM; the Numba kernels that run between
# GEMMs (the metric solve) then share a core with a spinning thread and do not scale. 2^22 cycles (~1.3 ms):
# Riemann step at the original shapes, batch 8, 2 threads 11.1 -> 8.2 s, while the small default model (many short
# GEMMs) keeps its 1.00 s/step (2^4: 8.0 s but 1.09 s/step). Set before NumPy loads OpenBLAS; a user value wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "22")

__version__ = "0.1.0"

from .core.errors import GeolmError, ConfigError, DataError, CheckpointError, NumericalError  # noqa: E402,F401
from .core.params import ParamSpec  # noqa: E402,F401
from .core.gradcheck import check_grads, check_grads_directional  # noqa: E402,F401
