"""Riemannian neural-ODE language model: Transformer encoder -> dz/dt = g(z)^-1 f(z) -> LayerNorm -> head.

B batch . T time . D model (= d) . H heads . V vocab . R metric rank (= r) . S ODE steps . N = B*T tokens

API (the model contract of geolm.models, plus the pieces other modules call)
    cfg = RiemannConfig(dim=..., rank=..., n_vocab=tok.V, ...)   frozen, validated (geolm.models.riemann_config)
    spec, theta = init_params(cfg, rng)                          flat float32 buffer + ParamSpec
    p = spec.views(theta)
    logits, cache = forward(p, ids, cfg)                         ids int [B,T] -> logits [N,V]
    out = outputs(cache)                                         {"z0", "zT" [N,D], "traj" [S+1,N,D], "aux"}
    dp = backward(dlogits, cache, daux)                          daux = d(penalties)/d aux, or None
    Input ids lie in [0, V] (V = the tokenizer's PAD, input only: wte has V+1 rows); targets in [0, V) or -1.
    loss, stats, cache = loss_forward(p, ids, targets, cfg);  dp = loss_backward(cache)
    loss, stats = loss_and_grads(theta, grad, batch, cfg, spec)  batch = (ids [B,T], targets [B,T]); fills grad
    nll, n = eval_nll(theta, batch, cfg, spec)                   float64 summed NLL over targets != -1
    logits = logits_last(p, ids, cfg)                            [B,V] at the last position only (generation)
    fld = field_eval(z, p, cfg)                                  f, v = g^-1 f, U, logdet parts at points z [N,D]
    zT, traj, aux, cache = flow(z0, p, cfg)                      the ODE alone on z0 [N,D] (traj [S+1,N,D])
    logits, cache = head_forward(zT, p, cfg)                     LN + head on z [N,D] -> [N,V]
    field_forward / field_backward / FieldWorkspace              the ODE field (geolm.models.riemann_field)
    theta2, arrays2 = grow_rank(theta, arrays, cfg, cfg2, rng)   metric rank R -> R2 > R (new U rows), pure
workspace: forward, loss_forward, loss_and_grads and eval_nll take an optional FieldWorkspace (one per run)
that owns the field's large reusable buffers; None allocates fresh ones (same numbers).

Model (spec 1.2-1.5). Per position, z0 = encoder(ids) (token + learned positions, causal pre-LN blocks),
    dz/dt = v(z) = g(z)^-1 f(z),   g(z) = eps I + alpha U(z)^T U(z),   U(z) = MLP_U(z) reshaped [R,D]
integrated by classical RK4 with S fixed steps on [0, 1] (geolm.ops.ode, discrete adjoint), then
    logits = LN(z_T) W_head + b   (W_head = wte^T when tied).
With K = eps I_R + alpha U U^T (never a D x D matrix):
    v = (f - alpha U^T K^-1 U f) / eps,   log det g = (D - R) log eps + log det K      (geolm.ops.metric)
Loss = CE + lambda_field * mean_tok sum_stages |f|^2 + lambda_metric * mean_{tok,stage} (log det g)^2
(metric_penalty="batch_mean": lambda_metric * (mean_{tok,stage} log det g)^2 instead). A penalty whose weight
is 0 contributes no cotangent (with lambda_metric = 0 the metric backward never forms K^-1); over zero tokens
both penalties are 0.
Controls: metric="identity" (g = I, v = f: a Euclidean neural ODE, no U-MLP), no_ode=True (z_T = z0: the
plain Transformer), metric="dense" (forms g [N,D,D]: geolm.ops.metric's dense tier, a baseline only).
Init: f-MLP last layer zero (the flow starts as the identity map), U-MLP last layer x0.01 (g ~ eps I).
"""
import dataclasses
import functools
import math

import numpy as np

from ..core.errors import ConfigError
from ..core.params import ParamSpec, accumulate
from ..ops.layernorm import layernorm_backward, layernorm_forward
from ..ops.linear import linear_backward, linear_forward
from ..ops.losses import nll_sum, xent_backward, xent_forward
from ..ops.mlp import mlp_init_
from ..ops.ode import rk4_backward, rk4_forward
from ..ops.transformer import encoder_backward, encoder_forward, encoder_init_, encoder_shapes
from .riemann_config import METRICS, ODE_FIELDS, PENALTIES, RiemannConfig
from .riemann_field import (FIELD_BLOCK, FieldWorkspace, field_backward, field_eval, field_forward,
                            field_forward_nocache, field_shapes)

__all__ = ["METRICS", "ODE_FIELDS", "PENALTIES", "RiemannConfig", "FIELD_BLOCK", "FieldWorkspace", "field_backward",
           "field_eval", "field_forward", "field_forward_nocache", "field_shapes", "param_shapes", "init_params",
           "flow", "head_forward", "head_backward", "forward", "outputs", "backward", "penalties", "loss_forward",
           "loss_backward", "loss_and_grads", "eval_nll", "logits_last", "grow_rank", "GROW_SCALE"]


# ---------------------------------------------------------------------------------------------------------------
# parameters

def param_shapes(cfg):
    D, V = cfg.dim, cfg.V
    shapes = {"enc": encoder_shapes(V + 1, cfg.seq_len, D, cfg.layers, cfg.ff_mult * D)}  # row V = PAD (input only)
    if not cfg.no_ode:
        shapes["field"] = field_shapes(cfg)
    shapes["ln_f"] = {"w": (D,), "b": (D,)}
    shapes["head"] = {"b": (V,)} if cfg.tie_head else {"w": (D, V), "b": (V,)}
    return shapes


def init_params(cfg, rng, dtype=np.float32):
    """-> (spec, theta): encoder init, f last layer 0, U last layer x0.01, LN (1, 0), head Glorot (or tied)."""
    spec = ParamSpec(param_shapes(cfg))
    theta = spec.zeros(dtype)
    p = spec.views(theta)
    encoder_init_(p["enc"], rng)
    if not cfg.no_ode:
        mlp_init_(p["field"]["f"], rng, last_scale=0.0)
        if "U" in p["field"]:
            mlp_init_(p["field"]["U"], rng, last_scale=0.01)
    p["ln_f"]["w"][...] = 1.0
    if not cfg.tie_head:
        p["head"]["w"][...] = rng.normal(0.0, 0.02, size=p["head"]["w"].shape)
    return spec, theta


GROW_SCALE = 0.01  # the U-MLP's last-layer scale at init (init_params: g ~ eps I at the start)


def grow_rank(theta, arrays, cfg_old, cfg_new, rng, scale=GROW_SCALE):
    """Metric rank R1 = cfg_old.rank -> R2 = cfg_new.rank > R1 (nothing else may differ) -> (theta2, arrays2), new
    flat buffers (the inputs are not modified). arrays: {name: flat array laid out like theta} (e.g. Adam's m, v).

    U = MLP_U(z) reshaped [R,D], so rows R1..R2-1 of U are the new columns R1*D..R2*D-1 of the U-MLP's fc2 (w [h_U,
    R*D], b [R*D]); every other entry is copied, and the new entries of `arrays` are 0. New w columns are drawn as
    init_params draws that layer (Glorot-uniform at the new shape, times `scale`), new b entries are 0.
    Not zero: a zero row u_i of U gets exactly zero gradient (dU = -alpha (t v^T + s y^T) + 2 alpha dl K^-1 U with
    t_i = u_i.y = 0, s_i = u_i.v = 0, and K = eps I + alpha U U^T block-diagonal, so (K^-1 U)_i = u_i / eps = 0),
    and would never move. Small: g changes by alpha sum_i u_i u_i^T with |u_i|^2 ~ D |a|^2 sigma^2 (a the U-MLP's
    hidden activations [h_U], sigma^2 = scale^2 * 2 / (h_U + R2*D) the new weights' variance), i.e. by a relative
    alpha |u_i|^2 / eps along u_i, as small as at a fresh init; log det g changes by about the sum of those. The
    new rows' gradient is linear in them, and Adam normalises its steps, so they move at once.
    """
    if cfg_old.no_ode or cfg_old.metric == "identity":
        raise ConfigError(f"the run has {'no ODE' if cfg_old.no_ode else 'the identity metric'}, so no metric rank "
                          f"to grow; keep --rank {cfg_old.rank} or start a new --output")
    if cfg_new.rank <= cfg_old.rank:
        raise ConfigError(f"--rank {cfg_new.rank} does not grow the run's metric rank {cfg_old.rank} (it can only "
                          f"grow); pass --rank > {cfg_old.rank}, or start a new --output")
    other = [f.name for f in dataclasses.fields(cfg_old)
             if f.name != "rank" and getattr(cfg_old, f.name) != getattr(cfg_new, f.name)]
    if other:
        raise ConfigError(f"growing the rank keeps every other setting, but {', '.join(other)} differ; pass the "
                          f"run's values, or start a new --output")
    spec_old, spec_new = ParamSpec(param_shapes(cfg_old)), ParamSpec(param_shapes(cfg_new))
    grown = {}
    for name, a in dict(arrays, theta=theta).items():
        if a.ndim != 1 or a.shape[0] != spec_old.size:
            raise ValueError(f"{name} must be a flat buffer of {spec_old.size} parameters, got shape {a.shape}")
        new, src = spec_new.zeros(a.dtype), spec_old.named(a)
        for key, dst in spec_new.named(new).items():
            dst[..., :src[key].shape[-1]] = src[key]  # only field.U.fc2's last axis grows
        grown[name] = new
    w = spec_new.named(grown["theta"])["field.U.fc2.w"]  # [h_U, R2*D]
    lim = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))  # Glorot-uniform bound at the new shape
    w[:, cfg_old.rank * cfg_old.dim:] = scale * rng.uniform(-lim, lim, size=(w.shape[0], w.shape[1] -
                                                                                   cfg_old.rank * cfg_old.dim))
    theta2 = grown.pop("theta")
    return theta2, grown


# ---------------------------------------------------------------------------------------------------------------
# the ODE and the head

def _check_ids(ids, cfg):
    if ids.ndim != 2 or ids.shape[1] > cfg.seq_len or ids.shape[1] < 1:
        raise ConfigError(f"model input must be ids [B,T] with 1 <= T <= --seq-len {cfg.seq_len}, got shape "
                          f"{ids.shape}; crop the context or raise --seq-len")


def _bound_field(cfg, workspace):
    """field_forward bound to cfg and the run's workspace (one cache live at a time: the RK4 adjoint's order)."""
    return functools.partial(field_forward, cfg=cfg, workspace=workspace)


def flow(z0, p, cfg, workspace=None):
    """z0 [N,D] -> (zT, traj [S+1,N,D], aux {name: [S,4,N]}, ode cache or None)."""
    if cfg.no_ode:
        return z0, z0[None], {}, None
    return rk4_forward(_bound_field(cfg, workspace), z0, p["field"], 0.0, 1.0, cfg.ode_steps,
                       field_eval=functools.partial(field_forward_nocache, cfg=cfg, workspace=workspace))


def head_forward(zT, p, cfg):
    """zT [N,D] -> (logits [N,V], cache)."""
    h, cln = layernorm_forward(zT, **p["ln_f"])  # [N,D]
    w = p["enc"]["wte"][:cfg.V].T if cfg.tie_head else p["head"]["w"]  # [D,V] (the PAD row is no output class)
    logits, chead = linear_forward(h, w, p["head"]["b"])  # [N,D] -> [N,V]
    return logits, (cln, chead)


def head_backward(dlogits, cache, cfg):
    """-> (dzT [N,D], dp partial dict {"ln_f", "head", maybe "enc": {"wte"}})."""
    cln, chead = cache
    dh, dw, db = linear_backward(dlogits, chead)  # logits = h W + b
    dzT, dlnw, dlnb = layernorm_backward(dh, cln)  # h = LN(zT)
    dp = {"ln_f": {"w": dlnw, "b": dlnb}}
    if cfg.tie_head:
        dp["head"] = {"b": db}
        dp["enc"] = {"wte": dw.T}  # W = wte[:V]^T
    else:
        dp["head"] = {"w": dw, "b": db}
    return dzT, dp


# ---------------------------------------------------------------------------------------------------------------
# the model

def forward(p, ids, cfg, workspace=None):
    """ids int [B,T] -> (logits [N,V], cache); outputs(cache) has the states and the stage aux."""
    _check_ids(ids, cfg)
    B, T = ids.shape
    h, cenc = encoder_forward(ids, p["enc"], cfg.heads)  # [B,T] -> [B,T,D]
    z0 = h.reshape(B * T, cfg.dim)  # [B,T,D] -> [N,D]
    zT, traj, aux, code = flow(z0, p, cfg, workspace)
    logits, chead = head_forward(zT, p, cfg)
    out = {"z0": z0, "zT": zT, "traj": traj, "aux": aux}
    return logits, (cenc, code, chead, (B, T), cfg, workspace, out)


def outputs(cache):
    """forward's states: {"z0", "zT" [N,D], "traj" [S+1,N,D], "aux" {name: [S,4,N]}}."""
    return cache[-1]


def backward(dlogits, cache, daux=None):
    """dlogits [N,V], daux {name: [S,4,N]} or None -> dp (nested like p; tied wte gets both gradients)."""
    cenc, code, chead, (B, T), cfg, workspace, _ = cache
    dzT, dp = head_backward(dlogits, chead, cfg)
    if cfg.no_ode:
        dz0 = dzT
    else:
        dz0, dpfield = rk4_backward(dzT, None, daux or None, code, _bound_field(cfg, workspace), field_backward)
        dp["field"] = dpfield
    dpenc = encoder_backward(dz0.reshape(B, T, cfg.dim), cenc)  # z0 = h.reshape(N, D)
    if "enc" in dp:  # tied head: wte is both the embedding and the output matrix
        dpenc["wte"][:cfg.V] += dp["enc"]["wte"]
    dp["enc"] = dpenc
    return dp


def penalties(aux, cfg):
    """-> (field penalty, metric penalty, daux {name: [S,4,N]} = d(penalties)/d aux).

    A penalty with weight 0 or over zero tokens is 0 and has no entry in daux."""
    daux, pen_f, pen_m = {}, 0.0, 0.0
    f2 = aux.get("f2")  # [S,4,N]
    if f2 is not None and cfg.lambda_field > 0 and f2.size:
        N = f2.shape[-1]
        pen_f = cfg.lambda_field * float(np.sum(f2, dtype=np.float64)) / N
        daux["f2"] = np.full_like(f2, cfg.lambda_field / N)
    ld = aux.get("logdet")  # [S,4,N]
    if ld is not None and cfg.lambda_metric > 0 and ld.size:
        m = ld.size
        if cfg.metric_penalty == "point":
            pen_m = cfg.lambda_metric * float(np.sum(np.square(ld, dtype=np.float64))) / m
            daux["logdet"] = (2.0 * cfg.lambda_metric / m) * ld
        else:
            mean = float(np.mean(ld, dtype=np.float64))
            pen_m = cfg.lambda_metric * mean * mean
            daux["logdet"] = np.full_like(ld, 2.0 * cfg.lambda_metric * mean / m)
    return pen_f, pen_m, daux


def loss_forward(p, ids, targets, cfg, workspace=None):
    """ids, targets int [B,T] (target -1 = ignored) -> (loss float, stats dict, cache)."""
    logits, cache = forward(p, ids, cfg, workspace)
    aux = outputs(cache)["aux"]
    ce, cx = xent_forward(logits, np.asarray(targets).reshape(-1))
    pen_f, pen_m, daux = penalties(aux, cfg)
    stats = {"ce": ce, "pen_field": pen_f, "pen_metric": pen_m, "n": int(cx[3])}
    if "logdet" in aux and aux["logdet"].size:
        stats["train_logdet"] = float(np.mean(aux["logdet"], dtype=np.float64))
    return ce + pen_f + pen_m, stats, (cache, cx, daux)


def loss_backward(cache):
    """-> dp, the gradient of loss_forward's loss (nested like p)."""
    cfwd, cx, daux = cache
    dlogits = xent_backward(1.0, cx)  # loss = CE + penalties(aux)
    return backward(dlogits, cfwd, daux)


def loss_and_grads(theta, grad, batch, cfg, spec, workspace=None):
    """batch = (ids [B,T], targets [B,T]) -> (loss, stats); zeroes grad and fills it with d loss / d theta."""
    ids, targets = batch
    loss, stats, cache = loss_forward(spec.views(theta), ids, targets, cfg, workspace)
    dp = loss_backward(cache)
    grad[...] = 0.0
    accumulate(spec.views(grad), dp)
    return loss, stats


def eval_nll(theta, batch, cfg, spec, workspace=None):
    """-> (summed NLL in float64, number of targets) over targets != -1."""
    ids, targets = batch
    logits, _ = forward(spec.views(theta), ids, cfg, workspace)
    return nll_sum(logits, np.asarray(targets).reshape(-1))


def logits_last(p, ids, cfg):
    """ids [B,T] -> logits [B,V] of the next token after each row (the ODE runs on the last position only)."""
    _check_ids(ids, cfg)
    h, _ = encoder_forward(ids, p["enc"], cfg.heads)  # [B,T,D]
    z0 = np.ascontiguousarray(h[:, -1])  # [B,D]
    zT = flow(z0, p, cfg)[0]
    return head_forward(zT, p, cfg)[0]
