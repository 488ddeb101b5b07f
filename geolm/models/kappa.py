"""Inference-time kappa / angle bias on a trained model's log-probabilities (spec 2.9 item 7), and its fitted variant.

M positions . V classes . k coordinate dim

For current token t, previous token s = t-1 and candidate w (x = unit sphere coordinates, A = top-K PMI graph):
    cont_w  = cos angle(x_t - x_s, x_w - x_t)            (0 when s or t is PAD, or x_w = x_t, or x_s = x_t)
    kappa_w = Dice kappa(t, w) on A, -1 where {t, w} is not an edge (geolm.geometry.graph.kappa_lookup)
    log p'(w) = log p(w) + a cont_w - b kappa_w - logsumexp_w'(log p(w') + a cont_w' - b kappa_w')
Published (BLOG 06-12): a = b = 1, untuned. Fitted: (a, b) minimise the held-out NLL
    L(a, b) = mean_m [logsumexp_w(l_mw + a c_mw - b k_mw) - (l_my + a c_my - b k_my)],
convex in (a, b) (a log-partition of features (c, -k)), with gradient E_p'[f] - f_y; minimised by L-BFGS on cached
log-probabilities of held-out training text (never the validation set); `kappa_variants` scores both on validation.
For unit x: |x_w - x_t| = sqrt(2 - 2 x_w.x_t), so cont = (X u - x_t.u) / |x_w - x_t| with u = unit(x_t - x_s):
two [M,k] x [k,V] products, no [M,V,k] tensor (a Numba kernel fuses them; `continuity_ref` is the NumPy form).
Scoring the validation set (`kappa_variants`): kappa = -1 + D with D = kappa + 1 >= 0 only on the few graph edges
of t; the constant -1 cancels in the softmax, and so does log p = l - logsumexp(l), so
    NLL' = logsumexp_w(l_w + a cont_w - b D_w) - (l_y + a cont_y - b D_y)      on the raw logits l:
one dense [M,V] feature (cont) and a sparse correction per row; both coefficient pairs in one pass.
"""
import numpy as np
import scipy.optimize
import scipy.sparse as sp

from .geometric import forward
from ..core.jit import njit
from ..geometry.graph import edge_kappa, kappa_lookup
from ..ops.losses import nll_rows, perplexity, shifted_exp_rows

PUBLISHED = (1.0, 1.0)


def _step_frames(X, prev, cur, pad_id):
    """-> (X float64 [V,k], xt [M,k], u [M,k] unit step x_t - x_s, ok [M] bool)."""
    X = np.asarray(X, np.float64)
    V = X.shape[0]
    prev = np.asarray(prev, np.int64)
    cur = np.asarray(cur, np.int64)
    ok = (prev < V) & (cur < V) & (prev != pad_id) & (cur != pad_id)
    xs = X[np.where(ok, prev, 0)]  # [M,k]
    xt = X[np.where(ok, cur, 0)]  # [M,k]
    step = xt - xs
    n = np.linalg.norm(step, axis=1)  # [M]
    ok &= n > 1e-9
    u = step / np.where(ok, n, 1.0)[:, None]  # [M,k] unit step
    return X, xt, u, ok


def continuity_ref(X, prev, cur, pad_id, dtype=np.float32):
    """NumPy reference of `continuity` (dense float64 [M,V] temporaries)."""
    X, xt, u, ok = _step_frames(X, prev, cur, pad_id)
    num = u @ X.T - np.sum(xt * u, axis=1, keepdims=True)  # [M,V] = (x_w - x_t).u
    dist = np.sqrt(np.maximum(2.0 - 2.0 * (xt @ X.T), 0.0))  # [M,V] = |x_w - x_t|
    cont = np.where(dist > 1e-6, num / np.maximum(dist, 1e-6), 0.0)
    cont[~ok] = 0.0
    return np.clip(cont, -1.0, 1.0).astype(dtype)


@njit
def _continuity_nb(Xt, xt, u, ok, out):
    # out [M,V] = clip((x_w - x_t).u / |x_w - x_t|, -1, 1), 0 where |x_w - x_t| <= 1e-6 or not ok[m]; float64 math
    # Xt [k,V] (coordinates transposed): every inner loop runs over w with unit stride, branch-free (vectorises)
    M, V = out.shape
    k = Xt.shape[0]
    xu = np.empty(V)
    xx = np.empty(V)
    for m in range(M):
        if not ok[m]:
            out[m, :] = 0.0
            continue
        tu = 0.0
        for i in range(k):
            tu += xt[m, i] * u[m, i]
        xu[:] = 0.0
        xx[:] = 0.0
        for i in range(k):
            ui = u[m, i]
            ti = xt[m, i]
            for w in range(V):
                xu[w] += Xt[i, w] * ui
                xx[w] += Xt[i, w] * ti
        for w in range(V):
            dist = np.sqrt(max(2.0 - 2.0 * xx[w], 0.0))
            c = (xu[w] - tu) / max(dist, 1e-6)
            c = min(max(c, -1.0), 1.0)
            out[m, w] = c if dist > 1e-6 else 0.0


def continuity(X, prev, cur, pad_id, dtype=np.float32):
    """cont [M,V]: cosine between the step x_t - x_s and each candidate step x_w - x_t (see module docstring).

    X [V,k] unit rows (classes only); prev, cur [M] int ids (PAD = pad_id or any id >= V gives a zero row).
    One fused Numba pass (float64 arithmetic, written in dtype); `continuity_ref` is the NumPy reference.
    """
    X, xt, u, ok = _step_frames(X, prev, cur, pad_id)
    out = np.empty((len(ok), X.shape[0]), dtype)
    _continuity_nb(np.ascontiguousarray(X.T), xt, u, ok, out)
    return out


def bias_features(X, A, ctx, pad_id, dtype=np.float32):
    """(cont [M,V], kappa [M,V]) for context windows ctx [M,C] (t = ctx[:,-1], s = ctx[:,-2])."""
    cont = continuity(X, ctx[:, -2], ctx[:, -1], pad_id, dtype)
    kap = kappa_lookup(A, ctx[:, -1], dtype=dtype)  # [M,V], -1 off-graph and for PAD
    return cont, kap


def log_softmax(z):
    """Row-wise log-softmax (float64 accumulation of the normaliser). [M,V] -> [M,V] same dtype."""
    m = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - m).sum(axis=1, dtype=np.float64, keepdims=True)).astype(z.dtype) + m
    return z - lse


def biased_nll(logp, cont, kap, y, a, b):
    """Summed NLL of the re-weighted model and its gradient w.r.t. (a, b): -> (nll_sum, [dA, dB]) float64."""
    def fill(z):  # z = logp + (a cont - b kap), in that rounding order, without [M,V] temporaries but one
        np.multiply(cont, a, out=z, dtype=z.dtype)
        z -= np.multiply(kap, b, dtype=z.dtype)
        z += logp

    z = np.empty_like(logp)
    fill(z)
    rows = np.arange(len(y))
    zy = z[rows, y].astype(np.float64)
    s, c = shifted_exp_rows(z, fill)  # z -> e = exp(z - c), s = row sums
    s = s.astype(np.float64)
    nll = np.log(s) - zy + (c[:, 0] if c is not None else 0.0)
    p_dot_c = np.einsum("mv,mv->m", z, cont, dtype=np.float64) / s  # E_p'[cont]
    p_dot_k = np.einsum("mv,mv->m", z, kap, dtype=np.float64) / s
    g = np.array([np.sum(p_dot_c - cont[rows, y]), -np.sum(p_dot_k - kap[rows, y])])
    return float(nll.sum()), g


def fit_coefficients(logp, cont, kap, y, x0=(0.0, 0.0)):
    """Held-out fit of (a, b): -> (a, b, info) with info = {"nll_fitted", "nll_published", "nll_none", "n"}."""
    n = len(y)

    def f(v):
        s, g = biased_nll(logp, cont, kap, y, float(v[0]), float(v[1]))
        return s / n, g / n

    res = scipy.optimize.minimize(f, np.asarray(x0, np.float64), jac=True, method="L-BFGS-B",
                                  bounds=[(-20.0, 20.0), (-20.0, 20.0)])
    a, b = (float(v) for v in res.x)
    info = {"nll_fitted": float(res.fun), "nll_published": f(PUBLISHED)[0], "nll_none": f((0.0, 0.0))[0], "n": n,
            "iterations": int(res.nit)}
    return a, b, info


def biased_eval_nll(logits, ctx, y, X, A, pad_id, a, b):
    """Summed NLL (float64) of logits [M,V] re-weighted with coefficients (a, b) -> (nll_sum, n)."""
    logp = log_softmax(logits)
    if a == 0.0 and b == 0.0:
        return float(-logp[np.arange(len(y)), y].astype(np.float64).sum()), len(y)
    cont, kap = bias_features(X, A, ctx, pad_id, logp.dtype)
    s, _ = biased_nll(logp, cont, kap, y, a, b)
    return s, len(y)


def edge_bias(A):
    """D = kappa + 1 on the edges of A as csr [V,V] float64 (kappa = -1 + D everywhere, D = 0 off the graph)."""
    V = A.shape[0]
    r, c, kap = edge_kappa(A)
    D = sp.csr_matrix((kap + 1.0, (r, c)), shape=(V, V))
    D.sort_indices()
    return D


def biased_nll_rows(logits, cont, D, cur, y, a, b, out=None):
    """Per-row NLL [M] float64 of the re-weighted model from RAW logits [M,V]: z = l + a cont - b D[cur]
    (D = `edge_bias`, rows of cur >= V get none), NLL = logsumexp(z) - z_y. out: optional [M,V] scratch."""
    V = D.shape[0]
    if b != 0.0:
        cur = np.asarray(cur, np.int64)
        live = np.flatnonzero(cur < V)
        R = D[cur[live]]  # csr [M',V]: the edges of each current token
        rows = live[np.repeat(np.arange(len(live)), np.diff(R.indptr))]
        vals = (b * R.data).astype(logits.dtype)

    def fill(z):
        np.multiply(cont, a, out=z, dtype=logits.dtype)
        z += logits
        if b != 0.0:
            z[rows, R.indices] -= vals  # (row, col) pairs are unique within a csr row

    z = out if out is not None else np.empty_like(logits)
    fill(z)
    return nll_rows(z, y, overwrite=True, refill=fill)


def kappa_variants(mc, tables, X, A, p, Xva, yva, Xho, yho, pad_id, seed, batch=2048, n_fit=4096):
    """Validation NLL of a trained geometric model (config mc, params p) re-weighted with (1, 1) and with (a, b)
    fitted on up to n_fit held-out positions (Xho, yho; None = no fit, (0, 0)).
    -> {"published": {"val_ppl", "val_loss"}, "fitted": {...}, "fit": {"a", "b", "source", nll_*...}}.
    One pass over the validation set scores both pairs (raw logits, dense cont, sparse kappa; module docstring)."""

    fit = {"a": 0.0, "b": 0.0, "source": "none (no held-out stories)"}
    if Xho is not None and len(yho):
        sel = np.sort(np.random.default_rng([seed, 11]).permutation(len(yho))[:n_fit])
        logits, _ = forward(p, Xho[sel], mc, tables)
        cont, kap = bias_features(X, A, Xho[sel], pad_id)
        a, b, info = fit_coefficients(log_softmax(logits), cont, kap, yho[sel])
        fit = dict(info, a=a, b=b, source=f"{len(sel)} held-out positions")
    D = edge_bias(A)
    pairs = {"published": PUBLISHED, "fitted": (fit["a"], fit["b"])}
    sums = dict.fromkeys(pairs, 0.0)
    scratch = None
    for i in range(0, len(yva), batch):
        ctx, y = Xva[i:i + batch], yva[i:i + batch]
        logits, _ = forward(p, ctx, mc, tables)  # [M,V]
        cont = continuity(X, ctx[:, -2], ctx[:, -1], pad_id, logits.dtype)  # [M,V]
        if scratch is None or scratch.shape != logits.shape:
            scratch = np.empty_like(logits)
        for key, (a, b) in pairs.items():
            sums[key] += float(biased_nll_rows(logits, cont, D, ctx[:, -1], y, a, b, out=scratch).sum())
    n = len(yva)
    out = {key: {"val_ppl": perplexity(sums[key], n), "val_loss": sums[key] / n} for key in pairs}
    out["fit"] = fit
    return out
