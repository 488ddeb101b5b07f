import numpy as np
import pytest

from geolm.core.errors import ConfigError
from geolm.core.gradcheck import check_grads
from geolm.ops.mlp import mlp_backward, mlp_forward, mlp_init_, mlp_shapes
from geolm.core.params import ParamSpec


def _params(rng, din, dh, dout, dtype=np.float64):
    spec = ParamSpec(mlp_shapes(din, dh, dout))
    theta = spec.zeros(dtype)
    p = spec.views(theta)
    mlp_init_(p, rng)
    theta += 0.1 * rng.standard_normal(theta.shape)  # nonzero biases too
    return p


@pytest.mark.parametrize("act", ["gelu", "relu", "tanh"])
@pytest.mark.parametrize("lead,din,dh,dout", [((1,), 1, 1, 1), ((3,), 4, 5, 2), ((2, 3), 3, 6, 3),
                                             ((1, 1), 2, 3, 4)])
def test_mlp_gradcheck(rng, strict_float, act, lead, din, dh, dout):
    p = _params(rng, din, dh, dout)
    x = rng.standard_normal(lead + (din,))
    check_grads(mlp_forward, mlp_backward, {"x": x, "p": p, "act": act}, rng=rng)


def test_mlp_matches_composition(rng):
    p = _params(rng, 3, 4, 2)
    x = rng.standard_normal((5, 3))
    y, _ = mlp_forward(x, p, "relu")
    ref = np.maximum(x @ p["fc1"]["w"] + p["fc1"]["b"], 0) @ p["fc2"]["w"] + p["fc2"]["b"]
    np.testing.assert_allclose(y, ref, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mlp_dtype_and_grad_nesting(rng, dtype):
    p = _params(rng, 3, 4, 2, dtype)
    y, cache = mlp_forward(rng.standard_normal((2, 3)).astype(dtype), p)
    assert y.dtype == dtype
    dx, dp = mlp_backward(np.ones_like(y), cache)
    assert dx.dtype == dtype
    assert {k: set(v) for k, v in dp.items()} == {"fc1": {"w", "b"}, "fc2": {"w", "b"}}
    for k in dp:
        for leaf in dp[k]:
            assert dp[k][leaf].shape == p[k][leaf].shape and dp[k][leaf].dtype == dtype


def test_mlp_init(rng):
    spec = ParamSpec(mlp_shapes(6, 8, 4))
    theta = spec.zeros(np.float32) + 1.0
    p = spec.views(theta)
    mlp_init_(p, rng, last_scale=0.0)
    assert np.all(p["fc2"]["w"] == 0) and np.all(p["fc1"]["b"] == 0) and np.all(p["fc2"]["b"] == 0)
    a = np.sqrt(6.0 / 14)
    assert 0 < np.abs(p["fc1"]["w"]).max() <= a
    y, _ = mlp_forward(rng.standard_normal((3, 6)).astype(np.float32), p)
    assert np.all(y == 0)
    mlp_init_(p, rng, last_scale=0.01)
    assert 0 < np.abs(p["fc2"]["w"]).max() <= 0.01 * np.sqrt(6.0 / 12)


def test_mlp_unknown_activation(rng):
    with pytest.raises(ConfigError, match="choose one of"):
        mlp_forward(np.zeros((1, 6)), _params(rng, 6, 8, 4), act="swish")
