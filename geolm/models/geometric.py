"""Geometric token-coordinate LMs (spec 2.9): the model catalogue, its frozen feature tables, and the model contract.

B batch . C context (8) . k coordinate dim . F dense feature width . J one-hot id slots . Vi input vocab
(classes + PAD) . H hidden (--dim) . V output classes (incl. UNK)

Every "mlp" model is the MLP head of geolm.models.geo_mlp over [x (F frozen floats) + one-hot(id_1..id_J)],
the ids being the last J context tokens; the "attn" models are geolm.models.geo_attention.
Frozen features, computed per batch from per-token tables (X: symmetric PPMI coords, PAD row 0):
    abs        x = X[c_1] + ... + X[c_C]                               (+ = concatenation; C*k floats)
    rot        x = Q_t X[c_j], j = 1..C, Q_t = R(X[t] -> e_k)          (rotation into the current token's frame)
    rot_nbrs   x = Q_t X[c_j] + Q_t O[c_j],  O_v = sum_{u in N(v)} R(x_u -> x_v)(x_u - x_v)   (2*C*k floats)
    successor  x = Xout[c_{C-n+1}] + ... + Xout[c_C]                   (directed-PPMI out-role coords)
R(a -> b) = I + A + A^2/(1 + a.b), A = b a^T - a b^T (any k; geolm.geometry.rotation, spec 2.6). Coordinates are frozen,
so the features are computed once per batch from the tables and need no backward.
Loss: mean softmax cross-entropy in the implicit form of geolm.ops.losses.xent_factors (the logits buffer becomes
e, the backward folds the row scale and the one-hot into its small operands; see geo_mlp).
"""
from dataclasses import dataclass

import numpy as np

from . import geo_attention, geo_mlp
from ..core.config import require
from ..core.errors import ConfigError
from ..core.params import ParamSpec, accumulate
from ..geometry.rotation import offsets_transported, pole, rotation_matrix
from ..ops.losses import nll_rows, xent_factors

MLP_FEATURES = ("none", "abs", "rot", "rot_nbrs", "successor")


# ---------------------------------------------------------------- frozen geometry

def frame_rotations(X):
    """Q [Vi,k,k] float32, Q_v = R(X[v] -> e_k) (geolm.geometry.rotation); zero (PAD) rows get the identity."""
    Vi, k = X.shape
    norm = np.linalg.norm(X, axis=1)
    Q = np.broadcast_to(np.eye(k), (Vi, k, k)).copy()
    live = norm > 0.5
    Q[live] = rotation_matrix(X[live] / norm[live, None], pole(k))  # [n,k,k]
    return Q.astype(np.float32)


def build_tables(X, nbr, pad_id, Xout=None, n_succ=2):
    """Frozen per-token tables for `featurize` and the attention model.

    X [V,k] unit coords of the classes, nbr [V,K] top-K neighbours (-1 padded), pad_id (>= V), Xout [V,k2] out-role
    successor coords or None. Input tables get Vi = pad_id + 1 rows, PAD (and any extra id) rows zero.
    """
    V, k = X.shape
    Vi = int(pad_id) + 1
    Xi = np.zeros((Vi, k))
    Xi[:V] = X
    O = np.zeros((Vi, k), np.float32)
    O[:V] = offsets_transported(np.asarray(X, np.float64), nbr)  # [V,k]
    t = {"X": Xi.astype(np.float32), "Q": frame_rotations(Xi), "O": O, "nbr": np.asarray(nbr, np.int32),
         "pad_id": int(pad_id), "n_succ": int(n_succ)}
    if Xout is not None:
        Xo = np.zeros((Vi, Xout.shape[1]), np.float32)
        Xo[:V] = Xout
        t["Xout"] = Xo
    return t


def featurize(kind, ctx, tables):
    """Dense frozen features x [B,F] float32 for context ids ctx [B,C] (see module docstring)."""
    B, C = ctx.shape
    if kind == "none":
        return np.zeros((B, 0), np.float32)
    if kind == "abs":
        return tables["X"][ctx].reshape(B, -1)  # [B,C,k] -> [B,C*k]
    if kind == "successor":
        n = tables["n_succ"]
        return tables["Xout"][ctx[:, C - n:]].reshape(B, -1)  # [B,n,k] -> [B,n*k]
    Q = tables["Q"][ctx[:, -1]]  # [B,k,k] frame of the current token
    xr = np.matmul(tables["X"][ctx], Q.transpose(0, 2, 1))  # [B,C,k] @ [B,k,k] -> [B,C,k] = Q x
    if kind == "rot":
        return xr.reshape(B, -1)
    if kind == "rot_nbrs":
        orr = np.matmul(tables["O"][ctx], Q.transpose(0, 2, 1))  # [B,C,k]
        return np.concatenate([xr, orr], axis=2).reshape(B, -1)  # [B,C,2k] -> [B,2Ck]
    raise ValueError(f"unknown feature kind {kind!r}; one of {MLP_FEATURES}")


def feature_width(kind, C, k, n_succ=0, k_succ=0):
    return {"none": 0, "abs": C * k, "rot": C * k, "rot_nbrs": 2 * C * k, "successor": n_succ * k_succ}[kind]


# ---------------------------------------------------------------- model catalogue

# name: (kind, features, n_ids, full attention, frozen table set)
MODELS = {
    "trigram": ("mlp", "none", 2, False, "sym"),
    "neural_bigram": ("mlp", "none", 1, False, "sym"),
    "geo_abs": ("mlp", "abs", 0, False, "sym"),
    "geo_rot": ("mlp", "rot", 0, False, "sym"),
    "geo_rot_nbrs": ("mlp", "rot_nbrs", 0, False, "sym"),
    "hybrid": ("mlp", "abs", 2, False, "sym"),
    "geo_shuffled": ("mlp", "abs", 0, False, "sym_shuffled"),
    "geo_successor": ("mlp", "successor", 0, False, "succ"),
    "geo_successor_shuffled": ("mlp", "successor", 0, False, "succ_shuffled"),
    "hybrid_successor": ("mlp", "successor", 2, False, "succ"),
    "hybrid_successor_shuffled": ("mlp", "successor", 2, False, "succ_shuffled"),
    "geo_attention": ("attn", "none", 0, False, "sym"),
    "geo_attention_full": ("attn", "none", 0, True, "sym"),
}


@dataclass(frozen=True)
class GeoModelConfig:
    """One trained geometric model's shape. Vi = input ids (classes + PAD), V = classes, H = hidden = d (--dim),
    C = context (--context), k = coordinate dim (--coord-dim), n_succ / k_succ = --successor-context / -dim."""

    name: str
    Vi: int
    V: int
    H: int = 64
    C: int = 8
    k: int = 3
    n_succ: int = 2
    k_succ: int = 32

    def __post_init__(self):
        if self.name not in MODELS:
            raise ConfigError(f"unknown geometric model {self.name!r}; choose from {', '.join(MODELS)}")
        for flag, dest in (("dim", "H"), ("context", "C"), ("coord_dim", "k"), ("successor_dim", "k_succ"),
                           ("successor_context", "n_succ")):
            require(getattr(self, dest) >= 1, flag, f"must be >= 1, got {getattr(self, dest)}")
        require(self.V >= 1 and self.Vi > self.V, "vocab_size",
                f"needs V >= 1 classes and Vi > V input ids (PAD after the classes), got V={self.V}, Vi={self.Vi}")
        reads = max(self.n_succ if self.features == "successor" else 0, self.n_ids)
        require(self.C >= reads, "context", f"{self.name} reads the last {reads} context tokens, got {self.C}")

    @property
    def kind(self):
        return MODELS[self.name][0]

    @property
    def features(self):
        return MODELS[self.name][1]

    @property
    def n_ids(self):
        return MODELS[self.name][2]

    @property
    def full(self):
        return MODELS[self.name][3]

    @property
    def table_set(self):
        return MODELS[self.name][4]

    @property
    def F(self):
        return feature_width(self.features, self.C, self.k, self.n_succ, self.k_succ)


def param_shapes(cfg):
    """Nested shapes of one model's parameters."""
    if cfg.kind == "attn":
        return geo_attention.param_shapes(cfg.Vi, cfg.H, cfg.H, cfg.V, cfg.C, cfg.full)
    return geo_mlp.param_shapes(cfg.F, cfg.n_ids, cfg.Vi, cfg.H, cfg.V)


def init_params(cfg, rng, dtype=np.float32):
    """-> (spec, theta [spec.size] dtype): Glorot / normal weights drawn from rng, zero biases."""
    spec = ParamSpec(param_shapes(cfg))
    theta = spec.zeros(dtype)
    init = geo_attention.init_ if cfg.kind == "attn" else geo_mlp.init_
    init(spec.views(theta), rng)
    return spec, theta


def forward(p, ctx, cfg, tables):
    """ctx [B,C] int context ids -> (logits [B,V] in p's dtype, cache)."""
    if cfg.kind == "attn":
        logits, cache = geo_attention.forward(p, ctx, tables["nbr"], tables["pad_id"], cfg.full)
        return logits, (cfg.kind, cache, cache[-1])
    x = featurize(cfg.features, ctx, tables)
    dt = p["fc2"]["w"].dtype
    if x.dtype != dt:
        x = x.astype(dt)
    rows = geo_mlp.lookup_rows(ctx[:, ctx.shape[1] - cfg.n_ids:], cfg.F, cfg.Vi)  # [B,J]
    logits, cache = geo_mlp.forward(p, x, rows)
    return logits, (cfg.kind, cache, cache)


def backward(dlogits, cache, xent=None):
    """dlogits [B,V] -> dp nested like p (row-lookup tables as RowGrad); xent=(r, y) from xent_factors means
    dlogits holds e and the upstream gradient is r[:,None] * e - onehot(y) / B (see geo_mlp)."""
    kind, inner, _ = cache
    if kind == "attn":
        return geo_attention.backward(dlogits, inner, xent=xent)
    return geo_mlp.backward(dlogits, inner, xent=xent)[1]


def loss_and_grads(theta, grad, batch, cfg, spec, tables):
    """batch = (ctx [B,C] int, y [B] int) -> (mean cross-entropy, {"n": B}); grad = d loss / d theta."""
    ctx, y = batch
    grad[...] = 0.0
    logits, cache = forward(spec.views(theta), ctx, cfg, tables)
    loss, r = xent_factors(logits, y, geo_mlp.refill(cache[2]))  # logits -> e
    accumulate(spec.views(grad), backward(logits, cache, xent=(r, y)))
    return loss, {"n": len(y)}


def eval_nll(theta, batch, cfg, spec, tables):
    """-> (summed float64 NLL over the batch, n)."""
    ctx, y = batch
    logits, cache = forward(spec.views(theta), ctx, cfg, tables)
    nll = nll_rows(logits, y, overwrite=True, refill=geo_mlp.refill(cache[2]))
    return float(nll.sum()), int(len(y))
