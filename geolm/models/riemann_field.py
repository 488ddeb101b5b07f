"""The field of the Riemannian ODE LM: z -> v = g(z)^-1 f(z) over blocks of tokens, with its fused block MLP.

N flattened tokens . D model (= d) . R metric rank (= r) . F MLP hidden . I, O MLP in/out . n tokens per block

    f = MLP_f(z) [N,D],  U = MLP_U(z) reshaped [N,R,D],  g = eps I + alpha U^T U,  v = g^-1 f  (geolm.ops.metric)
    aux: "f2" = |f|^2 [N], "logdet" = log det g [N] (not for metric "identity", where v = f and there is no U-MLP)
metric "dense" uses the dense tier of geolm.ops.metric (forms g [n,D,D]: a baseline, not for training).
ODE protocol (geolm.ops.ode): field_forward(z, p, cfg, ...) -> (v, aux, cache); field_backward(ddz, daux, cache)
-> (dz, dp). daux holds only the names that receive a cotangent: without "logdet" the metric backward skips its
log-det term (no K^-1 is formed).

Blocks. The field runs over blocks of FIELD_BLOCK tokens: per block the f-MLP, the U-MLP and the metric solve run
back to back, so no [N, R*D] array is formed; weight gradients are summed over blocks in place (only the float32
summation order of the weight gradients depends on the block size). A block of 512 keeps the U-MLP GEMMs (inner
size h_U, or the block size for dW) large enough for BLAS. The U-MLP's bias rides in its GEMM,
y = [a, 1] @ [W2; b2], and [dW2; db2] = [a, 1]^T dy is one GEMM: no separate pass over the large output.

Workspace. The U-MLP's output blocks (n x R*D, the largest arrays of a training step) and its augmented
activations live in a field cache until its VJP (the RK4 adjoint recomputes one stage's cache right before that
stage's VJP, so one cache is live at a time). Fresh arrays that large are new mmapped memory each time, paid
again in first-touch page faults at every evaluation. A FieldWorkspace, created by the caller and passed in, owns
reusable buffers in named slots instead (one set: N x R*D for the blocks of one cache); None means fresh
allocations (the same numbers, more page faults).
"""
import math

import numpy as np

from ..core.errors import GeolmError
from ..ops.activations import gelu_bias_backward, gelu_bias_forward
from ..ops.metric import dense_metric_backward, dense_metric_forward, metric_solve_backward, metric_solve_forward
from ..ops.mlp import mlp_forward, mlp_shapes

FIELD_BLOCK = 512


class FieldWorkspace:
    """Reusable buffers of the field, each owned by one named slot.

    Slots: (block, role) for arrays a field evaluation makes (the U-MLP's augmented activations "a1" and output
    "u" of token block `block`; a cache-free evaluation reuses block 0's for every block); (mlp, role) for
    temporaries that are dead when the call taking them returns. take() hands out a slot's buffer (grown when too
    small), overwriting what the slot held: a field cache stays valid until the next field evaluation with the
    same workspace. In the RK4 adjoint that comes after the cache's VJP (rk4_backward recomputes one stage's cache
    right before its VJP), and field_backward checks its slots were not taken since (GeolmError otherwise). One
    workspace serves one evaluation at a time: keep one per run.
    """

    def __init__(self):
        self._slots = {}  # key -> [flat buffer, hand-out number]
        self._count = 0

    def take(self, key, shape, dtype):
        """An uninitialised C-contiguous array [shape] of dtype, backed by slot `key`'s buffer."""
        n, dt = math.prod(shape), np.dtype(dtype)
        slot = self._slots.get(key)
        if slot is None or slot[0].size < n or slot[0].dtype != dt:
            slot = self._slots[key] = [np.empty(n, dt), 0]
        self._count += 1
        slot[1] = self._count
        return slot[0][:n].reshape(shape)

    def stamp(self, key):
        """(key, hand-out number) of the slot's current contents, for check()."""
        return key, self._slots[key][1]

    def check(self, stamps):
        """Raise GeolmError if any slot was taken again since its stamp."""
        for key, n in stamps:
            if self._slots[key][1] != n:
                raise GeolmError(f"a field cache outlived its workspace slot {key} (taken again by a later "
                                 f"evaluation); run field_backward before re-evaluating that stage, or pass "
                                 f"workspace=None")

    @property
    def nbytes(self):
        return sum(buf.nbytes for buf, _ in self._slots.values())


def _take(ws, key, shape, dtype):
    """A buffer from workspace slot `key`, or a fresh array without a workspace."""
    return np.empty(shape, dtype) if ws is None else ws.take(key, shape, dtype)


def field_shapes(cfg):
    """{"f": mlp D->h_f->D, "U": mlp D->h_U->R*D (lowrank/dense only)}."""
    D = cfg.dim
    shapes = {"f": mlp_shapes(D, cfg.field_hidden, D)}
    if cfg.metric != "identity":
        shapes["U"] = mlp_shapes(D, cfg.hidden, cfg.rank * D)
    return shapes


# ---------------------------------------------------------------------------------------------------------------
# the fused block MLP (the same function as geolm.ops.mlp.mlp_forward)

def _gemm_acc(a, b, c, ws, key):
    """c += a^T b: a [M,I], b [M,O], c [I,O] (the product goes to a workspace temporary, then one add)."""
    c += np.matmul(a.T, b, out=_take(ws, key, c.shape, c.dtype))  # [I,M] @ [M,O] -> [I,O]


def augment_fc2(p, ws=None):
    """[W2; b2] [F+1,O] of an MLP's last layer: a read-only view when b2 follows W2 in memory (as in a flat
    parameter buffer), else a copy in workspace slot ("U", "wb")."""
    w, b = p["fc2"]["w"], p["fc2"]["b"]
    shape = (w.shape[0] + 1, w.shape[1])
    if (w.flags.c_contiguous and b.flags.c_contiguous and b.dtype == w.dtype and w.base is not None
            and b.ctypes.data == w.ctypes.data + w.nbytes):
        return np.lib.stride_tricks.as_strided(w, shape=shape, strides=w.strides, writeable=False)
    wb = _take(ws, ("U", "wb"), shape, w.dtype)
    wb[:-1] = w
    wb[-1] = b
    return wb


def block_mlp_forward(x, p, wb=None, ws=None, slot=None, grad=True):
    """GELU MLP x [n,I] -> (y [n,O], cache). With wb = augment_fc2(p): y = [a, 1] @ [W2; b2], the augmented
    activations and y in workspace slots slot + ("a1",) and slot + ("u",). grad=False: no GELU derivative is kept
    (the cache is then for nothing but its outputs)."""
    h = np.matmul(x, p["fc1"]["w"])  # [n,I] @ [I,F] -> [n,F]; its bias is added in the GELU pass
    n, F = h.shape
    if wb is None:
        a, ca = gelu_bias_forward(h, p["fc1"]["b"], grad=grad)  # a = gelu(h + b1)
        y = np.matmul(a, p["fc2"]["w"])  # [n,F] -> [n,O]
        y += p["fc2"]["b"]
        return y, (x, ca, a, p)
    a1 = _take(ws, slot + ("a1",), (n, F + 1), h.dtype)
    _, ca = gelu_bias_forward(h, p["fc1"]["b"], out=a1, grad=grad)  # a1 = [gelu(h + b1), 1]
    y = np.matmul(a1, wb, out=_take(ws, slot + ("u",), (n, wb.shape[1]), h.dtype))  # [n,F+1] @ [F+1,O] -> [n,O]
    return y, (x, ca, a1, p)


def block_mlp_backward(dy, cache, dp, ws=None, name="f"):
    """-> dx [n,I]; adds the weight gradients into dp (nested like p, owned by the caller's backward) in place.
    Temporaries come from workspace slots (name, role)."""
    x, ca, a, p = cache
    w2 = p["fc2"]["w"]
    # y = a W2 + b2
    if a.shape[1] == w2.shape[0]:
        _gemm_acc(a, dy, dp["fc2"]["w"], ws, (name, "fc2.dw"))  # dW2 += a^T dy
        dp["fc2"]["b"] += dy.sum(axis=0)
    else:  # a = [a, 1]: [dW2; db2] = [a, 1]^T dy
        g = np.matmul(a.T, dy, out=_take(ws, (name, "fc2.dwb"), (a.shape[1], dy.shape[1]), dy.dtype))
        dp["fc2"]["w"] += g[:-1]  # [F+1,n] @ [n,O] -> [F+1,O]
        dp["fc2"]["b"] += g[-1]
    da = np.matmul(dy, w2.T)  # [n,O] @ [O,F] -> [n,F]
    dh, db1 = gelu_bias_backward(da, ca)  # a = gelu(h + b1), h = x W1:  dh = da gelu'(h + b1)
    _gemm_acc(x, dh, dp["fc1"]["w"], ws, (name, "fc1.dw"))
    dp["fc1"]["b"] += db1
    return np.matmul(dh, p["fc1"]["w"].T)  # [n,F] @ [F,I] -> [n,I]


def zeros_like_tree(p):
    """Zero arrays nested like p."""
    return {k: zeros_like_tree(a) if isinstance(a, dict) else np.zeros(a.shape, a.dtype) for k, a in p.items()}


# ---------------------------------------------------------------------------------------------------------------
# the field

def field_forward(z, p, cfg, workspace=None):
    """z [N,D] -> (v [N,D], aux {"f2": |f|^2 [N], "logdet": log det g [N] (not for identity)}, cache).
    The cache's blocks live in the workspace's slots until the next evaluation with that workspace."""
    return _field_blocks(z, p, cfg, workspace, True)


def field_forward_nocache(z, p, cfg, workspace=None):
    """field_forward without a cache (the RK4 forward sweep): z [N,D] -> (v [N,D], aux)."""
    v, aux, _ = _field_blocks(z, p, cfg, workspace, False)
    return v, aux


def _field_blocks(z, p, cfg, ws, keep):
    N, D = z.shape
    v = np.empty_like(z)  # [N,D]
    aux = {"f2": np.empty(N, z.dtype)}
    lowrank = cfg.metric != "identity"
    if lowrank:
        aux["logdet"] = np.empty(N, z.dtype)
        solve = dense_metric_forward if cfg.metric == "dense" else metric_solve_forward
    blocks, stamps = [], []
    wb = augment_fc2(p["U"], ws) if lowrank else None
    for b, lo in enumerate(range(0, N, FIELD_BLOCK)):
        hi = min(N, lo + FIELD_BLOCK)
        zb = z[lo:hi]  # [n,D]
        f, cf = block_mlp_forward(zb, p["f"], grad=keep)  # [n,D] -> [n,D]
        aux["f2"][lo:hi] = np.einsum("nd,nd->n", f, f)  # |f|^2
        if not lowrank:
            v[lo:hi] = f
            if keep:
                blocks.append((lo, hi, cf, None, None, f))
            continue
        slot = (b,) if keep else (0,)  # without a cache, each block's buffers are dead after its solve
        u, cu = block_mlp_forward(zb, p["U"], wb, ws, slot, grad=keep)  # [n,D] -> [n,R*D]
        U = u.reshape(hi - lo, cfg.rank, D)  # [n,R*D] -> [n,R,D]
        vb, logdet, cm = solve(U, f, cfg.eps, cfg.alpha)
        v[lo:hi] = vb
        aux["logdet"][lo:hi] = logdet
        if keep:
            blocks.append((lo, hi, cf, cu, cm, f))
            if ws is not None:
                stamps += [ws.stamp(slot + ("a1",)), ws.stamp(slot + ("u",))]
    return v, aux, ((blocks, cfg, z.shape, z.dtype, p, ws, stamps) if keep else None)


def field_backward(ddz, daux, cache):
    """ddz [N,D], daux {name: [N]} (either may be None / missing) -> (dz [N,D], dp like p)."""
    blocks, cfg, shape, dtype, p, ws, stamps = cache
    if ws is not None:
        ws.check(stamps)
    daux = daux or {}
    dl, df2 = daux.get("logdet"), daux.get("f2")
    dz = np.empty(shape, dtype)  # [N,D]
    dp = zeros_like_tree(p)  # {"f": ..., "U": ...}; blocks add into it
    for lo, hi, cf, cu, cm, f in blocks:
        dv = ddz[lo:hi] if ddz is not None else np.zeros_like(f)
        if cu is None:  # identity metric: v = f
            df = np.array(dv, dtype=dtype, copy=True)
        else:
            dlb = dl[lo:hi] if dl is not None else None
            if cfg.metric == "dense":
                dU, df = dense_metric_backward(dv, dlb, cm)  # v = g(U)^-1 f
            else:
                dU, df = metric_solve_backward(dv, dlb, cm, dU_out=_take(ws, ("U", "dU"), cm[1].shape, dtype))
        if df2 is not None:
            df += (2.0 * df2[lo:hi, None]) * f  # f2 = |f|^2
        dz[lo:hi] = block_mlp_backward(df, cf, dp["f"], ws, "f")
        if cu is not None:
            dz[lo:hi] += block_mlp_backward(dU.reshape(hi - lo, -1), cu, dp["U"], ws, "U")  # [n,R,D] -> [n,R*D]
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
    solve = dense_metric_forward if cfg.metric == "dense" else metric_solve_forward
    v, logdet, _ = solve(U, f, cfg.eps, cfg.alpha)
    const = (D - cfg.rank) * math.log(cfg.eps)
    return {"f": f, "v": v, "U": U, "logdet": logdet, "logdet_K": logdet - const, "logdet_const": const}
