"""Float64 loop oracles (slow, obviously right) for the geometry modules.

V vocab . W window . K neighbours . M rows . K1 attended nodes . D width
"""
import math

import numpy as np


def cooccurrence_naive(stories, V, window, exclude=(), directed=False):
    C = np.zeros((V, V), np.int64)
    ex = set(int(e) for e in exclude)
    for s in stories:
        s = [int(t) for t in s]
        for i in range(len(s)):
            for j in range(i + 1, min(i + window, len(s) - 1) + 1):
                a, b = s[i], s[j]
                if a == b or not (0 <= a < V) or not (0 <= b < V) or a in ex or b in ex:
                    continue
                C[a, b] += 1
                if not directed:
                    C[b, a] += 1
    return C


def ppmi_naive(C, smoothing=None):
    C = np.asarray(C, np.float64)
    N = C.sum()
    out = np.zeros_like(C)
    rows, cols = C.sum(axis=1), C.sum(axis=0)
    ctx = cols ** smoothing / np.sum(cols ** smoothing) if smoothing else cols / N
    for a in range(C.shape[0]):
        for b in range(C.shape[1]):
            if C[a, b] > 0:
                out[a, b] = max(0.0, math.log((C[a, b] / N) / ((rows[a] / N) * ctx[b])))
    return out


def topk_naive(P, k):
    P = np.asarray(P, np.float64)
    V = P.shape[0]
    nbr = -np.ones((V, k), np.int64)
    for v in range(V):
        cand = sorted([(-P[v, u], u) for u in range(P.shape[1]) if u != v and P[v, u] > 0])
        for j, (_, u) in enumerate(cand[:k]):
            nbr[v, j] = u
    return nbr


def neighbour_sets(nbr, V):
    N = [set() for _ in range(V)]
    for v in range(len(nbr)):
        for u in nbr[v]:
            u = int(u)
            if 0 <= u < V and u != v:
                N[v].add(u)
                N[u].add(v)
    return N


def dice_naive(N, u, v):
    den = len(N[u]) + len(N[v])
    return -1.0 if den == 0 else 2.0 * len(N[u] & N[v]) / den - 1.0


def rotation_matrix_naive(a, b):
    """Textbook Rodrigues in 3-D (k = a x b / |a x b|), or explicit Givens-style construction in d dims."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    d = a.size
    c = float(a @ b)
    # orthonormal basis of span(a, b): u1 = a, u2 = (b - c a)/|...|
    r = b - c * a
    s = float(np.linalg.norm(r))
    if s < 1e-15:
        return np.eye(d)
    u2 = r / s
    R = np.eye(d)
    R -= np.outer(a, a) + np.outer(u2, u2)
    # in the plane: a -> c a + s u2, u2 -> -s a + c u2
    R += c * np.outer(a, a) + s * np.outer(u2, a) - s * np.outer(a, u2) + c * np.outer(u2, u2)
    return R


def graph_attention_naive(e_q, e_nb, mask, p, score_bias=None):
    e_q, e_nb = np.asarray(e_q, np.float64), np.asarray(e_nb, np.float64)
    M, K1, D = e_nb.shape
    h = np.zeros((M, D))
    for m in range(M):
        q = e_q[m] @ p["wq"]["w"] + p["wq"]["b"]
        scores, vals = [], []
        for j in range(K1):
            if not mask[m, j]:
                continue
            k = e_nb[m, j] @ p["wk"]["w"] + p["wk"]["b"]
            s = float(q @ k) / math.sqrt(D) + (0.0 if score_bias is None else float(score_bias[m, j]))
            scores.append(s)
            vals.append(e_nb[m, j] @ p["wv"]["w"] + p["wv"]["b"])
        h[m] = e_q[m]
        if scores:
            mx = max(scores)
            ws = [math.exp(s - mx) for s in scores]
            z = math.fsum(ws)
            for wgt, v in zip(ws, vals):
                h[m] += (wgt / z) * v
    return h


def bigram_nll_naive(prev, y, V, prev_eval, y_eval):
    from collections import Counter
    ctx = lambda t: t if 0 <= t < V else V  # noqa: E731
    pair = Counter((ctx(int(a)), int(b)) for a, b in zip(prev, y))
    single = Counter(ctx(int(a)) for a in prev)
    nll = 0.0
    for a, b in zip(prev_eval, y_eval):
        a = ctx(int(a))
        nll -= math.log((pair[(a, int(b))] + 1) / (single[a] + V))
    return nll, len(y_eval)
