"""Rank growth: continue a Riemannian run with its metric rank grown from R1 to R2 > R1.

    python examples/train_riemann.py --resume DIR --rank R2 [--steps N]
    run(*resume_configs(DIR, {"rank": R2, "steps": N}))          # geolm.apps.riemann_run / riemann_settings

Before fit resumes, grow_checkpoint replaces DIR's newest checkpoint (step k, rank R1) by one at the same step whose
theta and Adam moments come from geolm.models.riemann.grow_rank (new U rows small and random, their moments 0).
Adam's t, the sampler, the task RNG, the counters and the recorded training settings are copied unchanged, so fit
resumes at step k exactly as from any checkpoint. metrics.jsonl gets {"kind": "grow", "step": k, "from": R1, "to":
R2}; every later checkpoint (extra "growth") and summary.json ("growth") list the growths so far. Shrinking, or a
rank change together with any other model change, is refused with one line. The checkpoint at step k is replaced:
to grow one run to several ranks, copy its directory first.

The write-up: "we restarted the flow and expanded the metric rank to 64" after its step-3,000 telemetry, then
"by step 12,000" an equilibrium. Our reading: the training was restarted because U's output layer changed shape
(a framework checkpoint cannot load a layer of another size); nothing says parameters or the optimiser were reset,
and the step count reads as continued. So growth resets nothing: not the field f (whose zero last layer only
starts a new model as the identity flow), not Adam or its step, not the schedule. A larger --steps than the run's
stretches the cosine schedule, which raises the learning rate at step k (fit reports the changed flag). A
from-scratch reading is a new run at the larger --rank.
"""
import dataclasses
import json

import numpy as np

from ..core.params import ParamSpec
from ..models import riemann
from ..training.checkpoint import load_checkpoint, save_checkpoint
from ..training.metrics import MetricsLog
from .riemann_load import checkpoint_config


def grow_checkpoint(run_dir, cfg, tcfg):
    """Before resuming run_dir with model config cfg: if cfg.rank exceeds the newest checkpoint's rank (and nothing
    else differs), grow it as the module docstring says. -> (the run's growth list, this growth's record or None).
    A smaller cfg.rank is a ConfigError; other differences are left to fit's checkpoint check."""
    ck = load_checkpoint(run_dir, expect_family="riemann")
    old = checkpoint_config(ck)
    growth = list(ck.extra.get("growth", []))
    if cfg.rank == old.rank or (cfg.rank > old.rank and dataclasses.replace(old, rank=cfg.rank) != cfg):
        return growth, None
    rng = np.random.default_rng([tcfg.seed, ck.step, old.rank, cfg.rank])
    theta, grown = riemann.grow_rank(ck.theta, {k: ck.arrays[k] for k in ("adam_m", "adam_v")}, old, cfg, rng)
    rec = {"step": ck.step, "from": old.rank, "to": cfg.rank}
    growth.append(rec)
    spec = ParamSpec(riemann.param_shapes(cfg))
    meta = dict(ck.meta, cfg=cfg, spec=json.loads(spec.to_json()), extra=dict(ck.meta.get("extra", {}), growth=growth))
    log = MetricsLog(run_dir)
    if dict(kind="grow", **rec) not in log.read():  # a growth cut short before its checkpoint is redone, logged once
        log.write(dict(kind="grow", **rec))
    save_checkpoint(run_dir, ck.step, theta, meta, dict(ck.arrays, **grown), keep=tcfg.keep_checkpoints)
    return growth, rec
