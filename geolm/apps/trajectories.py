"""Running a trained Riemannian ODE LM on chosen positions: sampled validation positions, their causal context
windows, the encoder + ODE trajectories there, and log det g on arbitrary points (the semantic map's inputs).

n sampled positions . T context . D model . R metric rank . S ODE steps . M points

log det g by metric: learned low rank (g = eps I + alpha U^T U) -> per point; alpha = 0 -> the constant
D log eps (g = eps I, computed through the same solve); the identity control -> 0 (g = I, its own constant
metric, not a learned one); no ODE -> undefined (None).
"""
import math

import numpy as np

from ..core.errors import CheckpointError, DataError
from ..data.corpus import load_corpus
from ..models import riemann
from ..ops.transformer import encoder_forward


def validation_stories(ck, tok, data=None, val_data=None, max_train=None, max_val=None):
    """The validation stories of a loaded checkpoint's run, as model ids: its recorded data (or `data`,
    `val_data`, story counts given) -> (list of int arrays, the corpus source line)."""
    ex = ck.extra
    data = data or ex.get("data")
    if data is None:
        raise CheckpointError(f"checkpoint {ck.path} does not record its data; pass --data (and --val-data)")
    n_train = max_train or ex.get("max_train_stories", ex.get("max_train"))  # older runs: the old names
    n_val = max_val or ex.get("max_val_stories", ex.get("max_val"))
    corpus = load_corpus(data, val_data or ex.get("val_data"), max_train=n_train, max_val=n_val, quiet=True)
    return tok.encode_stories(corpus.val), corpus.source


def sample_positions(stories, n, seed=0, end_frac=0.125):
    """Pick n (story, position) pairs from token-id stories: ~end_frac of them at a story's last token (where
    the next token is the end of the story, so 'end' predictions can appear), the rest uniform over tokens.

    -> (story index [n] int, position [n] int). Deterministic in seed.
    """
    lens = np.array([len(s) for s in stories], dtype=np.int64)
    if lens.size == 0 or lens.sum() == 0:
        raise DataError("no validation tokens to sample trajectories from; pass --val-data with stories")
    rng = np.random.default_rng([int(seed), 7])
    n_end = int(round(n * end_frac))
    nonempty = np.flatnonzero(lens > 0)
    si_end = rng.choice(nonempty, size=n_end, replace=nonempty.size < n_end)
    pos_end = lens[si_end] - 1
    flat = rng.choice(int(lens.sum()), size=n - n_end, replace=int(lens.sum()) < n - n_end)
    starts = np.concatenate([[0], np.cumsum(lens)])
    si = np.searchsorted(starts, flat, side="right") - 1
    pos = flat - starts[si]
    return np.concatenate([si_end, si]).astype(np.int64), np.concatenate([pos_end, pos]).astype(np.int64)


def next_tokens(stories, story_idx, pos, eos_id):
    """The token that follows each sampled position: stories[s][t + 1], or eos_id after a story's last token.
    -> [n] int64."""
    return np.array([int(stories[s][t + 1]) if t + 1 < len(stories[s]) else int(eos_id)
                     for s, t in zip(story_idx, pos)], dtype=np.int64)


def context_batch(stories, story_idx, pos, T, pad_id):
    """Causal windows: row i holds up to T tokens of story story_idx[i] that include pos[i], right-padded with
    pad_id (any id inside the embedding table: a causal encoder never reads later positions for earlier ones).
    -> (ids [n,T] int32, col [n] int)."""
    n = len(story_idx)
    ids = np.full((n, T), pad_id, dtype=np.int32)
    col = np.empty(n, dtype=np.int64)
    for i, (s, t) in enumerate(zip(story_idx, pos)):     # n ~ 200 rows: a loop over samples, not tokens
        toks = np.asarray(stories[s])
        start = max(0, int(t) - T + 1)
        w = toks[start:start + T]
        ids[i, :len(w)] = w
        col[i] = int(t) - start
    return ids, col


def run_trajectories(theta, cfg, spec, ids, col):
    """Encoder on ids [n,T], then the ODE on the n chosen positions only.

    -> dict(z0 [n,D], zT [n,D], traj [S+1,n,D], pred [n] int (head argmax at z_T)), float64 copies.
    """
    p = spec.views(theta)
    h, _ = encoder_forward(ids, p["enc"], cfg.heads)                 # [n,T] -> [n,T,D]
    z0 = np.ascontiguousarray(h[np.arange(len(col)), col])          # [n,D]
    zT, traj, _, _ = riemann.flow(z0, p, cfg)                        # [n,D], [S+1,n,D]
    logits = riemann.head_forward(zT, p, cfg)[0]                     # [n,V]
    return {"z0": z0.astype(np.float64), "zT": np.asarray(zT, dtype=np.float64),
            "traj": np.asarray(traj, dtype=np.float64), "pred": np.argmax(logits, axis=1)}


def logdet_landscape(theta, cfg, spec, points, chunk=256):
    """log det g at points [M,D] (float64 [M]); None for the identity metric or the no-ODE control."""
    if cfg.no_ode or cfg.metric == "identity":
        return None
    p = spec.views(theta)
    dt = theta.dtype
    out = np.empty(points.shape[0])
    for i in range(0, points.shape[0], chunk):                       # chunks bound the [m,R*D] U-MLP output
        z = np.ascontiguousarray(points[i:i + chunk], dtype=dt)
        out[i:i + chunk] = riemann.field_eval(z, p["field"], cfg)["logdet"]
    return out


def metric_note(cfg):
    """One line saying which metric log det g belongs to (see the module docstring)."""
    if cfg.no_ode:
        return "no ODE (z_T = z_0): no metric, log det g undefined"
    if cfg.metric == "identity":
        return "g = I control: log det g = 0 at every point (its own constant metric, not a learned one)"
    if cfg.alpha == 0.0:
        return (f"g = eps I (alpha = 0, eps = {cfg.eps:g}): constant log det g = D log eps = "
                f"{cfg.dim * math.log(cfg.eps):.4g}")
    return f"learned g = eps I + alpha U^T U (r = {cfg.rank}, eps = {cfg.eps:g}, alpha = {cfg.alpha:g}): per point"


def point_logdet(theta, cfg, spec, points):
    """log det g at points [M,D] for any control: float64 [M], zeros for the identity metric, None without an ODE."""
    if cfg.no_ode:
        return None
    if cfg.metric == "identity":
        return np.zeros(np.shape(points)[0])
    return logdet_landscape(theta, cfg, spec, np.asarray(points))
