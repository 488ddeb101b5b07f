"""Floor 1: differentiable ops as forward/backward pairs (NumPy references beside Numba kernels)."""
