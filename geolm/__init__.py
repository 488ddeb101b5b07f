"""geolm: geometric language models on a CPU, forward and backward written by hand.

Modules are small and flat; import what you need, e.g. `from geolm import metric, ode`.
Importing geolm compiles nothing: Numba kernels compile lazily on first call.
"""
__version__ = "0.1.0"

from .errors import GeolmError, ConfigError, DataError, CheckpointError, NumericalError  # noqa: E402,F401
from .params import ParamSpec  # noqa: E402,F401
from .gradcheck import check_grads, check_grads_directional  # noqa: E402,F401
