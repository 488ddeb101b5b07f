"""Toy two-community classifier (spec 2.11, EXP train_geometric.rs @139d07c; published G1: 100 % after 200 epochs)."""
import numpy as np

from geolm.ops.losses import xent_backward, xent_forward
from geolm.ops.mlp import mlp_backward, mlp_forward, mlp_init_, mlp_shapes
from geolm.training.optim import adam_init, adam_step
from geolm.core.params import ParamSpec


def toy_positions():
    """8 nodes: 4 around (0,0,0) (community 0) and 4 around (2,0,0) (community 1)."""
    off = np.array([[0.1, 0.1, 0.0], [-0.1, 0.1, 0.1], [0.1, -0.1, -0.1], [-0.1, -0.1, 0.0]])
    pos = np.concatenate([off + [0.0, 0.0, 0.0], off + [2.0, 0.0, 0.0]])
    return pos, np.repeat([0, 1], 4)


def zscore(x):
    return (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)


def train_toy(seed=42, epochs=200, lr=0.01):
    pos, labels = toy_positions()
    x = zscore(pos).astype(np.float32)
    spec = ParamSpec(mlp_shapes(3, 32, 2))
    theta = spec.zeros(np.float32)
    mlp_init_(spec.views(theta), np.random.default_rng(seed))
    grad = np.zeros_like(theta)
    st = adam_init(theta)
    p, g = spec.views(theta), spec.views(grad)
    losses = []
    for _ in range(epochs):  # full batch, no clipping
        logits, cache = mlp_forward(x, p, act="relu")
        loss, xc = xent_forward(logits, labels)
        _, dp = mlp_backward(xent_backward(1.0, xc), cache)
        for k in dp:
            for kk in dp[k]:
                g[k][kk][...] = dp[k][kk]
        adam_step(theta, grad, st, lr)
        losses.append(loss)
    acc = float((mlp_forward(x, p, act="relu")[0].argmax(1) == labels).mean())
    return acc, losses


def test_two_communities_reach_full_accuracy():
    acc, losses = train_toy()
    assert acc == 1.0
    assert losses[-1] < 0.1 * losses[0]


def test_toy_without_training_does_not_converge():
    _, losses = train_toy(epochs=2, lr=1e-6)  # the loss-drop check above can fail
    assert losses[-1] > 0.5 * losses[0]
