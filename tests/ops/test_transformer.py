import numpy as np
import pytest

from geolm.core.errors import ConfigError
from geolm.core.gradcheck import check_grads
from geolm.core.params import ParamSpec, accumulate
from geolm.ops.transformer import (block_backward, block_forward, block_init_, block_shapes, encoder_backward,
                               encoder_forward, encoder_init_, encoder_shapes)


def _random(spec, rng, dtype=np.float64, scale=0.3):
    theta = (scale * rng.standard_normal(spec.size)).astype(dtype)
    p = spec.views(theta)
    for blk in p.get("blocks", {"x": p}).values():
        for ln in ("ln1", "ln2"):
            if ln in blk:
                blk[ln]["w"] += 1.0
    return theta, p


@pytest.mark.parametrize("B,T,D,H,F", [(1, 1, 4, 1, 3), (1, 3, 4, 2, 8), (2, 2, 6, 3, 5), (2, 4, 3, 1, 2)])
def test_block_gradcheck(rng, strict_float, B, T, D, H, F):
    _, p = _random(ParamSpec(block_shapes(D, F)), rng)
    x = rng.standard_normal((B, T, D))
    check_grads(block_forward, block_backward, {"x": x, "p": p, "n_heads": H}, rng=rng)


def test_block_gradcheck_noncausal(rng, strict_float):
    _, p = _random(ParamSpec(block_shapes(4, 6)), rng)
    check_grads(block_forward, block_backward,
                {"x": rng.standard_normal((2, 3, 4)), "p": p, "n_heads": 2, "causal": False}, rng=rng)


@pytest.mark.parametrize("B,T,V,Tmax,D,L,H,F", [(1, 1, 3, 1, 4, 1, 1, 4), (2, 3, 5, 4, 4, 2, 2, 6),
                                                 (1, 4, 2, 4, 6, 1, 3, 5), (2, 2, 4, 3, 4, 0, 2, 4)])
def test_encoder_gradcheck(rng, strict_float, B, T, V, Tmax, D, L, H, F):
    _, p = _random(ParamSpec(encoder_shapes(V, Tmax, D, L, F)), rng)
    ids = rng.integers(0, V, (B, T))
    check_grads(encoder_forward, encoder_backward, {"ids": ids, "p": p, "n_heads": H}, rng=rng)


def test_encoder_grads_fill_a_flat_buffer(rng):
    spec = ParamSpec(encoder_shapes(7, 5, 8, 2, 16))
    theta, p = _random(spec, rng)
    h, cache = encoder_forward(rng.integers(0, 7, (2, 5)), p, 2)
    assert h.shape == (2, 5, 8)
    grad = spec.zeros(np.float64)
    accumulate(spec.views(grad), encoder_backward(rng.standard_normal(h.shape), cache))
    assert np.count_nonzero(grad) > 0.9 * spec.size  # every array receives a gradient (unused wte rows aside)


def test_encoder_causal(rng):
    spec = ParamSpec(encoder_shapes(11, 6, 8, 2, 16))
    _, p = _random(spec, rng, scale=0.5)
    ids = rng.integers(0, 11, (2, 6))
    h, _ = encoder_forward(ids, p, 2)
    for t in range(5):
        ids2 = ids.copy()
        ids2[:, t + 1:] = (ids[:, t + 1:] + 1 + rng.integers(0, 9, ids[:, t + 1:].shape)) % 11
        h2, _ = encoder_forward(ids2, p, 2)
        np.testing.assert_array_equal(h2[:, :t + 1], h[:, :t + 1])
        assert not np.allclose(h2[:, t + 1:], h[:, t + 1:])


def test_encoder_is_embeddings_plus_blocks(rng):
    spec = ParamSpec(encoder_shapes(6, 4, 4, 1, 8))
    _, p = _random(spec, rng)
    ids = rng.integers(0, 6, (2, 3))
    h, _ = encoder_forward(ids, p, 2)
    ref, _ = block_forward(p["wte"][ids] + p["wpe"][:3], p["blocks"]["0"], 2)
    np.testing.assert_array_equal(h, ref)  # and no final LayerNorm
    h0, _ = encoder_forward(ids, ParamSpec(encoder_shapes(6, 4, 4, 0, 8)).views(
        np.concatenate([p["wte"].ravel(), p["wpe"].ravel()])), 2)
    np.testing.assert_array_equal(h0, p["wte"][ids] + p["wpe"][:3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype(rng, dtype):
    spec = ParamSpec(encoder_shapes(9, 5, 8, 2, 12))
    theta = spec.zeros(dtype)
    p = spec.views(theta)
    encoder_init_(p, rng)
    h, cache = encoder_forward(rng.integers(0, 9, (2, 4)), p, 2)
    assert h.dtype == dtype
    dp = encoder_backward(np.ones_like(h), cache)
    grad = spec.zeros(dtype)
    accumulate(spec.views(grad), dp)
    assert grad.dtype == dtype
    x = rng.standard_normal((2, 3, 8)).astype(dtype)
    y, c = block_forward(x, p["blocks"]["0"], 2)
    dx, dpb = block_backward(np.ones_like(y), c)
    assert y.dtype == dx.dtype == dpb["mlp"]["fc1"]["w"].dtype == dtype


def test_encoder_init(rng):
    spec = ParamSpec(encoder_shapes(500, 64, 32, 2, 64))
    theta = spec.zeros(np.float64) + 7.0
    p = spec.views(theta)
    encoder_init_(p, rng)
    assert abs(p["wte"].std() - 0.02) < 0.002 and abs(p["wpe"].std() - 0.02) < 0.003
    for blk in p["blocks"].values():
        assert np.all(blk["ln1"]["w"] == 1) and np.all(blk["ln2"]["b"] == 0)
        assert np.all(blk["attn"]["qkv"]["b"] == 0) and np.all(blk["mlp"]["fc2"]["b"] == 0)
        assert 0 < np.abs(blk["attn"]["qkv"]["w"]).max() <= np.sqrt(6.0 / (32 + 96))
        assert 0 < np.abs(blk["mlp"]["fc2"]["w"]).max() <= np.sqrt(6.0 / 96)
    assert not np.any(theta == 7.0)


def test_zero_layer_encoder(rng):
    spec = ParamSpec(encoder_shapes(5, 3, 4, 0, 4))
    theta = spec.zeros(np.float64)
    p = spec.views(theta)
    encoder_init_(p, rng)
    h, cache = encoder_forward(np.array([[1, 1, 2]]), p, 2)
    grad = spec.zeros(np.float64)
    accumulate(spec.views(grad), encoder_backward(np.ones_like(h), cache))
    np.testing.assert_array_equal(spec.views(grad)["wte"][1], 2.0)


def test_block_init_alone(rng):
    p = ParamSpec(block_shapes(4, 8)).views(np.zeros(ParamSpec(block_shapes(4, 8)).size))
    block_init_(p, rng)
    assert np.all(p["ln1"]["w"] == 1)


def test_encoder_bad_input(rng):
    p = ParamSpec(encoder_shapes(5, 3, 4, 1, 4)).views(np.zeros(ParamSpec(encoder_shapes(5, 3, 4, 1, 4)).size))
    with pytest.raises(ConfigError, match="learned positions"):
        encoder_forward(np.zeros((1, 4), int), p, 2)
    with pytest.raises(ConfigError, match=r"\[B,T\]"):
        encoder_forward(np.zeros(3, int), p, 2)


def test_backward_is_pure(rng):
    # backwards mutate neither dy nor the cache: a second call gives the same grads (the ODE reruns caches)
    spec = ParamSpec(encoder_shapes(7, 4, 6, 2, 8))
    _, p = _random(spec, rng)
    h, cache = encoder_forward(rng.integers(0, 7, (2, 4)), p, 3)
    dh = rng.standard_normal(h.shape)
    dh0 = dh.copy()
    g1 = spec.zeros(np.float64)
    g2 = spec.zeros(np.float64)
    accumulate(spec.views(g1), encoder_backward(dh, cache))
    accumulate(spec.views(g2), encoder_backward(dh, cache))
    np.testing.assert_array_equal(dh, dh0)
    np.testing.assert_array_equal(g1, g2)
