"""One flat parameter buffer seen through nested dicts of views with dotted names; the one gradient accumulator.

R table rows . D row width . M scattered rows

A spec is a nested dict of shapes, e.g. {"emb": {"w": (V, D)}, "blocks": {"0": {...}}}.
`spec.views(theta)` returns the same nesting with ndarray views into the 1-D buffer theta;
views are never rebound: update theta (or a view) in place.
`accumulate(grad_views, dp)` adds a backward's gradient dict into the grad views. A leaf of dp is a dense array
or a `RowGrad`, the gradient of a [R,D] table read by row lookups, which is sparse in rows:
    dW[:F] += head,   dW[rows_i[m]] += values_i[m]   for every scatter i, m = 1..M_i in order (repeats accumulate)
so a step never allocates, zeroes or adds a dense [R,D] array for it (geolm.core.scatter adds the rows).
"""
import json
import math
from typing import NamedTuple

import numpy as np

_VIEW_CACHE = 4  # buffers whose views a spec keeps (theta and grad of a run, plus a few temporaries)


def _walk(tree, prefix=""):
    for k in tree:
        v = tree[k]
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            yield from _walk(v, name)
        else:
            yield name, tuple(int(s) for s in v)


class ParamSpec:
    """Layout of a flat parameter buffer: ordered (dotted name, shape, offset)."""

    def __init__(self, shapes):
        self.shapes = shapes
        self.entries = []  # (name, shape, offset)
        off = 0
        for name, shape in _walk(shapes):
            self.entries.append((name, shape, off))
            off += math.prod(shape)
        self.size = off
        self._cache = []  # [(buffer, dtype, views)], most recent first

    def zeros(self, dtype=np.float32):
        return np.zeros(self.size, dtype=dtype)

    def views(self, theta):
        """Nested dict of views into theta (1-D, length self.size).

        The dict for a given buffer object is built once and returned again on later calls (it must not be
        modified); each cache entry holds a reference to its buffer, so its views can never outlive the memory."""
        if theta.ndim != 1 or theta.shape[0] != self.size:
            raise ValueError(f"flat buffer has shape {theta.shape}, spec needs ({self.size},)")
        for i, (buf, dtype, out) in enumerate(self._cache):
            if buf is theta and dtype == theta.dtype:
                if i:
                    self._cache.insert(0, self._cache.pop(i))
                return out
        out = {}
        for name, shape, off in self.entries:
            d = out
            keys = name.split(".")
            for k in keys[:-1]:
                d = d.setdefault(k, {})
            d[keys[-1]] = theta[off:off + math.prod(shape)].reshape(shape)
        self._cache.insert(0, (theta, theta.dtype, out))
        del self._cache[_VIEW_CACHE:]
        return out

    def named(self, theta):
        """{dotted name: view} for logs and checkpoints."""
        return {name: theta[off:off + math.prod(shape)].reshape(shape) for name, shape, off in self.entries}

    def to_json(self):
        return json.dumps([[n, list(s)] for n, s, _ in self.entries])

    def __getstate__(self):
        return {"shapes": self.shapes, "entries": self.entries, "size": self.size, "_cache": []}

    def __eq__(self, other):
        return isinstance(other, ParamSpec) and [(n, s) for n, s, _ in self.entries] == [
            (n, s) for n, s, _ in other.entries]

    def __repr__(self):
        return f"ParamSpec({len(self.entries)} arrays, {self.size} params)"


class RowGrad(NamedTuple):
    """Gradient of a [R,D] table, sparse in rows: dense rows [0, F) = head [F,D] (or None), then the scatters
    ((rows_i [M_i] int in [F, R), values_i [M_i,D]), ...) added row by row in order (see module docstring)."""

    scatters: tuple
    head: np.ndarray = None

    def add_to(self, dst):
        """dst [R,D] += this gradient, in place."""
        from .scatter import scatter_add_rows  # lazy: importing geolm (which re-exports ParamSpec) loads no Numba
        if self.head is not None:
            dst[:self.head.shape[0]] += self.head
        for rows, values in self.scatters:
            scatter_add_rows(dst, rows, values)


def accumulate(dst, src):
    """dst += src over matching nested dicts (dst: grad views; src: a backward's grad dict, leaves dense arrays
    or RowGrad)."""
    for k, v in src.items():
        if isinstance(v, dict):
            accumulate(dst[k], v)
        elif isinstance(v, RowGrad):
            v.add_to(dst[k])
        else:
            dst[k] += v


def glorot_(w, rng):
    """Glorot-uniform init in place for a [fan_in, fan_out] (or [..., fan_in, fan_out]) weight."""
    fan_in, fan_out = w.shape[-2], w.shape[-1]
    a = math.sqrt(6.0 / (fan_in + fan_out))
    w[...] = rng.uniform(-a, a, size=w.shape)


def normal_(w, rng, std):
    w[...] = rng.normal(0.0, std, size=w.shape)
