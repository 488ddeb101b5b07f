"""Is the trained flow resolved? A Riemannian model re-run at k * S classical RK4 steps (S = its trained ode_steps).

B batch . T time . N = B*T tokens . D model . S trained ODE steps . n = k*S steps of a re-run

The model was trained through the S-step RK4 map, so its numbers belong to that map. Re-running the same
parameters (cfg.ode_steps is not a parameter shape: param_shapes ignores it; checked) with n = S, 2S, 4S steps
(h = 1/n) asks how far that map is from the ODE it discretises:
    z_T change   dz_ref(n) = |Z_T(n) - Z_T(n_max)|_F / |Z_T(n_max) - Z_0|_F over the N tokens of a fixed
                 validation batch (Frobenius norms: the error relative to the flow's own displacement), its
                 per-token maximum (tokens that move), and dz_base(n) the same against Z_T(S)
    observed order  p = log2(|Z_T(S) - Z_T(2S)| / |Z_T(2S) - Z_T(4S)|)  (-> 4 for RK4 once h is small:
                 the error C h^4 shrinks 16x per halving, so dz_ref(S) / dz_ref(2S) -> (1 - 1/256)/(1/16 - 1/256)
                 = 17; p far from 4 means h is not yet in RK4's asymptotic range)
    argmax agree  fraction of the batch's tokens whose head argmax at Z_T(n) equals that at Z_T(n_max)
    val ppl      exp(summed NLL / targets) over the first val_batches validation batches (PAD targets ignored)
    speeds       |f| ("f_norm") and |g^-1 f| ("speed"), means over tokens and step boundaries, and the rest of
                 geolm.apps.telemetry's summary (displacement, path length, linearity, log det g, fDecay), as
                 the training telemetry computes it on the same batch (all its tokens)
A trained model can do better at S than at 4S (it is fitted to the S-step map); a large dz_ref(S) with a steady
val ppl means the head does not read the unresolved part. float64=True re-runs in float64, so that float32
round-off (relative ~1e-7 of |z|) does not floor the z_T changes of a well-resolved flow.
"""
import dataclasses
import math
from pathlib import Path

import numpy as np

from ..core.errors import CheckpointError, ConfigError
from ..data.batches import sequence_chunks
from ..models import riemann
from .riemann_data import batches_of
from .riemann_load import load_model
from .telemetry import summarize
from .trajectories import validation_stories

FACTORS = (1, 2, 4)


def with_steps(cfg, n):
    """cfg with ode_steps = n; the parameter shapes must not change (ConfigError otherwise)."""
    new = dataclasses.replace(cfg, ode_steps=int(n))
    if riemann.param_shapes(new) != riemann.param_shapes(cfg):
        raise ConfigError("changing --ode-steps changed the parameter shapes; this model cannot be re-run at "
                          "another step count")
    return new


def _fro(a):
    return float(np.linalg.norm(np.asarray(a, np.float64)))


def _rel(Z, ref, z0):
    """(|Z - ref|_F / |ref - z0|_F, max over moving tokens of |Z_i - ref_i| / |ref_i - z0_i|)."""
    num = np.linalg.norm(np.asarray(Z, np.float64) - ref, axis=1)      # [N]
    den = np.linalg.norm(ref - z0, axis=1)                             # [N]
    tot = float(np.sqrt(np.sum(den ** 2)))
    ok = den > 1e-12 * max(1.0, float(np.abs(ref).max(initial=0.0)))
    return (float(np.sqrt(np.sum(num ** 2))) / tot if tot > 0 else math.nan,
            float(np.max(num[ok] / den[ok])) if ok.any() else math.nan)


def _flow_batch(p, ids, targets, cfg):
    """One forward on the fixed batch -> (z0, zT [N,D] float64, pred [N], telemetry summary dict)."""
    logits, cache = riemann.forward(p, ids, cfg)
    fo = riemann.outputs(cache)
    traj = fo["traj"]                                                  # [n+1,N,D]
    fields = [riemann.field_eval(traj[k], p["field"], cfg) for k in range(traj.shape[0])]
    tel = summarize(traj, fields, fo["aux"], cfg)
    return (np.asarray(fo["z0"], np.float64), np.asarray(fo["zT"], np.float64), np.argmax(logits, axis=1), tel)


def val_perplexity(theta, cfg, spec, batches):
    """exp(summed NLL / targets) over batches [(ids, targets)] -> (ppl, mean NLL, targets)."""
    nll, n = 0.0, 0
    for b in batches:
        s, m = riemann.eval_nll(theta, b, cfg, spec)
        nll, n = nll + float(s), n + int(m)
    return (math.exp(nll / n), nll / n, n) if n else (math.nan, math.nan, 0)


def resolution(theta, cfg, spec, tel_batch, val_batches, factors=FACTORS, float64=False):
    """Re-run a Riemannian model at n = k * cfg.ode_steps steps for k in factors (increasing, first 1).

    tel_batch: (ids, targets) [B,T], the fixed batch of the z_T changes; val_batches: list of (ids, targets).
    -> dict(trained_steps, dtype, tokens, val_targets, observed_order, rows=[{ode_steps, h, dz_ref, dz_ref_max,
    dz_base, dz_base_max, argmax_agree, val_ppl, val_nll, + telemetry summary}]). theta is not modified.
    """
    if cfg.no_ode:
        raise ConfigError("the run has no ODE (--no-ode, the plain-Transformer control): there is no flow to "
                          "resolve; pass a run trained with an ODE")
    factors = tuple(int(k) for k in factors)
    if not factors or factors[0] != 1 or any(b <= a for a, b in zip(factors, factors[1:])):
        raise ConfigError(f"factors must start at 1 and increase (e.g. 1 2 4), got {factors}")
    th = np.array(theta, dtype=np.float64 if float64 else theta.dtype, copy=True)
    p = spec.views(th)
    S = cfg.ode_steps
    runs = []
    for k in factors:
        c = with_steps(cfg, k * S)
        z0, zT, pred, tel = _flow_batch(p, tel_batch[0], tel_batch[1], c)
        ppl, nll, n_val = val_perplexity(th, c, spec, val_batches)
        runs.append((c.ode_steps, zT, pred, tel, ppl, nll))
    ref, base = runs[-1][1], runs[0][1]
    rows = []
    for n, zT, pred, tel, ppl, nll in runs:
        dr, drm = _rel(zT, ref, z0)
        db, dbm = _rel(zT, base, z0)
        rows.append(dict(ode_steps=n, h=1.0 / n, dz_ref=dr, dz_ref_max=drm, dz_base=db, dz_base_max=dbm,
                         argmax_agree=float(np.mean(pred == runs[-1][2])), val_ppl=ppl, val_nll=nll,
                         **{k: v for k, v in tel.items() if k != "ode_steps"}))
    order = math.nan
    if len(runs) >= 3:
        a, b = _fro(runs[0][1] - runs[1][1]), _fro(runs[1][1] - runs[2][1])
        order = math.log2(a / b) if a > 0 and b > 0 else math.nan
    return dict(trained_steps=S, factors=list(factors), dtype=str(th.dtype), tokens=int(z0.shape[0]),
                val_targets=n_val, observed_order=order, rows=rows)


def run_resolution(path, factors=FACTORS, val_batches=None, batch_size=None, tel_batch=None, float64=False,
                   data=None, val_data=None):
    """resolution() of the Riemannian run in `path` (run directory or ckpt_*.npz) on its own validation data.

    val_batches / batch_size / tel_batch default to the run's own settings (so the S row's val ppl is the run's
    validation subset and its speeds are its telemetry batch's). -> resolution dict + checkpoint, step, data,
    cfg summary, val_batches, batch_size, tel_batch.
    """
    if not Path(path).exists():
        raise CheckpointError(f"run directory or checkpoint {path} not found; pass --checkpoint DIR of a trained "
                              f"Riemannian run (examples/train_riemann.py --output DIR)")
    theta, cfg, spec, tok, ck = load_model(path)
    saved = ck.extra.get("run", {})
    val_batches = saved.get("val_batches", 8) if val_batches is None else val_batches
    batch_size = ck.meta.get("tcfg", {}).get("batch_size", 16) if batch_size is None else batch_size
    tel_batch = saved.get("tel_batch", 8) if tel_batch is None else tel_batch
    if val_batches < 0 or batch_size < 1 or tel_batch < 1:
        raise ConfigError(f"need --val-batches >= 0 (0 = all), --batch-size >= 1 and --tel-batch >= 1, got "
                          f"{val_batches}, {batch_size}, {tel_batch}")
    stories, source = validation_stories(ck, tok, data, val_data)
    va = sequence_chunks(stories, cfg.seq_len, eos_id=tok.eos_id, pad_id=tok.pad_id)   # [M, T+1], as training
    if len(va) == 0:
        raise ConfigError(f"the validation stories give no chunk of {cfg.seq_len + 1} tokens; pass --val-data")
    res = resolution(theta, cfg, spec, batches_of(va, tel_batch, 1, tok.pad_id)[0],
                     batches_of(va, batch_size, val_batches, tok.pad_id), factors=factors, float64=float64)
    res.update(checkpoint=str(ck.path), step=int(ck.step), data=source, val_batches=int(val_batches),
               batch_size=int(batch_size), tel_batch=int(min(tel_batch, len(va))),
               model=dict(metric=cfg.metric, rank=cfg.rank, eps=cfg.eps, alpha=cfg.alpha, dim=cfg.dim))
    return res


def _f(x, fmt):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def format_resolution(res):
    """A table of resolution rows and a one-line reading of the S row."""
    head = (f"{'steps':>5} {'dz vs max':>10} {'(max tok)':>10} {'dz vs S':>9} {'argmax=':>8} {'val ppl':>9} "
            f"{'|f|':>8} {'|g^-1 f|':>9} {'path':>8} {'linear':>7}")
    rows = [head, "-" * len(head)]
    for r in res["rows"]:
        rows.append(f"{r['ode_steps']:>5d} {_f(r['dz_ref'], '10.3e')} {_f(r['dz_ref_max'], '10.3e')} "
                    f"{_f(r['dz_base'], '9.3e')} {_f(r['argmax_agree'], '8.4f')} {_f(r['val_ppl'], '9.3f')} "
                    f"{_f(r.get('f_norm'), '8.4g')} {_f(r.get('speed'), '9.4g')} {_f(r.get('path_length'), '8.4g')} "
                    f"{_f(r.get('linearity'), '7.4f')}")
    s0, s1 = res["rows"][0], res["rows"][-1]
    dp = (s0["val_ppl"] / s1["val_ppl"] - 1.0) * 100.0 if s1["val_ppl"] > 0 else math.nan
    rows.append(f"at the trained S = {s0['ode_steps']}: z_T is {_f(s0['dz_ref'] * 100, '.3g')}% of the flow's "
                f"displacement away from {s1['ode_steps']} steps; val ppl {_f(s0['val_ppl'], '.3f')} vs "
                f"{_f(s1['val_ppl'], '.3f')} ({_f(dp, '+.2f')}%); observed order {_f(res['observed_order'], '.2f')} "
                f"(RK4: 4); {res['dtype']}, {res['tokens']} tokens, {res['val_targets']} validation targets" +
                ("; float32 round-off floors changes below ~1e-6 (--float64)" if res["dtype"] == "float32" else ""))
    return "\n".join(rows)
