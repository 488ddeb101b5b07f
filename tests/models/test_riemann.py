"""Riemannian ODE LM: config validation, the field z -> g^-1 f (gradchecks, dense = lowrank), whole-model grads."""
import dataclasses

import numpy as np
import pytest

from geolm.models import riemann, riemann_field
from geolm.core.errors import ConfigError
from geolm.core.gradcheck import check_grads, check_grads_directional
from geolm.ops.mlp import mlp_init_
from geolm.core.params import ParamSpec


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
    (dict(no_ode=True, metric="dense"), "--metric"), (dict(metric="riemann"), "--metric"),
    (dict(lambda_field=-1.0), "--lambda-field"),
])
def test_config_errors_name_the_flag(kw, flag):
    with pytest.raises(ConfigError) as e:
        riemann.RiemannConfig(**kw)
    msg = str(e.value)
    assert flag in msg and "\n" not in msg


def test_rank_equal_dim_is_valid():
    assert riemann.RiemannConfig(dim=8, heads=2, rank=8).rank == 8


def _check_field(cfg, p, z, rng):
    """Gradcheck of the field (v, f2 and, when present, logdet outputs) w.r.t. z and every field parameter."""
    def fwd(z, p):
        v, aux, cache = riemann.field_forward(z, p, cfg)
        return (v, aux["f2"]) + ((aux["logdet"],) if "logdet" in aux else ()), cache

    def bwd(dout, cache):
        daux = {"f2": dout[1]}
        if len(dout) == 3:
            daux["logdet"] = dout[2]
        return riemann.field_backward(dout[0], daux, cache)

    check_grads(fwd, bwd, {"z": z, "p": p}, rng=rng)


# ------------------------------------------------------------------------------------------ the field

@pytest.mark.parametrize("metric", ["lowrank", "dense", "identity"])
@pytest.mark.parametrize("N, D, R", [(1, 4, 1), (3, 4, 2), (2, 4, 4), (5, 3, 1)])
def test_field_gradcheck(metric, N, D, R, rng, strict_float):
    cfg = _cfg(dim=D, heads=1, rank=R, metric=metric)
    p = _field_params(cfg, rng)
    z = rng.standard_normal((N, D))

    _check_field(cfg, p, z, rng)


def test_field_backward_without_aux_cotangents(rng, strict_float):
    cfg = _cfg()
    p = _field_params(cfg, rng)
    z = rng.standard_normal((3, cfg.dim))

    def fwd(z, p):
        v, _, cache = riemann.field_forward(z, p, cfg)
        return v, cache

    check_grads(fwd, lambda dv, c: riemann.field_backward(dv, None, c), {"z": z, "p": p}, rng=rng)


@pytest.mark.parametrize("metric", ["lowrank", "dense", "identity"])
@pytest.mark.parametrize("block", [1, 2, 3])
def test_field_blocks_gradcheck(metric, block, rng, strict_float, monkeypatch):
    """Several token blocks (the last one short): gradients still exact, weight grads summed over blocks."""
    monkeypatch.setattr(riemann_field, "FIELD_BLOCK", block)
    cfg = _cfg(dim=4, heads=1, rank=2, metric=metric)
    p = _field_params(cfg, rng)
    z = rng.standard_normal((5, 4))

    _check_field(cfg, p, z, rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_field_blocks_match_one_block(dtype, rng, monkeypatch):
    cfg = _cfg(dim=8, heads=2, rank=3, eps=0.2)
    p = _field_params(cfg, rng, scale=1.0)
    p = {k: {l: {m: a.astype(dtype) for m, a in d.items()} for l, d in v.items()} for k, v in p.items()}
    z = rng.standard_normal((11, 8)).astype(dtype)
    dv = rng.standard_normal((11, 8)).astype(dtype)
    daux = {"f2": rng.standard_normal(11).astype(dtype), "logdet": rng.standard_normal(11).astype(dtype)}
    out = []
    for block in (1000, 4):
        monkeypatch.setattr(riemann_field, "FIELD_BLOCK", block)
        v, aux, cache = riemann.field_forward(z, p, cfg)
        v2, aux2 = riemann.field_forward_nocache(z, p, cfg)
        np.testing.assert_array_equal(v, v2)
        dz, dp = riemann.field_backward(dv, daux, cache)
        assert v.dtype == dtype and dz.dtype == dtype and dp["U"]["fc2"]["w"].dtype == dtype
        out.append((v, aux["logdet"], aux["f2"], dz, dp))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(out[0][:4], out[1][:4]):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(a).max())
    for name in ("f", "U"):
        for leaf in ("fc1", "fc2"):
            for k in ("w", "b"):
                a, b = out[0][4][name][leaf][k], out[1][4][name][leaf][k]
                np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(a).max())


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


# ------------------------------------------------------------------------------------------ the whole model

def _model(cfg, rng, noise=0.3):
    spec, theta = riemann.init_params(cfg, rng, dtype=np.float64)
    theta += noise * rng.standard_normal(theta.shape)  # off the identity-flow init so every path is exercised
    B, T = 2, cfg.seq_len
    ids = rng.integers(0, cfg.V + 1, size=(B, T))  # V = PAD, an input-only id
    targets = rng.integers(0, cfg.V, size=(B, T))
    targets[0, 1] = -1  # an ignored target
    return spec, theta, (ids, targets)


CONTROLS = [dict(), dict(metric="identity"), dict(metric="dense"), dict(no_ode=True), dict(metric_penalty="batch_mean"),
            dict(tie_head=False), dict(rank=4, ode_steps=1), dict(lambda_metric=0.0, lambda_field=0.0)]


def _control_cfg(kw):
    base = dict(vocab_size=11, dim=4, layers=1, heads=2, ff_mult=2, seq_len=3, rank=2, hidden=3, field_hidden=5,
                ode_steps=2, eps=0.5, alpha=1.0, lambda_field=0.05, lambda_metric=0.01)
    base.update(kw)
    return riemann.RiemannConfig(**base)


@pytest.mark.parametrize("kw", CONTROLS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items())[:40] or "lowrank")
def test_whole_model_gradcheck(kw, rng, strict_float):
    cfg = _control_cfg(kw)
    spec, theta, batch = _model(cfg, rng)

    def loss_fn(th):
        return riemann.loss_and_grads(th, np.zeros_like(th), batch, cfg, spec)[0]

    def grad_fn(th):
        g = np.zeros_like(th)
        riemann.loss_and_grads(th, g, batch, cfg, spec)
        return g

    check_grads_directional(loss_fn, grad_fn, theta, rng=rng, n_dirs=3)
    g = grad_fn(theta)
    # a few single coordinates, incl. the largest-gradient ones and one per parameter array
    picks = set(np.argsort(-np.abs(g))[:4].tolist())
    picks |= {off for _, _, off in spec.entries}
    h = 1e-6
    for i in sorted(picks):
        e = np.zeros_like(theta)
        e[i] = h
        num = (loss_fn(theta + e) - loss_fn(theta - e)) / (2 * h)
        assert abs(num - g[i]) <= 1e-6 * max(abs(num), abs(g[i]), 1e-3), (spec.entries, i, num, g[i])


def test_stats_and_penalties(rng):
    cfg = _control_cfg(dict(lambda_field=0.1, lambda_metric=0.01))
    spec, theta, (ids, tg) = _model(cfg, rng)
    p = spec.views(theta)
    loss, stats, _ = riemann.loss_forward(p, ids, tg, cfg)
    logits, cache = riemann.forward(p, ids, cfg)
    aux = riemann.outputs(cache)["aux"]
    assert aux["f2"].shape == (cfg.ode_steps, 4, ids.size) and aux["logdet"].shape == aux["f2"].shape
    np.testing.assert_allclose(stats["pen_field"], 0.1 * aux["f2"].sum() / ids.size)
    np.testing.assert_allclose(stats["pen_metric"], 0.01 * np.mean(aux["logdet"] ** 2))
    assert stats["n"] == ids.size - 1
    np.testing.assert_allclose(loss, stats["ce"] + stats["pen_field"] + stats["pen_metric"])
    cfg_b = dataclasses.replace(cfg, metric_penalty="batch_mean")
    _, stats_b, _ = riemann.loss_forward(p, ids, tg, cfg_b)
    np.testing.assert_allclose(stats_b["pen_metric"], 0.01 * np.mean(aux["logdet"]) ** 2)


def test_dense_model_matches_lowrank_model(rng):
    cfg = _control_cfg(dict(dim=8, heads=2, rank=3, eps=0.1))
    spec, theta, batch = _model(cfg, rng, noise=0.2)
    cfg_d = dataclasses.replace(cfg, metric="dense")
    gl, gd = np.zeros_like(theta), np.zeros_like(theta)
    ll, _ = riemann.loss_and_grads(theta, gl, batch, cfg, spec)
    ld, _ = riemann.loss_and_grads(theta, gd, batch, cfg_d, spec)
    assert abs(ll - ld) <= 1e-9 * abs(ll)
    np.testing.assert_allclose(gl, gd, rtol=1e-6, atol=1e-9 * np.abs(gd).max())


def test_zero_init_field_is_identity_flow(rng):
    cfg = _control_cfg(dict(dim=8, heads=2, rank=3, seq_len=4))
    for dtype in (np.float32, np.float64):
        spec, theta = riemann.init_params(cfg, np.random.default_rng(0), dtype=dtype)
        p = spec.views(theta)
        assert not p["field"]["f"]["fc2"]["w"].any() and not p["field"]["f"]["fc2"]["b"].any()
        U_last = p["field"]["U"]["fc2"]["w"]
        assert 0 < np.abs(U_last).max() < 0.02  # x0.01 Glorot: g ~ eps I
        ids = rng.integers(0, cfg.V, size=(3, 4))
        logits, cache = riemann.forward(p, ids, cfg)
        out = riemann.outputs(cache)
        assert logits.dtype == dtype and out["zT"].dtype == dtype
        np.testing.assert_array_equal(out["zT"], out["z0"])
        for k in range(out["traj"].shape[0]):
            np.testing.assert_array_equal(out["traj"][k], out["z0"])
        np.testing.assert_array_equal(out["aux"]["f2"], 0.0)


def test_no_ode_has_no_field_params_and_identity_no_U(rng):
    cfg = _control_cfg(dict(no_ode=True))
    spec, _ = riemann.init_params(cfg, rng)
    assert not any(n.startswith("field") for n, _, _ in spec.entries)
    spec_i, _ = riemann.init_params(_control_cfg(dict(metric="identity")), rng)
    names = [n for n, _, _ in spec_i.entries]
    assert any(n.startswith("field.f.") for n in names) and not any(n.startswith("field.U") for n in names)
    assert "head.w" not in names  # tied by default


def test_logits_last_matches_forward(rng):
    cfg = _control_cfg(dict(dim=8, heads=2, rank=3, seq_len=5))
    spec, theta, (ids, _) = _model(cfg, rng)
    p = spec.views(theta)
    logits, _ = riemann.forward(p, ids, cfg)
    last = riemann.logits_last(p, ids, cfg)
    np.testing.assert_allclose(last, logits.reshape(2, 5, -1)[:, -1], rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError):
        riemann.logits_last(p, np.zeros((1, 6), np.int64), cfg)


@pytest.mark.parametrize("kw", [dict(), dict(metric="identity"), dict(metric="dense"), dict(no_ode=True)])
def test_float32_stays_float32(kw, rng):
    cfg = _control_cfg(dict(dim=8, heads=2, rank=3, **kw))
    spec, theta = riemann.init_params(cfg, rng, dtype=np.float32)
    theta += (0.1 * rng.standard_normal(theta.shape)).astype(np.float32)
    ids = rng.integers(0, cfg.V, (2, 3))
    p = spec.views(theta)
    loss, stats, cache = riemann.loss_forward(p, ids, ids, cfg)
    logits, fcache = riemann.forward(p, ids, cfg)
    out = riemann.outputs(fcache)
    assert logits.dtype == np.float32 and out["zT"].dtype == np.float32
    assert all(a.dtype == np.float32 for a in out["aux"].values())
    dp = riemann.loss_backward(cache)

    def leaves(d):
        for v in d.values():
            yield from (leaves(v) if isinstance(v, dict) else [v])
    assert all(a.dtype == np.float32 for a in leaves(dp))
    assert np.isfinite(loss)


# ------------------------------------------------------------------------------------------ penalties

def test_zero_metric_weight_skips_the_logdet_backward(rng, strict_float, monkeypatch):
    """lambda_metric = 0: no log-det cotangent reaches the metric backward (no K^-1), gradients still exact."""
    cfg = _control_cfg(dict(lambda_metric=0.0))
    spec, theta, batch = _model(cfg, rng)
    _, cache = riemann.forward(spec.views(theta), batch[0], cfg)
    pen_f, pen_m, daux = riemann.penalties(riemann.outputs(cache)["aux"], cfg)
    assert pen_m == 0.0 and "logdet" not in daux and "f2" in daux
    seen = []
    solve_backward = riemann_field.metric_solve_backward

    def spy(dv, dlogdet, cache, **kw):
        seen.append(dlogdet)
        return solve_backward(dv, dlogdet, cache, **kw)

    monkeypatch.setattr(riemann_field, "metric_solve_backward", spy)
    g = np.zeros_like(theta)
    loss, stats = riemann.loss_and_grads(theta, g, batch, cfg, spec)
    assert len(seen) == 4 * cfg.ode_steps and all(d is None for d in seen)
    assert stats["pen_metric"] == 0.0 and np.isfinite(stats["train_logdet"])

    def loss_fn(th):
        return riemann.loss_and_grads(th, np.zeros_like(th), batch, cfg, spec)[0]

    def grad_fn(th):
        riemann.loss_and_grads(th, g, batch, cfg, spec)
        return g.copy()

    check_grads_directional(loss_fn, grad_fn, theta, rng=rng, n_dirs=3)


@pytest.mark.parametrize("penalty", ["point", "batch_mean"])
def test_penalties_of_an_empty_batch_are_zero(penalty, strict_float):
    cfg = _control_cfg(dict(metric_penalty=penalty))
    aux = {"f2": np.zeros((2, 4, 0)), "logdet": np.zeros((2, 4, 0))}
    pen_f, pen_m, daux = riemann.penalties(aux, cfg)
    assert (pen_f, pen_m, daux) == (0.0, 0.0, {})


# ------------------------------------------------------------------------------------------ the workspace

@pytest.mark.parametrize("kw", [dict(), dict(metric="identity"), dict(metric="dense"), dict(rank=7, dim=8)],
                         ids=["lowrank", "identity", "dense", "rank>dim/2"])
@pytest.mark.parametrize("block", [3, 512])
def test_workspace_gives_the_same_bits(kw, block, rng, monkeypatch):
    """float32 loss and gradients with a workspace (reused over steps) equal fresh allocations bit for bit."""
    monkeypatch.setattr(riemann_field, "FIELD_BLOCK", block)
    cfg = _control_cfg(dict(dict(dim=8, heads=2, rank=3, seq_len=5, eps=0.1), **kw))
    spec, theta = riemann.init_params(cfg, rng)
    theta += (0.1 * rng.standard_normal(theta.shape)).astype(np.float32)
    ws = riemann.FieldWorkspace()
    for step in range(3):
        ids = rng.integers(0, cfg.V, (2, 5))
        batch = (ids, np.roll(ids, -1, axis=1))
        g0, g1 = np.zeros_like(theta), np.zeros_like(theta)
        l0, s0 = riemann.loss_and_grads(theta, g0, batch, cfg, spec)
        l1, s1 = riemann.loss_and_grads(theta, g1, batch, cfg, spec, workspace=ws)
        assert l0 == l1 and s0 == s1
        np.testing.assert_array_equal(g0, g1)
        assert riemann.eval_nll(theta, batch, cfg, spec) == riemann.eval_nll(theta, batch, cfg, spec, workspace=ws)
        if step == 0:
            held = ws.nbytes
        assert ws.nbytes == held  # steady state: nothing new is allocated
        theta -= 0.01 * g0


def test_workspace_gradcheck(rng, strict_float):
    cfg = _control_cfg(dict())
    spec, theta, batch = _model(cfg, rng)
    ws = riemann.FieldWorkspace()
    g = np.zeros_like(theta)

    def grad_fn(th):
        riemann.loss_and_grads(th, g, batch, cfg, spec, workspace=ws)
        return g.copy()

    check_grads_directional(lambda th: riemann.loss_and_grads(th, np.zeros_like(th), batch, cfg, spec,
                                                              workspace=ws)[0], grad_fn, theta, rng=rng, n_dirs=3)
