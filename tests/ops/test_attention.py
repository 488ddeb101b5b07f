import numpy as np
import pytest

from geolm.ops.attention import attention_backward, attention_forward, attention_init_, attention_shapes
from geolm.core.errors import ConfigError
from geolm.core.gradcheck import check_grads
from geolm.core.params import ParamSpec
from naive_nn import attention_naive

# (B, T, D, H): batch 1, seq 1, one head, one-wide heads (E = 1), several heads
SHAPES = [(1, 1, 4, 1), (1, 4, 3, 1), (2, 1, 4, 2), (2, 3, 4, 2), (1, 5, 6, 3), (2, 3, 3, 3), (3, 2, 8, 2)]


def _params(rng, D, dtype=np.float64, scale=0.5):
    spec = ParamSpec(attention_shapes(D))
    theta = (scale * rng.standard_normal(spec.size)).astype(dtype)
    return spec.views(theta)


def _naive(x, p, H, causal):
    return attention_naive(x, p["qkv"]["w"], p["qkv"]["b"], p["proj"]["w"], p["proj"]["b"], H, causal)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,T,D,H", SHAPES)
def test_attention_gradcheck(rng, strict_float, B, T, D, H, causal):
    p = _params(rng, D)
    x = rng.standard_normal((B, T, D))
    check_grads(attention_forward, attention_backward, {"x": x, "p": p, "n_heads": H, "causal": causal}, rng=rng)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,T,D,H", SHAPES + [(2, 7, 12, 4)])
def test_attention_matches_naive(rng, B, T, D, H, causal):
    p = _params(rng, D, scale=1.0)
    x = rng.standard_normal((B, T, D))
    y, _ = attention_forward(x, p, H, causal)
    np.testing.assert_allclose(y, _naive(x, p, H, causal), rtol=1e-10, atol=1e-12)


def test_causal_output_ignores_future(rng):
    B, T, D, H = 2, 6, 8, 2
    p = _params(rng, D, scale=1.0)
    x = rng.standard_normal((B, T, D))
    y, _ = attention_forward(x, p, H)
    for t in range(T - 1):
        x2 = x.copy()
        x2[:, t + 1:] = 100.0 * rng.standard_normal((B, T - t - 1, D))
        y2, _ = attention_forward(x2, p, H)
        np.testing.assert_array_equal(y2[:, :t + 1], y[:, :t + 1])
        assert not np.allclose(y2[:, t + 1:], y[:, t + 1:])
    # and without the mask the past does see the future
    yn, _ = attention_forward(x, p, H, causal=False)
    x2 = x.copy()
    x2[:, -1] += 1.0
    assert not np.allclose(attention_forward(x2, p, H, causal=False)[0][:, 0], yn[:, 0])


def test_causal_grad_of_future_is_zero(rng):
    B, T, D, H = 1, 5, 4, 2
    p = _params(rng, D)
    y, cache = attention_forward(rng.standard_normal((B, T, D)), p, H)
    dy = np.zeros_like(y)
    dy[:, 2] = rng.standard_normal(D)  # loss reads position 2 only
    dx, _ = attention_backward(dy, cache)
    assert np.all(dx[:, 3:] == 0) and np.all(dx[:, :3] != 0)


def test_one_token_is_value_projection(rng):
    # T = 1: softmax over a single key is 1, so y = (x Wv + bv) Wp + bp
    D = 6
    p = _params(rng, D)
    x = rng.standard_normal((3, 1, D))
    y, _ = attention_forward(x, p, 3)
    v = x @ p["qkv"]["w"][:, 2 * D:] + p["qkv"]["b"][2 * D:]
    np.testing.assert_allclose(y, v @ p["proj"]["w"] + p["proj"]["b"], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_dtype(rng, dtype):
    p = _params(rng, 8, dtype)
    x = rng.standard_normal((2, 5, 8)).astype(dtype)
    y, cache = attention_forward(x, p, 2)
    assert y.dtype == dtype
    dx, dp = attention_backward(np.ones_like(y), cache)
    assert dx.dtype == dtype and dx.shape == x.shape
    for k in ("qkv", "proj"):
        for leaf in ("w", "b"):
            assert dp[k][leaf].dtype == dtype and dp[k][leaf].shape == p[k][leaf].shape
    y64, _ = attention_forward(x.astype(np.float64), {k: {n: a.astype(np.float64) for n, a in v.items()}
                                                      for k, v in p.items()}, 2)
    np.testing.assert_allclose(y, y64, rtol=1e-4, atol=1e-5)


def test_attention_float32_benchmark_shape_runs(rng):
    # the training-benchmark shape (B=32, T=192, D=384, H=6) at reduced batch: finite, float32, right shapes
    D, H = 384, 6
    spec = ParamSpec(attention_shapes(D))
    theta = spec.zeros(np.float32)
    p = spec.views(theta)
    attention_init_(p, rng)
    x = rng.standard_normal((2, 192, D)).astype(np.float32)
    y, cache = attention_forward(x, p, H)
    dx, dp = attention_backward(y, cache)
    assert y.dtype == dx.dtype == np.float32 and np.all(np.isfinite(dx))


def test_attention_bad_heads(rng):
    with pytest.raises(ConfigError, match="not divisible"):
        attention_forward(np.zeros((1, 2, 6)), _params(rng, 6), 4)
    with pytest.raises(ConfigError, match=r"\[B,T,D\]"):
        attention_forward(np.zeros((2, 6)), _params(rng, 6), 2)


def test_attention_init(rng):
    spec = ParamSpec(attention_shapes(8))
    p = spec.views(spec.zeros(np.float64) + 1.0)
    attention_init_(p, rng)
    assert np.all(p["qkv"]["b"] == 0) and np.all(p["proj"]["b"] == 0)
    assert 0 < np.abs(p["qkv"]["w"]).max() <= np.sqrt(6.0 / 32)
