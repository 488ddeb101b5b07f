"""Geometric token-coordinate LMs (spec 2.9): one ReLU MLP over frozen coordinates and/or one-hot ids.

B batch . C context (8) . k coordinate dim . F dense feature width . J one-hot id slots . Vi input vocab
(classes + PAD) . H hidden (--dim) . V output classes (incl. UNK)

Every MLP model is MLP(F + J*Vi -> H -> V, ReLU) over [x (F frozen floats) + one-hot(id_1) + ... + one-hot(id_J)];
the one-hot blocks are row lookups of the first-layer weight, never a one-hot matmul:
    pre = x W1[:F] + sum_j W1[F + j*Vi + id_j] + b1;   h = relu(pre);   logits = h W2 + b2
    backward: dW2 = h^T dlogits; db2 = sum_B dlogits; dpre = (dlogits W2^T) * [pre > 0];
              dW1[:F] = x^T dpre; dW1[F + j*Vi + id_j] += dpre (scatter-add); db1 = sum_B dpre
Frozen features, computed per batch from per-token tables (X: symmetric PPMI coords, PAD row 0):
    abs        x = X[c_1] + ... + X[c_C]                               (+ = concatenation; C*k floats)
    rot        x = Q_t X[c_j], j = 1..C, Q_t = R(X[t] -> e_k)          (rotation into the current token's frame)
    rot_nbrs   x = Q_t X[c_j] + Q_t O[c_j],  O_v = sum_{u in N(v)} R(x_u -> x_v)(x_u - x_v)   (2*C*k floats)
    successor  x = Xout[c_{C-n+1}] + ... + Xout[c_C]                   (directed-PPMI out-role coords)
R(a -> b) = I + A + A^2/(1 + a.b), A = b a^T - a b^T (any k; geolm.geometry.rotation, spec 2.6). Coordinates are frozen,
so the features are computed once per batch from the tables and need no backward.
Loss: softmax cross-entropy in place on the logits buffer, in implicit form (`xent_factors`): the backward folds
the row normaliser and the one-hot into its small operands; fc2's bias rides in the GEMM ([h, 1] @ [W2; b2]).
"""
from dataclasses import dataclass

import numpy as np

from ..ops.embedding import _embedding_backward_nb
from ..core.errors import ConfigError
from ..ops.expsum import exp_rows
from ..core.jit import njit
from ..ops.mlp import mlp_init_, mlp_shapes
from ..geometry.rotation import offsets_transported, pole, rotation_matrix

MLP_FEATURES = ("none", "abs", "rot", "rot_nbrs", "successor")


# ---------------------------------------------------------------- loss

_SAFE_EXP = 60.0  # |row max| below this: exp(z) neither overflows nor underflows the row sum, no shift needed


def _shift(logits):
    """Per-row shift c [B,1] (0 when every row max is within +-60, else the row max) for exp(logits - c)."""
    m = logits.max(axis=1, keepdims=True)  # [B,1]
    if np.all(np.abs(m) < _SAFE_EXP):  # also False for NaN rows: they get shifted (and stay NaN)
        return None
    return m


def _exp_rows(z, refill=None):
    """z [B,V] -> exp(z - c) IN PLACE; -> (row sums s [B], shift c [B,1] or None).

    With refill (a function that writes the original z back into the buffer), exp runs first without a shift:
    float32 through geolm.ops.expsum (one vectorised pass, float64 sums, entries below -87 flushed to 0), else NumPy;
    when no entry was NaN or above 88 (float32) and every row sum lies in (1e-30, dtype max) no max pass is needed;
    otherwise (rare: a row max beyond ~+88 or below ~-69, or NaN) z is refilled and the shifted path runs."""
    if refill is not None:
        if z.dtype == np.float32 and z.flags.c_contiguous:
            s, bad = exp_rows(z)
        else:
            with np.errstate(over="ignore", under="ignore"):  # overflow is detected below and handled by the refill
                np.exp(z, out=z)
                s = z.sum(axis=1)
            bad = 0
        if not bad and np.all(np.isfinite(s)) and s.min() > 1e-30 and s.max() < np.finfo(z.dtype).max:
            return s, None
        refill(z)
    c = _shift(z)
    if c is not None:
        z -= c
    np.exp(z, out=z)
    return z.sum(axis=1), c


def xent_factors(logits, y, refill=None):
    """Mean softmax cross-entropy in implicit form; OVERWRITES logits [B,V] with e = exp(logits - c).

    -> (loss float, r [B]) with dloss/dlogits = r[:,None] * e - onehot(y) / B,  r = 1 / (B sum_v e).
    Two or three passes over [B,V] (exp, row sums; a max pass unless refill is given, see `_exp_rows`), none for
    scaling: the backward folds r and the one-hot into its [B,H] operands (`mlp_lm_backward_into`)."""
    B = logits.shape[0]
    zy = logits[np.arange(B), y].astype(np.float64)  # [B] target logit
    s, c = _exp_rows(logits, refill)
    if c is not None:
        zy -= c[:, 0]
    loss = float(np.sum(np.log(s.astype(np.float64)) - zy)) / B
    return loss, (1.0 / (s * B)).astype(logits.dtype)


def xent_inplace(logits, y):
    """Mean softmax cross-entropy; OVERWRITES logits [B,V] with dloss/dlogits. -> (loss float, dlogits)."""
    B = logits.shape[0]
    loss, r = xent_factors(logits, y)
    logits *= r[:, None]  # softmax / B
    logits[np.arange(B), y] -= 1.0 / B
    return loss, logits


def nll_rows(logits, y, overwrite=False, refill=None):
    """Per-row NLL in float64 [B] from logits [B,V] (row sums in the logits' dtype, pairwise).

    overwrite=True reuses the logits buffer (2-3 passes, no [B,V] temporaries); refill: see `_exp_rows`."""
    z = logits if overwrite else logits.copy()
    zy = z[np.arange(z.shape[0]), y].astype(np.float64)  # [B]
    s, c = _exp_rows(z, refill if overwrite else None)
    if c is not None:
        zy -= c[:, 0]
    return np.log(s.astype(np.float64)) - zy


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


# ---------------------------------------------------------------- MLP over features + row lookups

def mlp_lm_shapes(F, J, Vi, H, V):
    """MLP(F + J*Vi -> H -> V): fc1.w rows [0, F) dense, then J one-hot blocks of Vi rows."""
    return mlp_shapes(F + J * Vi, H, V)


def mlp_lm_init_(p, rng):
    mlp_init_(p, rng)


def lookup_rows(ids, F, Vi):
    """Row indices into fc1.w for one-hot slots: ids [B,J] -> [B,J] int64 (F + j*Vi + id)."""
    return F + np.arange(ids.shape[1], dtype=np.int64) * Vi + ids


def _stacked(w, b):
    """[w; b] as one [H+1,V] array: a view when b directly follows w in memory (flat parameter buffers), else a copy.
    -> (wb, is_view)."""
    H, V = w.shape
    if (w.flags.c_contiguous and b.flags.c_contiguous and b.dtype == w.dtype and b.shape == (V,)
            and b.__array_interface__["data"][0] == w.__array_interface__["data"][0] + w.nbytes):
        return np.lib.stride_tricks.as_strided(w, shape=(H + 1, V), strides=w.strides), True
    return np.concatenate([w, b[None]], axis=0), False


def mlp_lm_forward(x, rows, p):
    """x [B,F] float (F may be 0), rows [B,J] int fc1.w row ids -> (logits [B,V], cache).

    The bias of fc2 rides in the GEMM: logits = [h, 1] @ [W2; b2]."""
    w1, b1 = p["fc1"]["w"], p["fc1"]["b"]
    w2b, _ = _stacked(p["fc2"]["w"], p["fc2"]["b"])  # [H+1,V]
    B, F = x.shape
    H = w1.shape[1]
    ha = np.empty((B, H + 1), w1.dtype)  # [B,H+1] = [pre | 1]
    pre = ha[:, :H]
    if F:
        np.matmul(x, w1[:F], out=pre)  # [B,F] @ [F,H] -> [B,H]
    else:
        pre[...] = 0.0
    for j in range(rows.shape[1]):
        pre += np.take(w1, rows[:, j], axis=0)  # [B,H] row lookups = one-hot @ W1 block
    pre += b1
    ha[:, H] = 1.0
    np.maximum(ha, 0.0, out=ha)  # relu (the ones column stays 1)
    logits = np.matmul(ha, w2b)  # [B,H+1] @ [H+1,V] -> [B,V]
    return logits, (x, rows, ha, w1, w2b)


def _refill(cache):
    """z -> the logits of `mlp_lm_forward` again, written into z (for `_exp_rows`): [h, 1] @ [W2; b2]."""
    return lambda z: np.matmul(cache[2], cache[4], out=z)


def mlp_lm_backward_into(dlogits, cache, dp, need_dx=False, r=None, y=None):
    """Fill ZEROED grad views dp (p's nesting); returns dx [B,F] if need_dx (frozen features need none), else None.

    The upstream gradient is G = dlogits, or with (r, y) from `xent_factors` the implicit
    G = r[:,None] * dlogits - onehot(y) / B (dlogits = e then): the row scale goes onto the [B,H+1] operands and the
    one-hot term is a B-column gather / scatter, so no pass over [B,V] is spent on it."""
    x, rows, ha, w1, w2b = cache
    B, F = x.shape
    H = ha.shape[1] - 1
    # logits = ha W2b:  dW2b = ha^T G;  dha = G W2b^T
    hs = ha if r is None else ha * r[:, None]  # [B,H+1]
    dwb, view = _stacked(dp["fc2"]["w"], dp["fc2"]["b"])
    np.matmul(hs.T, dlogits, out=dwb)  # [H+1,B] @ [B,V] -> [H+1,V] (row H = db2)
    dpre = np.matmul(dlogits, w2b[:H].T)  # [B,V] @ [V,H] -> [B,H]
    if r is not None:
        dpre *= r[:, None]
    if y is not None:
        inv_b = 1.0 / B
        _col_scatter_sub(dwb, y, ha * inv_b)  # dW2b[:, y_b] -= ha_b / B
        dpre -= w2b[:H, y].T * inv_b  # [B,H]
    if not view:
        dp["fc2"]["w"][...] = dwb[:H]
        dp["fc2"]["b"][...] = dwb[H]
    # h = relu(pre)
    dpre *= ha[:, :H] > 0.0
    dpre.sum(axis=0, out=dp["fc1"]["b"])  # [H]
    dw1 = dp["fc1"]["w"]
    # pre = x W1[:F] + sum_j W1[rows_j]
    if F:
        np.matmul(x.T, dpre, out=dw1[:F])  # [F,B] @ [B,H] -> [F,H]
    for j in range(rows.shape[1]):
        _embedding_backward_nb(dw1, np.ascontiguousarray(rows[:, j]), dpre)  # scatter-add rows
    if not need_dx:
        return None
    return np.matmul(dpre, w1[:F].T) if F else np.zeros_like(x)  # [B,H] @ [H,F] -> [B,F]


def _col_scatter_sub_ref(dw, y, a):
    """dw[:, y_b] -= a_b for b = 1..B (repeated y accumulate): dw [H+1,V], y [B], a [B,H+1]. NumPy reference."""
    np.subtract.at(dw.T, y, a)  # dw.T [V,H+1] view


@njit
def _col_scatter_sub_nb(dw, y, a):
    # dw [H1,V] -= scatter of a [B,H1] into columns y [B] (sequential, so repeated y accumulate)
    B, H1 = a.shape
    for b in range(B):
        c = y[b]
        for h in range(H1):
            dw[h, c] -= a[b, h]


def _col_scatter_sub(dw, y, a):
    _col_scatter_sub_nb(dw, np.ascontiguousarray(y), np.ascontiguousarray(a))


def mlp_lm_backward(dlogits, cache):
    """Pure form: -> (dx [B,F], dp) with freshly allocated grads."""
    _, _, ha, w1, w2b = cache
    dp = {"fc1": {"w": np.zeros_like(w1), "b": np.zeros(w1.shape[1], w1.dtype)},
          "fc2": {"w": np.zeros_like(w2b[:-1]), "b": np.zeros(w2b.shape[1], w2b.dtype)}}
    dx = mlp_lm_backward_into(dlogits, cache, dp, need_dx=True)
    return dx, dp


def mlp_lm_loss_and_grads(p, dp, x, rows, y):
    """Mean xent of the MLP LM; dp = zeroed grad views (filled). -> loss float."""
    logits, cache = mlp_lm_forward(x, rows, p)
    loss, r = xent_factors(logits, y, _refill(cache))
    mlp_lm_backward_into(logits, cache, dp, r=r, y=y)
    return loss



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
    "geo_attention": ("attn", "none", 0, False, "sym"),
    "geo_attention_full": ("attn", "none", 0, True, "sym"),
}


@dataclass(frozen=True)
class GeoModelConfig:
    """One trained geometric model's shape. Vi = input ids (classes + PAD), V = classes, H = hidden = d."""

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


def model_shapes(mc):
    if mc.kind == "attn":
        from .geo_attention import attn_lm_shapes
        return attn_lm_shapes(mc.Vi, mc.H, mc.H, mc.V, mc.C, mc.full)
    return mlp_lm_shapes(mc.F, mc.n_ids, mc.Vi, mc.H, mc.V)


def model_init_(mc, p, rng):
    if mc.kind == "attn":
        from .geo_attention import attn_lm_init_
        return attn_lm_init_(p, rng)
    return mlp_lm_init_(p, rng)


def model_forward(mc, tables, p, ctx):
    """ctx [B,C] int context ids -> (logits [B,V] in p's dtype, cache)."""
    if mc.kind == "attn":
        from .geo_attention import attn_lm_forward
        return attn_lm_forward(ctx, p, tables["nbr"], tables["pad_id"], mc.full)
    x = featurize(mc.features, ctx, tables)
    dt = p["fc2"]["w"].dtype
    if x.dtype != dt:
        x = x.astype(dt)
    rows = lookup_rows(ctx[:, ctx.shape[1] - mc.n_ids:], mc.F, mc.Vi)  # [B,J]
    return mlp_lm_forward(x, rows, p)


def model_backward_into(mc, dlogits, cache, dp, r=None, y=None):
    """Fill zeroed grad views dp; (r, y) = the implicit xent gradient of `xent_factors` (see mlp_lm_backward_into)."""
    if mc.kind == "attn":
        from .geo_attention import attn_lm_backward_into
        return attn_lm_backward_into(dlogits, cache, dp, r=r, y=y)
    mlp_lm_backward_into(dlogits, cache, dp, r=r, y=y)


def model_loss_and_grads(mc, tables, p, dp, ctx, y):
    """Mean xent over the batch; dp = ZEROED grad views (filled with d mean loss / d p). -> loss float."""
    logits, cache = model_forward(mc, tables, p, ctx)
    loss, r = xent_factors(logits, y, _refill(_head_cache(mc, cache)))  # logits -> e
    model_backward_into(mc, logits, cache, dp, r=r, y=y)
    return loss


def _head_cache(mc, cache):
    """The MLP head's cache inside a model's forward cache."""
    return cache[4] if mc.kind == "attn" else cache


def model_nll(mc, tables, p, ctx, y):
    """Summed float64 NLL over the batch -> (nll_sum, n)."""
    logits, cache = model_forward(mc, tables, p, ctx)
    nll = nll_rows(logits, y, overwrite=True, refill=_refill(_head_cache(mc, cache)))
    return float(nll.sum()), int(len(y))
