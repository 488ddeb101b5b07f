"""geolm: geometric language models on a CPU, forward and backward written by hand.

Subpackages are floors, each importing only from the floors below it: core, ops, geometry, data, models,
training, apps (e.g. `from geolm.ops import metric, ode`). Importing geolm compiles nothing: Numba kernels
compile lazily on first call.
"""
import os

# OpenBLAS worker threads busy-wait after every GEMM before they sleep; the Numba kernels that run between GEMMs
# (the metric solve) would then share a core with a spinning thread. A short wait (2^22 cycles) frees the core
# early while runs made of many short GEMMs keep their speed. Set before NumPy loads OpenBLAS; a user value wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "22")

__version__ = "0.1.0"

from .core.errors import GeolmError, ConfigError, DataError, CheckpointError, NumericalError  # noqa: E402,F401
from .core.params import ParamSpec  # noqa: E402,F401
from .core.gradcheck import check_grads, check_grads_directional  # noqa: E402,F401
