"""Riemannian neural-ODE language model: Transformer encoder -> dz/dt = g(z)^-1 f(z) -> LayerNorm -> head.

B batch . T time . D model (= d) . H heads . V vocab . R metric rank (= r) . S ODE steps . N = B*T tokens

API (what other modules call)
    cfg = RiemannConfig(dim=..., rank=..., n_vocab=tok.V, ...)   frozen, validated (ConfigError names the flag)
    spec, theta = init_params(cfg, rng)                          flat float32 buffer + ParamSpec
    p = spec.views(theta)
    logits, out, cache = forward(p, ids, cfg)                    ids int [B,T] -> logits [N,V]; out: z0, zT, traj, aux
    Input ids lie in [0, V] (V = the tokenizer's PAD, input only: wte has V+1 rows); targets in [0, V) or -1.
    loss, stats, cache = loss_forward(p, ids, targets, cfg);  dp = loss_backward(cache)
    loss, stats = loss_and_grads(theta, grad, batch, cfg, spec)  batch = (ids [B,T], targets [B,T]); fills grad
    nll, n = eval_nll(theta, batch, cfg, spec)                   float64 summed NLL over targets != -1
    logits = logits_last(p, ids, cfg)                            [B,V] at the last position only (generation)
    fld = field_eval(z, p, cfg)                                  f, v = g^-1 f, U, logdet parts at points z [N,D]
    zT, traj, aux, cache = flow(z0, p, cfg)                      the ODE alone on z0 [N,D] (traj [S+1,N,D])
    logits, cache = head_forward(zT, p, cfg)                     LN + head on z [N,D] -> [N,V]
    field_forward(z, p, cfg) / field_backward(ddz, daux, cache)  the ODE field (geolm.ops.ode protocol via partial)

Model (spec 1.2-1.5). Per position, z0 = encoder(ids) (token + learned positions, causal pre-LN blocks),
    dz/dt = v(z) = g(z)^-1 f(z),   g(z) = eps I + alpha U(z)^T U(z),   U(z) = MLP_U(z) reshaped [R,D]
integrated by classical RK4 with S fixed steps on [0, 1] (geolm.ops.ode, discrete adjoint), then
    logits = LN(z_T) W_head + b   (W_head = wte^T when tied).
With K = eps I_R + alpha U U^T (never a D x D matrix):
    v = (f - alpha U^T K^-1 U f) / eps,   log det g = (D - R) log eps + log det K      (geolm.ops.metric)
Loss = CE + lambda_field * mean_tok sum_stages |f|^2 + lambda_metric * mean_{tok,stage} (log det g)^2
(metric_penalty="batch_mean": lambda_metric * (mean_{tok,stage} log det g)^2 instead).
Controls: metric="identity" (g = I, v = f: a Euclidean neural ODE, no U-MLP), no_ode=True (z_T = z0: the
plain Transformer), metric="dense" (forms g [N,D,D], np.linalg.solve/slogdet, backward through the dense
inverse: the original's algorithm, kept only as a benchmark/test baseline).
Init: f-MLP last layer zero (the flow starts as the identity map), U-MLP last layer x0.01 (g ~ eps I).
"""
import dataclasses
import functools
import math
import sys

import numpy as np

from ..ops.activations import gelu_backward, gelu_forward
from ..core.config import opt, positive, require
from ..core.errors import ConfigError, NumericalError
from ..ops.layernorm import layernorm_backward, layernorm_forward
from ..ops.linear import linear_backward, linear_forward
from ..ops.losses import nll_sum, xent_backward, xent_forward
from ..ops.mlp import mlp_forward, mlp_init_, mlp_shapes
from ..ops.ode import rk4_backward, rk4_forward
from ..core.params import ParamSpec, accumulate
from ..ops.transformer import encoder_backward, encoder_forward, encoder_init_, encoder_shapes

METRICS = ("lowrank", "identity", "dense")
PENALTIES = ("point", "batch_mean")
# fields that only mean something when the ODE runs; the CLI rejects --no-ode given together with any of them
ODE_FIELDS = ("rank", "eps", "alpha", "hidden", "field_hidden", "ode_steps", "lambda_field", "lambda_metric",
              "metric", "metric_penalty")


@dataclasses.dataclass(frozen=True)
class RiemannConfig:
    """Architecture and loss of the Riemannian ODE LM (training/data flags live elsewhere)."""
    vocab_size: int = opt(4096, "BPE vocabulary size (the model keeps tokens seen >= 5 times, at most this many "
                                "incl. EOS and UNK)")
    dim: int = opt(128, "model width d (embeddings, encoder, ODE state)")
    layers: int = opt(2, "Transformer encoder blocks")
    heads: int = opt(4, "attention heads (must divide --dim)")
    ff_mult: int = opt(4, "encoder feed-forward hidden = ff_mult * dim")
    seq_len: int = opt(128, "context length T (learned positions)")
    rank: int = opt(16, "metric rank r (1 <= r <= dim)")
    eps: float = opt(0.1, "base stiffness eps of g = eps I + alpha U^T U (> 0)")
    alpha: float = opt(1.0, "scale alpha of the low-rank part (>= 0)")
    hidden: int = opt(64, "U-MLP hidden width h_U (d -> h_U -> r*d)")
    field_hidden: int = opt(256, "f-MLP hidden width h_f (d -> h_f -> d)")
    ode_steps: int = opt(4, "fixed RK4 steps on [0, 1]")
    lambda_field: float = opt(1e-3, "weight of mean_tok sum_stages |f|^2")
    # 1e-6, not spec 1.3's 1e-5: at eps 0.1 the 1e-5 penalty (0.87 nats at init) drives log det g from -295 to ~-15
    # within ~40 steps and the model ends at val ppl 117 vs 79 for g = I (400 steps); 1e-6 keeps the volume term
    # and trains to 70.3 (README "Riemannian neural-ODE LM" has the runs and the alpha = 0 control).
    lambda_metric: float = opt(1e-6, "weight of the (log det g)^2 penalty")
    metric_penalty: str = opt("point", "(log det g)^2 per point, or the squared batch mean", choices=PENALTIES)
    metric: str = opt("lowrank", "metric: lowrank (Woodbury), identity (g = I control), dense (benchmark baseline)",
                      choices=METRICS)
    no_ode: bool = opt(False, "skip the ODE (z_T = z0): the plain-Transformer control")
    tie_head: bool = opt(True, "tie the output head to the token embedding")
    n_vocab: int = opt(0, "model vocabulary size (set from the tokenizer)", flag=False)

    def __post_init__(self):
        positive(self, "vocab_size", "dim", "layers", "heads", "ff_mult", "seq_len", "hidden", "field_hidden",
                 "ode_steps")
        require(self.dim % self.heads == 0, "heads", f"must divide --dim {self.dim}, got {self.heads}")
        require(self.eps > 0 and math.isfinite(self.eps), "eps", f"must be > 0, got {self.eps}")
        require(self.alpha >= 0 and math.isfinite(self.alpha), "alpha", f"must be >= 0, got {self.alpha}")
        if not self.no_ode:  # the plain-Transformer control ignores every metric/ODE field
            require(1 <= self.rank <= self.dim, "rank", f"must be in [1, --dim={self.dim}], got {self.rank}; "
                    f"lower --rank or raise --dim")
        require(self.lambda_field >= 0, "lambda_field", f"must be >= 0, got {self.lambda_field}")
        require(self.lambda_metric >= 0, "lambda_metric", f"must be >= 0, got {self.lambda_metric}")
        require(self.metric in METRICS, "metric", f"choose one of {', '.join(METRICS)}, got {self.metric!r}")
        require(self.metric_penalty in PENALTIES, "metric_penalty",
                f"choose one of {', '.join(PENALTIES)}, got {self.metric_penalty!r}")
        require(self.n_vocab >= 0, "vocab_size", f"model vocabulary must be >= 0, got {self.n_vocab}")
        if self.no_ode and self.metric != "lowrank":
            raise ConfigError(f"--no-ode contradicts --metric {self.metric}: the plain Transformer has no ODE or "
                              f"metric; drop one of the two")

    @property
    def V(self):
        """Model vocabulary (n_vocab once set from the tokenizer, else vocab_size)."""
        return self.n_vocab or self.vocab_size


# ---------------------------------------------------------------------------------------------------------------
# parameters

def field_shapes(cfg):
    """{"f": mlp D->h_f->D, "U": mlp D->h_U->R*D (lowrank/dense only)}."""
    D = cfg.dim
    shapes = {"f": mlp_shapes(D, cfg.field_hidden, D)}
    if cfg.metric != "identity":
        shapes["U"] = mlp_shapes(D, cfg.hidden, cfg.rank * D)
    return shapes


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


# ---------------------------------------------------------------------------------------------------------------
# the dense metric (benchmark/test baseline; forms D x D matrices on purpose)

def dense_metric_forward(U, f, eps, alpha):
    """U [N,R,D], f [N,D] -> (v = g^-1 f [N,D], logdet g [N], cache), g = eps I + alpha U^T U formed densely."""
    D = f.shape[-1]
    g = alpha * np.matmul(U.transpose(0, 2, 1), U)  # [N,D,R] @ [N,R,D] -> [N,D,D]
    g += eps * np.eye(D, dtype=f.dtype)
    sign, logdet = np.linalg.slogdet(g)  # [N]
    if not np.all(sign > 0):
        raise NumericalError(f"dense metric not positive definite (eps={eps}, alpha={alpha}, max |U|="
                             f"{float(np.abs(U).max()):.3g}); raise --eps or lower --alpha")
    v = np.linalg.solve(g, f[..., None])[..., 0]  # [N,D,D] \ [N,D,1] -> [N,D]
    return v, logdet.astype(f.dtype), (U, g, v, alpha)


def dense_metric_backward(dv, dlogdet, cache):
    """-> (dU [N,R,D], df [N,D]) via the dense inverse: y = g^-1 dv; dg = -y v^T + dlogdet g^-1."""
    U, g, v, alpha = cache
    ginv = np.linalg.inv(g)  # [N,D,D] (symmetric)
    y = np.matmul(ginv, dv[..., None])[..., 0]  # [N,D]; v = g^-1 f  =>  df = g^-T dv
    dg = -y[:, :, None] * v[:, None, :]  # [N,D,D]
    if dlogdet is not None:
        dg += dlogdet[:, None, None] * ginv  # d log det g / dg = g^-T
    # g = eps I + alpha U^T U  =>  dU = alpha U (dg + dg^T)
    dU = alpha * np.matmul(U, dg + dg.transpose(0, 2, 1))  # [N,R,D] @ [N,D,D] -> [N,R,D]
    return dU, y


def _metric_ops(cfg):
    if cfg.metric == "dense":
        return dense_metric_forward, dense_metric_backward
    from ..ops.metric import metric_solve_backward, metric_solve_forward
    return metric_solve_forward, metric_solve_backward


# ---------------------------------------------------------------------------------------------------------------
# the field z -> g(z)^-1 f(z)  (geolm.ops.ode protocol; bind cfg with functools.partial)
#
# The field runs over blocks of FIELD_BLOCK tokens: per block the f-MLP, the U-MLP and the metric solve run back
# to back. No [N, R*D] array (600 MB at N 6144) is allocated per call: the U-MLP output of a block (FIELD_BLOCK x
# R x D floats, 50 MB at R 64, D 384) and its dU come from a pool of reused buffers, since fresh arrays that large
# are mmapped and their first-touch page faults cost ~10-20% of a training step. Weight gradients are summed over
# blocks in place. Same mathematics; only the float32 summation order of the weight gradients depends on the
# block size. 512 tokens: the U-MLP GEMMs (inner size 128, or the block size for dW) lose a few % at 256.

FIELD_BLOCK = 512
SCRATCH_MAX_BYTES = 4 << 30  # the pool below never holds more than this


_SCRATCH = []  # 1-D buffers handed out as views by _scratch; reused once no live array refers to them


def _scratch(shape, dtype):
    """An uninitialised C-contiguous array [shape], reusing a pooled buffer that no live array views.

    The U-MLP blocks (50 MB each, 4 x N/FIELD_BLOCK of them live in the adjoint's cache) would otherwise be
    fresh heap/mmap memory every RK4 step, paid again in first-touch page faults. A buffer is free when the
    pool holds the only reference (every view of it keeps its base alive), so caches stay valid however long
    they are kept: this is an allocator, not shared state."""
    n, dt = math.prod(shape), np.dtype(dtype)
    for buf in _SCRATCH:
        if buf.size == n and buf.dtype == dt and sys.getrefcount(buf) == 3:  # the pool, `buf`, the argument
            return buf.reshape(shape)
    buf = np.empty(n, dt)
    if sum(b.nbytes for b in _SCRATCH) + buf.nbytes <= SCRATCH_MAX_BYTES:
        _SCRATCH.append(buf)
    return buf.reshape(shape)


def _gemm_acc(a, b, c):
    """c += a^T b: a [M,I], b [M,O], c [I,O]. (NumPy's BLAS into a pooled temporary, then an add: measured
    faster than SciPy's gemm with beta = 1, 97 vs 72 GFLOP/s for the U-MLP's [128,512] @ [512,24576].)"""
    c += np.matmul(a.T, b, out=_scratch(c.shape, c.dtype))  # [I,M] @ [M,O] -> [I,O]


def _fc2_augmented(p):
    """[W2; b2] [F+1,O] in a pooled buffer: with a column of ones appended to the hidden activations, the
    U-MLP's bias rides in its GEMM and db2 in the dW2 GEMM (measured 28.8 vs 31.5 ms for [512,128] @ [128,24576]
    plus the separate bias pass over the 50 MB output)."""
    w, b = p["fc2"]["w"], p["fc2"]["b"]
    wb = _scratch((w.shape[0] + 1, w.shape[1]), w.dtype)
    wb[:-1] = w
    wb[-1] = b
    return wb


def _mlp_block_forward(x, p, wb=None):
    """GELU MLP x [n,I] -> (y [n,O], cache); the same function as geolm.ops.mlp.mlp_forward(x, p).
    wb = _fc2_augmented(p) (the U-MLP): y = [a, 1] @ [W2; b2] into a pooled buffer."""
    h, _ = linear_forward(x, **p["fc1"])  # [n,I] -> [n,F]
    a, ca = gelu_forward(h)  # [n,F]
    if wb is None:
        y = np.matmul(a, p["fc2"]["w"])  # [n,F] -> [n,O]
        y += p["fc2"]["b"]
        return y, (x, ca, a, p)
    n, F = a.shape
    a1 = _scratch((n, F + 1), a.dtype)
    a1[:, :F] = a
    a1[:, F] = 1.0
    y = np.matmul(a1, wb, out=_scratch((n, wb.shape[1]), a.dtype))  # [n,F+1] @ [F+1,O] -> [n,O]
    return y, (x, ca, a1, p)


def _mlp_block_backward(dy, cache, dp):
    """-> dx [n,I]; adds the weight gradients into dp (same nesting as p) in place."""
    x, ca, a, p = cache
    w2 = p["fc2"]["w"]
    # y = a W2 + b2
    if a.shape[1] == w2.shape[0]:
        _gemm_acc(a, dy, dp["fc2"]["w"])  # dW2 += a^T dy
        dp["fc2"]["b"] += dy.sum(axis=0)
    else:  # a = [a, 1]: [dW2; db2] = [a, 1]^T dy
        g = np.matmul(a.T, dy, out=_scratch((a.shape[1], dy.shape[1]), dy.dtype))  # [F+1,n] @ [n,O] -> [F+1,O]
        dp["fc2"]["w"] += g[:-1]
        dp["fc2"]["b"] += g[-1]
    da = np.matmul(dy, w2.T)  # [n,O] @ [O,F] -> [n,F]
    dh = gelu_backward(da, ca)  # a = gelu(h)
    # h = x W1 + b1
    _gemm_acc(x, dh, dp["fc1"]["w"])
    dp["fc1"]["b"] += dh.sum(axis=0)
    return np.matmul(dh, p["fc1"]["w"].T)  # [n,F] @ [F,I] -> [n,I]


def field_forward(z, p, cfg):
    """z [N,D] -> (v [N,D], aux {"f2": |f|^2 [N], "logdet": log det g [N] (not for identity)}, cache)."""
    return _field_blocks(z, p, cfg, keep=True)


def field_forward_nocache(z, p, cfg):
    """field_forward without a cache (the RK4 forward sweep): z [N,D] -> (v [N,D], aux)."""
    v, aux, _ = _field_blocks(z, p, cfg, keep=False)
    return v, aux


def _field_blocks(z, p, cfg, keep):
    N, D = z.shape
    v = np.empty_like(z)  # [N,D]
    aux = {"f2": np.empty(N, z.dtype)}
    lowrank = cfg.metric != "identity"
    if lowrank:
        aux["logdet"] = np.empty(N, z.dtype)
        solve_fwd, _ = _metric_ops(cfg)
    blocks = []
    wb = _fc2_augmented(p["U"]) if lowrank else None
    for lo in range(0, N, FIELD_BLOCK):
        hi = min(N, lo + FIELD_BLOCK)
        zb = z[lo:hi]  # [n,D]
        f, cf = _mlp_block_forward(zb, p["f"])  # [n,D] -> [n,D]
        aux["f2"][lo:hi] = np.einsum("nd,nd->n", f, f)  # |f|^2
        if not lowrank:
            v[lo:hi] = f
            blocks.append((lo, hi, cf, None, None, f) if keep else None)
            continue
        u, cu = _mlp_block_forward(zb, p["U"], wb)  # [n,D] -> [n,R*D]
        U = u.reshape(hi - lo, cfg.rank, D)  # [n,R*D] -> [n,R,D]
        vb, logdet, cm = solve_fwd(U, f, cfg.eps, cfg.alpha)
        v[lo:hi] = vb
        aux["logdet"][lo:hi] = logdet
        if keep:
            blocks.append((lo, hi, cf, cu, cm, f))
    return v, aux, ((blocks, cfg, z.shape, z.dtype, p) if keep else None)


def _zeros_like_tree(p):
    return {k: _zeros_like_tree(a) if isinstance(a, dict) else np.zeros(a.shape, a.dtype) for k, a in p.items()}


def field_backward(ddz, daux, cache):
    """ddz [N,D], daux {name: [N]} (either may be None / missing) -> (dz [N,D], dp like p)."""
    blocks, cfg, shape, dtype, p = cache
    daux = daux or {}
    dl, df2 = daux.get("logdet"), daux.get("f2")
    _, solve_bwd = _metric_ops(cfg)
    dz = np.empty(shape, dtype)  # [N,D]
    dp = _zeros_like_tree(p)  # {"f": ..., "U": ...}; blocks add into it
    for lo, hi, cf, cu, cm, f in blocks:
        dv = ddz[lo:hi] if ddz is not None else np.zeros_like(f)
        if cu is None:  # identity metric: v = f
            df = np.array(dv, dtype=dtype, copy=True)
        else:
            dlb = dl[lo:hi] if dl is not None else None
            if cfg.metric == "dense":
                dU, df = solve_bwd(dv, dlb, cm)  # v = g(U)^-1 f
            else:
                dU, df = solve_bwd(dv, dlb, cm, dU_out=_scratch(cm[1].shape, dtype))  # v = g(U)^-1 f
        if df2 is not None:
            df += (2.0 * df2[lo:hi, None]) * f  # f2 = |f|^2
        dz[lo:hi] = _mlp_block_backward(df, cf, dp["f"])
        if cu is not None:
            dz[lo:hi] += _mlp_block_backward(dU.reshape(hi - lo, -1), cu, dp["U"])  # [n,R,D] -> [n,R*D]
    return dz, dp


def field_eval(z, p, cfg):
    """Diagnostics at points z [N,D]: {"f", "v", "U" (None for identity), "logdet", "logdet_K", "logdet_const"}."""
    f, _ = mlp_forward(z, p["f"])
    if cfg.metric == "identity":
        zero = np.zeros(z.shape[0], dtype=z.dtype)
        return {"f": f, "v": f, "U": None, "logdet": zero, "logdet_K": zero, "logdet_const": 0.0}
    N, D = z.shape
    u, _ = mlp_forward(z, p["U"])
    U = u.reshape(N, cfg.rank, D)
    v, logdet, _ = _metric_ops(cfg)[0](U, f, cfg.eps, cfg.alpha)
    const = (D - cfg.rank) * math.log(cfg.eps)
    return {"f": f, "v": v, "U": U, "logdet": logdet, "logdet_K": logdet - const, "logdet_const": const}


def _fields(cfg):
    return functools.partial(field_forward, cfg=cfg), field_backward


# ---------------------------------------------------------------------------------------------------------------
# the model

def _check_ids(ids, cfg):
    if ids.ndim != 2 or ids.shape[1] > cfg.seq_len or ids.shape[1] < 1:
        raise ConfigError(f"model input must be ids [B,T] with 1 <= T <= --seq-len {cfg.seq_len}, got shape "
                          f"{ids.shape}; crop the context or raise --seq-len")


def flow(z0, p, cfg):
    """z0 [N,D] -> (zT, traj [S+1,N,D], aux {name: [S,4,N]}, ode cache or None)."""
    if cfg.no_ode:
        return z0, z0[None], {}, None
    ff, _ = _fields(cfg)
    return rk4_forward(ff, z0, p["field"], 0.0, 1.0, cfg.ode_steps,
                       field_eval=functools.partial(field_forward_nocache, cfg=cfg))


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


_flow, _head_forward = flow, head_forward  # older private names (geolm.apps.semantic)


def forward(p, ids, cfg):
    """ids int [B,T] -> (logits [N,V], out {"z0","zT" [N,D], "traj" [S+1,N,D], "aux" {name:[S,4,N]}}, cache)."""
    _check_ids(ids, cfg)
    B, T = ids.shape
    h, cenc = encoder_forward(ids, p["enc"], cfg.heads)  # [B,T] -> [B,T,D]
    z0 = h.reshape(B * T, cfg.dim)  # [B,T,D] -> [N,D]
    zT, traj, aux, code = flow(z0, p, cfg)
    logits, chead = head_forward(zT, p, cfg)
    out = {"z0": z0, "zT": zT, "traj": traj, "aux": aux}
    return logits, out, (cenc, code, chead, (B, T), cfg)


def backward(dlogits, daux, cache):
    """dlogits [N,V], daux {name: [S,4,N]} or None -> dp (nested like p; tied wte gets both gradients)."""
    cenc, code, chead, (B, T), cfg = cache
    dzT, dp = head_backward(dlogits, chead, cfg)
    if cfg.no_ode:
        dz0 = dzT
    else:
        ff, fb = _fields(cfg)
        dz0, dpfield = rk4_backward(dzT, None, daux or None, code, ff, fb)
        dp["field"] = dpfield
    dpenc = encoder_backward(dz0.reshape(B, T, cfg.dim), cenc)  # z0 = h.reshape(N, D)
    if "enc" in dp:  # tied head: wte is both the embedding and the output matrix
        dpenc["wte"][:cfg.V] += dp["enc"]["wte"]
    dp["enc"] = dpenc
    return dp


def penalties(aux, cfg):
    """-> (field penalty, metric penalty, daux {name: [S,4,N]} = d(penalties)/d aux)."""
    daux, pen_f, pen_m = {}, 0.0, 0.0
    if "f2" in aux:
        f2 = aux["f2"]  # [S,4,N]
        N = f2.shape[-1]
        pen_f = cfg.lambda_field * float(np.sum(f2, dtype=np.float64)) / N
        daux["f2"] = np.full_like(f2, cfg.lambda_field / N)
    if "logdet" in aux:
        ld = aux["logdet"]  # [S,4,N]
        m = ld.size
        if cfg.metric_penalty == "point":
            pen_m = cfg.lambda_metric * float(np.sum(np.square(ld, dtype=np.float64))) / m
            daux["logdet"] = (2.0 * cfg.lambda_metric / m) * ld
        else:
            mean = float(np.mean(ld, dtype=np.float64))
            pen_m = cfg.lambda_metric * mean * mean
            daux["logdet"] = np.full_like(ld, 2.0 * cfg.lambda_metric * mean / m)
    return pen_f, pen_m, daux


def loss_forward(p, ids, targets, cfg):
    """ids, targets int [B,T] (target -1 = ignored) -> (loss float, stats dict, cache)."""
    logits, out, cache = forward(p, ids, cfg)
    ce, cx = xent_forward(logits, np.asarray(targets).reshape(-1))
    pen_f, pen_m, daux = penalties(out["aux"], cfg)
    stats = {"ce": ce, "pen_field": pen_f, "pen_metric": pen_m, "n": int(cx[3])}
    if "logdet" in out["aux"]:
        stats["train_logdet"] = float(np.mean(out["aux"]["logdet"], dtype=np.float64))
    return ce + pen_f + pen_m, stats, (cache, cx, daux)


def loss_backward(cache):
    """-> dp, the gradient of loss_forward's loss (nested like p)."""
    cfwd, cx, daux = cache
    dlogits = xent_backward(1.0, cx)  # loss = CE + penalties(aux)
    return backward(dlogits, daux, cfwd)


def loss_and_grads(theta, grad, batch, cfg, spec):
    """batch = (ids [B,T], targets [B,T]) -> (loss, stats); zeroes grad and fills it with d loss / d theta."""
    ids, targets = batch
    loss, stats, cache = loss_forward(spec.views(theta), ids, targets, cfg)
    dp = loss_backward(cache)
    grad[...] = 0.0
    accumulate(spec.views(grad), dp)
    return loss, stats


def eval_nll(theta, batch, cfg, spec):
    """-> (summed NLL in float64, number of targets) over targets != -1."""
    ids, targets = batch
    logits, _, _ = forward(spec.views(theta), ids, cfg)
    return nll_sum(logits, np.asarray(targets).reshape(-1))


def logits_last(p, ids, cfg):
    """ids [B,T] -> logits [B,V] of the next token after each row (the ODE runs on the last position only)."""
    _check_ids(ids, cfg)
    h, _ = encoder_forward(ids, p["enc"], cfg.heads)  # [B,T,D]
    z0 = np.ascontiguousarray(h[:, -1])  # [B,D]
    zT = flow(z0, p, cfg)[0]
    return head_forward(zT, p, cfg)[0]
