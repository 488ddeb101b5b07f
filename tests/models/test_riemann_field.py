"""The Riemannian field's FieldWorkspace: slots reused, a stale cache raises one line, and a training step's
workspace holds one field evaluation's buffers (the RK4 adjoint keeps one stage's cache at a time)."""
import numpy as np
import pytest

from geolm.core.errors import GeolmError
from geolm.models import riemann, riemann_field


def _cfg(**kw):
    base = dict(vocab_size=11, dim=8, layers=1, heads=2, ff_mult=2, seq_len=5, rank=3, hidden=3, field_hidden=5,
                ode_steps=2, eps=0.1, alpha=1.0, lambda_field=0.05, lambda_metric=0.01)
    base.update(kw)
    return riemann.RiemannConfig(**base)


def _params(cfg, rng, dtype=np.float64):
    spec, theta = riemann.init_params(cfg, rng, dtype=dtype)
    theta += (0.3 * rng.standard_normal(theta.shape)).astype(dtype)  # off the identity-flow init
    return spec, theta


def test_workspace_slots_are_reused_and_checked(rng):
    cfg = _cfg()
    spec, theta = _params(cfg, rng)
    p = spec.views(theta)["field"]
    z = rng.standard_normal((5, cfg.dim))
    ws = riemann.FieldWorkspace()
    a = ws.take(("x",), (3, 4), np.float64)
    b = ws.take(("x",), (2, 5), np.float64)  # same slot: the same memory, any shape that fits
    assert np.shares_memory(a, b) and b.flags.c_contiguous
    assert not np.shares_memory(b, ws.take(("y",), (2, 5), np.float64))
    _, _, c0 = riemann.field_forward(z, p, cfg, workspace=ws)
    riemann.field_backward(z, None, c0)
    _, _, c1 = riemann.field_forward(2.0 * z, p, cfg, workspace=ws)  # the next evaluation: c0 is stale
    with pytest.raises(GeolmError, match="outlived its workspace slot") as e:
        riemann.field_backward(z, None, c0)
    assert "\n" not in str(e.value)
    riemann.field_forward_nocache(z, p, cfg, workspace=ws)  # a cache-free evaluation reuses the slots too
    with pytest.raises(GeolmError, match="outlived its workspace slot"):
        riemann.field_backward(z, None, c1)
    _, _, c2 = riemann.field_forward(z, p, cfg, workspace=ws)
    riemann.field_backward(z, None, c2)


@pytest.mark.parametrize("block", [3, 512])
@pytest.mark.parametrize("steps", [1, 3])
def test_training_step_workspace_is_one_evaluation(block, steps, rng, monkeypatch):
    """After a whole training step (S steps: 4 S evaluations forward, 4 S recomputed in the adjoint) the workspace
    holds exactly what one field evaluation and its VJP take: the adjoint never holds two stage caches at once."""
    monkeypatch.setattr(riemann_field, "FIELD_BLOCK", block)
    cfg = _cfg(ode_steps=steps)
    spec, theta = _params(cfg, rng, np.float32)
    ids = rng.integers(0, cfg.V, (2, 5))
    ws_step = riemann.FieldWorkspace()
    riemann.loss_and_grads(theta, np.zeros_like(theta), (ids, np.roll(ids, -1, axis=1)), cfg, spec,
                           workspace=ws_step)
    ws_one = riemann.FieldWorkspace()
    z = rng.standard_normal((ids.size, cfg.dim)).astype(np.float32)  # the step's N tokens
    v, aux, cache = riemann.field_forward(z, spec.views(theta)["field"], cfg, workspace=ws_one)
    riemann.field_backward(v, {name: np.ones_like(a) for name, a in aux.items()}, cache)
    assert ws_step.nbytes == ws_one.nbytes > 0
