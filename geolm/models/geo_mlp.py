"""The geometric MLP-LM head: one ReLU MLP over dense frozen features and one-hot id slots (spec 2.9).

B batch . F dense feature width . J one-hot id slots . Vi input vocab (classes + PAD) . H hidden . V output classes

MLP(F + J*Vi -> H -> V, ReLU) over [x + one-hot(id_1) + ... + one-hot(id_J)]; the one-hot blocks are row lookups
of the first-layer weight, never a one-hot matmul (`lookup_rows` gives row F + j*Vi + id_j):
    pre = x W1[:F] + sum_j W1[rows_j] + b1;   h = relu(pre);   logits = [h, 1] @ [W2; b2]
    backward: dW2b = [h, 1]^T G;  dpre = (G W2^T) * [pre > 0];  db1 = sum_B dpre;
              dW1[:F] = x^T dpre;  dW1[rows_j] += dpre (a RowGrad: sparse in rows, never a dense [F+J*Vi,H]);
              dx = dpre W1[:F]^T
fc2's bias rides in the GEMM: [W2; b2] is one [H+1,V] operand (a view when b2 follows W2 in the flat buffer).
Implicit cross-entropy (geolm.ops.losses.xent_factors): G = r[:,None] * e - onehot(y) / B with e in the logits
buffer; r scales the [B,H+1] operand instead of e, and the one-hot term is a gather of B columns of W2 (dpre)
and a scatter of B columns (dW2b: geolm.core.scatter on its transpose), so no pass over [B,V] is spent on either.
"""
import numpy as np

from ..core.params import RowGrad
from ..core.scatter import scatter_add_rows
from ..ops.mlp import mlp_init_, mlp_shapes


def param_shapes(F, J, Vi, H, V):
    """MLP(F + J*Vi -> H -> V): fc1.w rows [0, F) dense, then J one-hot blocks of Vi rows."""
    return mlp_shapes(F + J * Vi, H, V)


def init_(p, rng):
    """Glorot weights, zero biases (in place on the views)."""
    mlp_init_(p, rng)


def lookup_rows(ids, F, Vi):
    """Row indices into fc1.w for one-hot slots: ids [B,J] -> [B,J] int64 (F + j*Vi + id)."""
    return F + np.arange(ids.shape[1], dtype=np.int64) * Vi + ids


def _stacked(w, b):
    """[w; b] as one [H+1,V] array: a view when b directly follows w in memory (flat parameter buffers), else a copy."""
    H, V = w.shape
    if (w.flags.c_contiguous and b.flags.c_contiguous and b.dtype == w.dtype and b.shape == (V,)
            and b.__array_interface__["data"][0] == w.__array_interface__["data"][0] + w.nbytes):
        return np.lib.stride_tricks.as_strided(w, shape=(H + 1, V), strides=w.strides)
    return np.concatenate([w, b[None]], axis=0)  # [H+1,V]


def forward(p, x, rows):
    """x [B,F] float (F may be 0), rows [B,J] int fc1.w row ids -> (logits [B,V], cache)."""
    w1, b1 = p["fc1"]["w"], p["fc1"]["b"]
    w2b = _stacked(p["fc2"]["w"], p["fc2"]["b"])  # [H+1,V]
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


def refill(cache):
    """-> z -> z = the logits of `forward` again, [h, 1] @ [W2; b2] (the `refill` of geolm.ops.losses)."""
    _, _, ha, _, w2b = cache
    return lambda z: np.matmul(ha, w2b, out=z)


def backward(dlogits, cache, xent=None, need_dx=False):
    """dlogits [B,V] -> (dx [B,F] if need_dx else None, dp nested like p; dp.fc1.w a RowGrad when J > 0).

    xent=(r, y) from xent_factors: dlogits holds e and the upstream gradient is r[:,None] * e - onehot(y) / B."""
    x, rows, ha, w1, w2b = cache
    B, F = x.shape
    H = ha.shape[1] - 1
    # logits = ha W2b:  dW2b = ha^T G;  dha = G W2b^T
    hs = ha if xent is None else ha * xent[0][:, None]  # [B,H+1]
    dwb = np.matmul(hs.T, dlogits)  # [H+1,B] @ [B,V] -> [H+1,V] (row H = db2)
    dpre = np.matmul(dlogits, w2b[:H].T)  # [B,V] @ [V,H] -> [B,H]
    if xent is not None:
        r, y = xent
        dpre *= r[:, None]
        inv_b = 1.0 / B
        scatter_add_rows(dwb.T, y, ha * -inv_b)  # dW2b[:, y_b] -= ha_b / B: a row scatter into [V,H+1] view
        dpre -= w2b[:H, y].T * inv_b  # [B,H]
    # h = relu(pre)
    dpre *= ha[:, :H] > 0.0
    db1 = dpre.sum(axis=0)  # [H]
    # pre = x W1[:F] + sum_j W1[rows_j]
    head = np.matmul(x.T, dpre) if F else None  # [F,B] @ [B,H] -> [F,H]
    J = rows.shape[1]
    if J:
        dw1 = RowGrad(tuple((np.ascontiguousarray(rows[:, j]), dpre) for j in range(J)), head)
    else:
        dw1 = head if F else np.zeros_like(w1)
    dp = {"fc1": {"w": dw1, "b": db1}, "fc2": {"w": dwb[:H], "b": dwb[H]}}
    if not need_dx:
        return None, dp
    return (np.matmul(dpre, w1[:F].T) if F else np.zeros_like(x)), dp  # [B,H] @ [H,F] -> [B,F]
