"""Riemannian ODE LM: config validation, the field z -> g^-1 f (gradchecks, dense = lowrank), whole-model grads."""
import dataclasses
import functools

import numpy as np
import pytest

from geolm import riemann
from geolm.errors import ConfigError
from geolm.gradcheck import check_grads, check_grads_directional
from geolm.mlp import mlp_init_
from geolm.params import ParamSpec


def _field_params(cfg, rng, scale=0.5):
    spec = ParamSpec(riemann.field_shapes(cfg))
    theta = spec.zeros(np.float64)
    p = spec.views(theta)
    mlp_init_(p["f"], rng)
    for leaf in ("fc1", "fc2"):
        p["f"][leaf]["b"][...] = rng.normal(0, 0.1, p["f"][leaf]["b"].shape)
    if "U" in p:
        mlp_init_(p["U"], rng, last_scale=scale)
        p["U"]["fc2"]["b"][...] = rng.normal(0, 0.1, p["U"]["fc2"]["b"].shape)
    return p


def _cfg(**kw):
    base = dict(vocab_size=11, dim=4, layers=1, heads=2, ff_mult=2, seq_len=5, rank=2, hidden=3,
                field_hidden=5, ode_steps=2, eps=0.5, alpha=1.0)
    base.update(kw)
    return riemann.RiemannConfig(**base)


# ------------------------------------------------------------------------------------------ config

def test_config_defaults_valid():
    cfg = riemann.RiemannConfig()
    assert (cfg.dim, cfg.rank, cfg.eps, cfg.metric) == (128, 16, 0.1, "lowrank")
    assert cfg.V == cfg.vocab_size
    assert dataclasses.replace(cfg, n_vocab=77).V == 77


@pytest.mark.parametrize("kw, flag", [
    (dict(rank=129), "--rank"), (dict(rank=0), "--rank"), (dict(eps=0.0), "--eps"), (dict(eps=-1.0), "--eps"),
    (dict(alpha=-0.1), "--alpha"), (dict(heads=3), "--heads"), (dict(dim=0), "--dim"),
    (dict(ode_steps=0), "--ode-steps"), (dict(no_ode=True, metric="identity"), "--no-ode"),
    (dict(no_ode=True, rank=8), "--rank"), (dict(metric="riemann"), "--metric"),
    (dict(lambda_field=-1.0), "--lambda-field"),
])
def test_config_errors_name_the_flag(kw, flag):
    with pytest.raises(ConfigError) as e:
        riemann.RiemannConfig(**kw)
    msg = str(e.value)
    assert flag in msg and "\n" not in msg


def test_rank_equal_dim_is_valid():
    assert riemann.RiemannConfig(dim=8, heads=2, rank=8).rank == 8


# ------------------------------------------------------------------------------------------ the field

@pytest.mark.parametrize("metric", ["lowrank", "dense", "identity"])
@pytest.mark.parametrize("N, D, R", [(1, 4, 1), (3, 4, 2), (2, 4, 4), (5, 3, 1)])
def test_field_gradcheck(metric, N, D, R, rng, strict_float):
    cfg = _cfg(dim=D, heads=1, rank=R, metric=metric)
    p = _field_params(cfg, rng)
    z = rng.standard_normal((N, D))

    def fwd(z, p):
        v, aux, cache = riemann.field_forward(z, p, cfg)
        return (v, aux["f2"]) + ((aux["logdet"],) if "logdet" in aux else ()), cache

    def bwd(dout, cache):
        daux = {"f2": dout[1]}
        if len(dout) == 3:
            daux["logdet"] = dout[2]
        return riemann.field_backward(dout[0], daux, cache)

    check_grads(fwd, bwd, {"z": z, "p": p}, rng=rng)


def test_field_backward_without_aux_cotangents(rng, strict_float):
    cfg = _cfg()
    p = _field_params(cfg, rng)
    z = rng.standard_normal((3, cfg.dim))

    def fwd(z, p):
        v, _, cache = riemann.field_forward(z, p, cfg)
        return v, cache

    check_grads(fwd, lambda dv, c: riemann.field_backward(dv, None, c), {"z": z, "p": p}, rng=rng)


@pytest.mark.parametrize("R", [1, 3, 6])
def test_dense_matches_lowrank(R, rng):
    cfg_l = _cfg(dim=6, heads=2, rank=R, eps=0.1)
    cfg_d = dataclasses.replace(cfg_l, metric="dense")
    p = _field_params(cfg_l, rng, scale=2.0)
    z = rng.standard_normal((7, 6))
    vl, al, cl = riemann.field_forward(z, p, cfg_l)
    vd, ad, cd = riemann.field_forward(z, p, cfg_d)
    np.testing.assert_allclose(vl, vd, rtol=1e-9, atol=1e-9 * np.abs(vd).max())
    np.testing.assert_allclose(al["logdet"], ad["logdet"], rtol=1e-10, atol=1e-10)
    dv = rng.standard_normal(vl.shape)
    daux = {"f2": rng.standard_normal(7), "logdet": rng.standard_normal(7)}
    gl = riemann.field_backward(dv, daux, cl)
    gd = riemann.field_backward(dv, daux, cd)
    np.testing.assert_allclose(gl[0], gd[0], rtol=1e-8, atol=1e-9)
    for name in ("f", "U"):
        for leaf in ("fc1", "fc2"):
            for k in ("w", "b"):
                a, b = gl[1][name][leaf][k], gd[1][name][leaf][k]
                np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-8 * max(1.0, np.abs(b).max()))


def test_dense_matches_lowrank_float32(rng):
    cfg = _cfg(dim=16, heads=2, rank=4, eps=0.1)
    p64 = _field_params(cfg, rng, scale=1.0)
    z = rng.standard_normal((9, 16)).astype(np.float32)
    p32 = {k: {l: {m: a.astype(np.float32) for m, a in d.items()} for l, d in v.items()} for k, v in p64.items()}
    vl, al, _ = riemann.field_forward(z, p32, cfg)
    vd, ad, _ = riemann.field_forward(z, p32, dataclasses.replace(cfg, metric="dense"))
    assert vl.dtype == np.float32 and al["logdet"].dtype == np.float32 and al["f2"].dtype == np.float32
    np.testing.assert_allclose(vl, vd, rtol=1e-4, atol=1e-5 * np.abs(vd).max())
    np.testing.assert_allclose(al["logdet"], ad["logdet"], rtol=1e-5, atol=1e-4)


def test_identity_field_is_f(rng):
    cfg = _cfg(metric="identity")
    p = _field_params(cfg, rng)
    assert "U" not in p
    z = rng.standard_normal((4, cfg.dim))
    v, aux, _ = riemann.field_forward(z, p, cfg)
    assert set(aux) == {"f2"}
    ev = riemann.field_eval(z, p, cfg)
    np.testing.assert_array_equal(v, ev["f"])
    np.testing.assert_allclose(aux["f2"], np.sum(v * v, axis=1))


def test_field_eval_logdet_parts(rng):
    cfg = _cfg(dim=6, heads=2, rank=2, eps=0.1)
    p = _field_params(cfg, rng)
    z = rng.standard_normal((5, 6))
    ev = riemann.field_eval(z, p, cfg)
    g = 0.1 * np.eye(6) + np.einsum("nrd,nre->nde", ev["U"], ev["U"])
    np.testing.assert_allclose(ev["logdet"], np.linalg.slogdet(g)[1], rtol=1e-10)
    np.testing.assert_allclose(ev["logdet_const"], 4 * np.log(0.1))
    np.testing.assert_allclose(ev["logdet_K"] + ev["logdet_const"], ev["logdet"])
    np.testing.assert_allclose(ev["v"], np.linalg.solve(g, ev["f"][..., None])[..., 0], rtol=1e-9)
