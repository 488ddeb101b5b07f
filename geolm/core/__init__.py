"""Floor 0: errors, the Numba configuration, flat parameter buffers, config dataclasses, file I/O, the gradient checker."""
