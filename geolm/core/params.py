"""One flat parameter buffer seen through nested dicts of views with dotted names.

A spec is a nested dict of shapes, e.g. {"emb": {"w": (V, D)}, "blocks": {"0": {...}}}.
`spec.views(theta)` returns the same nesting with ndarray views into the 1-D buffer theta;
views are never rebound: update theta (or a view) in place.
"""
import json
import math

import numpy as np


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

    def zeros(self, dtype=np.float32):
        return np.zeros(self.size, dtype=dtype)

    def views(self, theta):
        """Nested dict of views into theta (1-D, length self.size)."""
        if theta.ndim != 1 or theta.shape[0] != self.size:
            raise ValueError(f"flat buffer has shape {theta.shape}, spec needs ({self.size},)")
        out = {}
        for name, shape, off in self.entries:
            d = out
            keys = name.split(".")
            for k in keys[:-1]:
                d = d.setdefault(k, {})
            d[keys[-1]] = theta[off:off + math.prod(shape)].reshape(shape)
        return out

    def named(self, theta):
        """{dotted name: view} for logs and checkpoints."""
        return {name: theta[off:off + math.prod(shape)].reshape(shape) for name, shape, off in self.entries}

    def to_json(self):
        return json.dumps([[n, list(s)] for n, s, _ in self.entries])

    def __eq__(self, other):
        return isinstance(other, ParamSpec) and [(n, s) for n, s, _ in self.entries] == [
            (n, s) for n, s, _ in other.entries]

    def __repr__(self):
        return f"ParamSpec({len(self.entries)} arrays, {self.size} params)"


def accumulate(dst, src):
    """dst += src over matching nested dicts (dst: grad views; src: a backward's grad dict)."""
    for k, v in src.items():
        if isinstance(v, dict):
            accumulate(dst[k], v)
        else:
            dst[k] += v


def glorot_(w, rng):
    """Glorot-uniform init in place for a [fan_in, fan_out] (or [..., fan_in, fan_out]) weight."""
    fan_in, fan_out = w.shape[-2], w.shape[-1]
    a = math.sqrt(6.0 / (fan_in + fan_out))
    w[...] = rng.uniform(-a, a, size=w.shape)


def normal_(w, rng, std):
    w[...] = rng.normal(0.0, std, size=w.shape)
