import json
import pickle

import numpy as np
import pytest

from geolm.training.optim import adam_init, adam_step
from geolm.core.params import ParamSpec, RowGrad, accumulate, glorot_, normal_

SHAPES = {"emb": {"w": (5, 3)}, "blocks": {"0": {"w": (3, 4), "b": (4,)}, "1": {"w": (4, 2), "b": (2,)}},
          "scale": (1,)}


def test_layout_and_size():
    spec = ParamSpec(SHAPES)
    assert spec.size == 15 + 12 + 4 + 8 + 2 + 1
    assert [n for n, _, _ in spec.entries] == ["emb.w", "blocks.0.w", "blocks.0.b", "blocks.1.w", "blocks.1.b",
                                               "scale"]
    offs = [o for _, _, o in spec.entries]
    assert offs == sorted(offs) and offs[0] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_views_share_memory_and_nest(dtype):
    spec = ParamSpec(SHAPES)
    theta = spec.zeros(dtype)
    assert theta.dtype == dtype and theta.shape == (spec.size,)
    p = spec.views(theta)
    assert p["blocks"]["1"]["w"].shape == (4, 2) and p["scale"].shape == (1,)
    p["blocks"]["0"]["b"][...] = 7.0
    assert theta[15 + 12:15 + 16].tolist() == [7.0] * 4
    theta[0] = 3.0
    assert p["emb"]["w"][0, 0] == 3.0
    for name, v in spec.named(theta).items():
        assert np.shares_memory(v, theta), name


def test_views_survive_in_place_adam_step(rng):
    spec = ParamSpec(SHAPES)
    theta = rng.standard_normal(spec.size).astype(np.float32)
    grad = spec.zeros(np.float32)
    p, g = spec.views(theta), spec.views(grad)
    before = {n: v.copy() for n, v in spec.named(theta).items()}
    state = adam_init(theta)
    for _ in range(3):
        grad[...] = rng.standard_normal(spec.size)
        adam_step(theta, grad, state, lr=0.1, weight_decay=0.01)
    for leaf in (p["emb"]["w"], p["blocks"]["0"]["b"], p["scale"], g["blocks"]["1"]["w"]):
        assert np.shares_memory(leaf, theta) or np.shares_memory(leaf, grad)
    for name, v in spec.named(theta).items():
        assert np.shares_memory(v, theta) and not np.array_equal(v, before[name]), name
    # the views still read the live buffer
    np.testing.assert_array_equal(p["blocks"]["1"]["w"].ravel(), theta[15 + 12 + 4:15 + 12 + 4 + 8])
    assert theta.dtype == np.float32


def test_named():
    spec = ParamSpec(SHAPES)
    theta = np.arange(spec.size, dtype=np.float64)
    named = spec.named(theta)
    assert list(named) == [n for n, _, _ in spec.entries]
    assert named["blocks.0.b"].tolist() == [27.0, 28.0, 29.0, 30.0]
    assert named["scale"].tolist() == [spec.size - 1.0]


def test_to_json_round_trip_and_eq():
    spec = ParamSpec(SHAPES)
    data = json.loads(spec.to_json())
    assert data[0] == ["emb.w", [5, 3]] and data[-1] == ["scale", [1]]
    assert spec == ParamSpec(SHAPES)
    other = {**SHAPES, "scale": (2,)}
    assert spec != ParamSpec(other)
    assert "6 arrays" in repr(spec)


def test_wrong_buffer_raises():
    spec = ParamSpec(SHAPES)
    with pytest.raises(ValueError, match="spec needs"):
        spec.views(np.zeros(spec.size + 1))
    with pytest.raises(ValueError, match="spec needs"):
        spec.views(np.zeros((1, spec.size)))


def test_accumulate_adds_in_place():
    spec = ParamSpec(SHAPES)
    grad = spec.zeros(np.float64)
    g = spec.views(grad)
    src = {"blocks": {"1": {"b": np.array([1.0, 2.0])}}, "scale": np.array([0.5])}
    accumulate(g, src)
    accumulate(g, src)  # tied / repeated use: contributions sum
    assert g["blocks"]["1"]["b"].tolist() == [2.0, 4.0] and grad[-1] == 1.0
    assert np.count_nonzero(grad) == 3


def test_inits(rng):
    w = np.zeros((30, 50))
    glorot_(w, rng)
    a = np.sqrt(6.0 / 80)
    assert np.abs(w).max() <= a and np.abs(w).max() > 0.9 * a
    n = np.zeros((200, 100), np.float32)
    normal_(n, rng, 0.02)
    assert n.dtype == np.float32 and abs(n.std() - 0.02) < 1e-3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("F", [0, 2])
def test_rowgrad_accumulate_matches_dense(rng, dtype, F):
    """A RowGrad adds exactly what the dense gradient (head rows + np.add.at of every scatter) adds."""
    spec = ParamSpec({"t": {"w": (F + 6, 3)}, "b": (3,)})
    head = rng.standard_normal((F, 3)).astype(dtype) if F else None
    vals = rng.standard_normal((5, 3)).astype(dtype)
    scatters = ((np.array([F + 1, F + 4, F + 1, F + 1, F]), vals),  # repeated rows accumulate
                (np.array([F + 5]), rng.standard_normal((1, 3)).astype(dtype)),
                (np.array([F + 4, F + 4, F + 2, F, F + 3]), vals))  # values shared between scatters
    dense = np.zeros((F + 6, 3), dtype)
    if F:
        dense[:F] += head
    for rows, v in scatters:
        np.add.at(dense, rows, v)
    grad = spec.zeros(dtype) + 1.0
    g = spec.views(grad)
    accumulate(g, {"t": {"w": RowGrad(scatters, head)}, "b": np.ones(3, dtype)})
    tol = 1e-6 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(g["t"]["w"], 1.0 + dense, rtol=tol)
    assert g["t"]["w"].dtype == dtype and g["b"].tolist() == [2.0] * 3


def test_rowgrad_into_zeros_is_exact(rng):
    """Into a zeroed buffer the sums are formed in scatter order, bit for bit as sequential += would."""
    w = np.zeros((4, 2), np.float32)
    vals = rng.standard_normal((6, 2)).astype(np.float32)
    rows = np.array([1, 3, 1, 1, 0, 3])
    RowGrad(((rows, vals),)).add_to(w)
    want = np.zeros((4, 2), np.float32)
    for r, v in zip(rows, vals):
        want[r] += v
    np.testing.assert_array_equal(w, want)


def test_views_are_cached_per_buffer_and_never_stale(rng):
    spec = ParamSpec(SHAPES)
    a = rng.standard_normal(spec.size)
    p = spec.views(a)
    assert spec.views(a) is p  # built once per buffer
    b = a.copy()
    q = spec.views(b)
    assert q is not p and all(np.shares_memory(v, b) for v in (q["emb"]["w"], q["scale"]))
    a32 = a.astype(np.float32)
    assert spec.views(a32)["emb"]["w"].dtype == np.float32
    # buffers come and go (addresses get reused): every dict returned views the buffer it was asked for
    for _ in range(20):
        c = rng.standard_normal(spec.size)
        v = spec.views(c)
        np.testing.assert_array_equal(v["blocks"]["1"]["b"], c[15 + 12 + 4 + 8:15 + 12 + 4 + 8 + 2])
        assert np.shares_memory(v["scale"], c)
        del c, v
    assert len(spec._cache) <= 4
    theta = spec.zeros()
    spec.views(theta)
    spec2 = pickle.loads(pickle.dumps(spec))
    assert spec2 == spec and spec2._cache == []
