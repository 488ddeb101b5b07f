"""A tiny Riemannian model and random stories for the semantic-map and trajectory tests."""
import numpy as np

from geolm.models import riemann


def tiny_model(rng, metric="lowrank", no_ode=False, scale=0.3):
    kw = {} if no_ode else dict(rank=3, hidden=8, field_hidden=16, ode_steps=2, metric=metric)
    cfg = riemann.RiemannConfig(vocab_size=40, n_vocab=40, dim=16, layers=1, heads=2, ff_mult=2, seq_len=16,
                                no_ode=no_ode, **kw)
    spec, theta = riemann.init_params(cfg, rng)
    theta += (scale * rng.normal(size=theta.shape)).astype(theta.dtype)  # move off the identity-flow init
    return theta, cfg, spec


def stories(rng, n=12):
    return [rng.integers(0, 37, size=rng.integers(3, 40)).astype(np.int32) for _ in range(n)]
