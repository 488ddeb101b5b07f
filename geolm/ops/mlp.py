"""Two-layer perceptron: linear -> activation -> linear.

N leading axes . I in . F hidden . O out

    h = x W1 + b1;  a = act(h);  y = a W2 + b2          x [..., I] -> y [..., O]
gelu adds b1 inside its own pass (activations.gelu_bias_forward): one pass over [..., F] each way, not three.
Params {"fc1": {"w": [I,F], "b": [F]}, "fc2": {"w": [F,O], "b": [O]}}; grads come back in the same nesting.
Init: Glorot-uniform weights, zero biases, fc2.w scaled by last_scale (0 -> an MLP that starts at exactly zero).
Reference: CS231n `layer_utils.affine_relu_forward/backward`.
"""
import numpy as np

from .activations import (gelu_backward, gelu_bias_backward, gelu_bias_forward, gelu_forward, relu_backward,
                          relu_forward, tanh_backward, tanh_forward)
from ..core.errors import ConfigError
from .linear import linear_backward, linear_forward
from ..core.params import glorot_

ACTIVATIONS = {"gelu": (gelu_forward, gelu_backward), "relu": (relu_forward, relu_backward),
               "tanh": (tanh_forward, tanh_backward)}


def mlp_shapes(din, dh, dout):
    return {"fc1": {"w": (din, dh), "b": (dh,)}, "fc2": {"w": (dh, dout), "b": (dout,)}}


def mlp_init_(p, rng, last_scale=1.0):
    """Glorot weights, zero biases, fc2.w *= last_scale (in place on the views)."""
    glorot_(p["fc1"]["w"], rng)
    glorot_(p["fc2"]["w"], rng)
    p["fc2"]["w"] *= last_scale
    p["fc1"]["b"][...] = 0.0
    p["fc2"]["b"][...] = 0.0


def _act(act):
    if act not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {act!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[act]


def mlp_forward(x, p, act="gelu"):
    """x [..., I] -> (y [..., O], cache)."""
    fwd, _ = _act(act)
    if act == "gelu":
        w1 = p["fc1"]["w"]
        h = np.matmul(x.reshape(-1, w1.shape[0]), w1)  # [N,I] @ [I,F]; b1 is added in the GELU pass
        a, ca = gelu_bias_forward(h, p["fc1"]["b"])  # a = gelu(h + b1)
        c1 = (x, w1)
    else:
        h, c1 = linear_forward(x, **p["fc1"])  # [..., I] -> [..., F]
        a, ca = fwd(h)  # [..., F]
    y, c2 = linear_forward(a.reshape(*x.shape[:-1], a.shape[-1]), **p["fc2"])  # [..., F] -> [..., O]
    return y, (c1, ca, c2, act)


def mlp_backward(dy, cache):
    """-> (dx [..., I], dp with p's nesting)."""
    c1, ca, c2, act = cache
    _, bwd = _act(act)
    da, dw2, db2 = linear_backward(dy, c2)  # y = a W2 + b2
    if act == "gelu":
        x, w1 = c1
        dh, db1 = gelu_bias_backward(da, ca)  # a = gelu(h + b1), h = x W1
        dh = dh.reshape(-1, w1.shape[1])  # [N,F]
        dx = np.matmul(dh, w1.T).reshape(x.shape)  # [N,F] @ [F,I] -> [..., I]
        dw1 = np.matmul(x.reshape(-1, w1.shape[0]).T, dh)  # [I,N] @ [N,F] -> [I,F]
    else:
        dh = bwd(da, ca)  # a = act(h)
        dx, dw1, db1 = linear_backward(dh, c1)  # h = x W1 + b1
    return dx, {"fc1": {"w": dw1, "b": db1}, "fc2": {"w": dw2, "b": db2}}
