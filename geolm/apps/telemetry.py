"""Trajectory telemetry of the Riemannian ODE LM (spec 1.5), computed on a fixed validation batch.

K ODE steps (K+1 step-boundary points z_0..z_K per token) . N tokens . D model . R metric rank

Per trajectory (token) i, averaged over i:
    displacement   D_i = |z_K - z_0|
    path length    P_i = sum_k |z_{k+1} - z_k|                         (depends on K: report it)
    metric length  M_i = sum_k sqrt(dz_k^T g(z_k) dz_k),  dz_k = z_{k+1} - z_k, g at the segment start
                   dz^T g dz = eps |dz|^2 + alpha |U dz|^2             (no D x D matrix)
    linearity      mean_i D_i / P_i ("linearity", over trajectories that move) and mean D / mean P
                   ("linearity_of_means"): the two differ, so both are reported
    fDecay         |f(z_K)| / |f(z_0)| (mean of per-trajectory ratios) and its square ("fdecay_sq")
    speed          |g^-1 f| and |f| ("f_norm"), mean over tokens and step boundaries
    log det g      mean over tokens and RK4 stages ("logdet"), split into (d - r) log eps ("logdet_const")
                   and log det K ("logdet_K")
plus the batch's cross-entropy and both penalties ("tel_ce", "tel_pen_field", "tel_pen_metric"; prefixed so
they do not mix with the training records' "ce" in plots). Key names match geolm.apps.plots.TELEMETRY_KEYS.
A ratio with a zero denominator (no motion yet, f = 0 at init) is left out of its mean; NaN if none is left.
"""
import math

import numpy as np

from ..models import riemann
from ..ops.losses import nll_sum


def _mean(x):
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()) if x.size else math.nan


def _ratio_mean(num, den, tiny=1e-12):
    """mean_i num_i / den_i over i with den_i > tiny (NaN if none)."""
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    ok = den > tiny
    return float(np.mean(num[ok] / den[ok])) if ok.any() else math.nan


def path_stats(traj):
    """traj [K+1,N,D] -> per-token arrays {"displacement" [N], "path_length" [N]} (float64)."""
    traj = np.asarray(traj, np.float64)
    disp = np.linalg.norm(traj[-1] - traj[0], axis=-1)  # [N]
    seg = np.linalg.norm(np.diff(traj, axis=0), axis=-1)  # [K,N]
    return {"displacement": disp, "path_length": seg.sum(axis=0)}


def metric_length(traj, Us, eps, alpha):
    """traj [K+1,N,D], Us [K+1,N,R,D] (U at each boundary; None = Euclidean) -> [N] sum_k sqrt(dz^T g(z_k) dz)."""
    traj = np.asarray(traj, np.float64)
    dz = np.diff(traj, axis=0)  # [K,N,D]
    q = np.sum(dz * dz, axis=-1)  # [K,N] |dz|^2
    if Us is None:
        return np.sqrt(q).sum(axis=0)
    Udz = np.einsum("knrd,knd->knr", np.asarray(Us[:-1], np.float64), dz)  # [K,N,R]
    q = eps * q + alpha * np.sum(Udz * Udz, axis=-1)  # dz^T g dz
    return np.sqrt(np.maximum(q, 0.0)).sum(axis=0)


def summarize(traj, fields, aux, cfg):
    """Telemetry floats from a trajectory [K+1,N,D], field_eval dicts at each boundary, the ODE's aux."""
    ps = path_stats(traj)
    D, P = ps["displacement"], ps["path_length"]
    out = {"ode_steps": int(traj.shape[0] - 1), "displacement": _mean(D), "path_length": _mean(P),
           "linearity": _ratio_mean(D, P), "linearity_of_means": _mean(D) / _mean(P) if _mean(P) > 0 else math.nan}
    Us = None if fields[0]["U"] is None else np.stack([f["U"] for f in fields])  # [K+1,N,R,D]
    euclid = cfg.metric == "identity"
    out["metric_length"] = _mean(metric_length(traj, Us, 1.0 if euclid else cfg.eps, 0.0 if euclid else cfg.alpha))
    fn = np.stack([np.linalg.norm(np.asarray(f["f"], np.float64), axis=-1) for f in fields])  # [K+1,N]
    vn = np.stack([np.linalg.norm(np.asarray(f["v"], np.float64), axis=-1) for f in fields])  # [K+1,N]
    out["fdecay"] = _ratio_mean(fn[-1], fn[0])
    out["fdecay_sq"] = _ratio_mean(fn[-1] ** 2, fn[0] ** 2)
    out["f_norm"] = _mean(fn)
    out["speed"] = _mean(vn)
    if "logdet" in aux:
        const = (cfg.dim - cfg.rank) * math.log(cfg.eps)
        ld = _mean(aux["logdet"])
        out.update(logdet=ld, logdet_const=const, logdet_K=ld - const,
                   logdet_min=float(np.min(aux["logdet"])), logdet_max=float(np.max(aux["logdet"])))
    return out


def trajectory_telemetry(p, ids, targets, cfg):
    """Full telemetry of the model (param views p) on one batch ids/targets [B,T] -> dict of floats."""
    logits, cache = riemann.forward(p, ids, cfg)
    fo = riemann.outputs(cache)
    nll, n = nll_sum(logits, np.asarray(targets).reshape(-1))
    pen_f, pen_m, _ = riemann.penalties(fo["aux"], cfg)
    ce = nll / max(n, 1)
    out = {"tel_loss": ce + pen_f + pen_m, "tel_ce": ce, "tel_pen_field": pen_f, "tel_pen_metric": pen_m}
    if cfg.no_ode:
        return out
    traj = fo["traj"]  # [K+1,N,D]
    fields = [riemann.field_eval(traj[k], p["field"], cfg) for k in range(traj.shape[0])]
    out.update(summarize(traj, fields, fo["aux"], cfg))
    return out
