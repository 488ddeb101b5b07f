"""Semantic cartography: where do trajectories end, by word class, and is that clustering real?

N points · D model dim · S ODE steps · C classes · G grid side

Labels. The endpoint token of a trajectory is the head's argmax at z_T; its decoded BPE string is stripped
and lowercased and looked up in a shipped lexicon (geolm/data/lexicon.txt, `word<TAB>noun|verb`), giving
noun / verb / end (the end-of-story token) / other.

Projection (for the picture only). PCA of the endpoints: Zc = Z - mean, Zc = U S V^T (numpy SVD),
coords = Zc V[:2]^T. Trajectories (their step-boundary states) are projected on the same plane. The
backdrop is log det g(z) on the plane z = mean + a pc1 + b pc2 (computed by the caller's model).

Statistics (in the full D dimensions, never on the 2-D picture), Euclidean distances:
    silhouette  s_i = (b_i - a_i) / max(a_i, b_i), a_i = mean distance to the rest of i's class,
                b_i = min over other classes of the mean distance to that class; s_i = 0 for a singleton
                class (the usual convention); score = mean_i s_i in [-1, 1] (~0 for random labels).
    k-NN purity mean_i (1/k) #{j in kNN(i): label_j = label_i} (self excluded); its chance level with the
                same class sizes is sum_c n_c (n_c - 1) / (N (N - 1)).
Caveat: endpoints are labelled by the token the linear head reads off z_T, so some separation of z_T by
class is built in by the readout itself; the g = I control (same statistics, --metric identity run) and
z_0 are the comparisons that make a "basins carved by the metric" claim testable.
"""
import os
from importlib import resources

import numpy as np

from .errors import ConfigError, DataError

CLASSES = ("noun", "verb", "end", "other")
CLASS_COLORS = {"noun": "#1f77b4", "verb": "#d62728", "end": "#2ca02c", "other": "#7f7f7f"}
EOS_STRINGS = frozenset({"<|endoftext|>", "</s>", "<eos>", "<|eos|>", "[eos]"})


# ----------------------------------------------------------------------------- lexicon and labels

def load_lexicon(path=None):
    """{word: "noun"|"verb"} from `path` or the shipped geolm/data/lexicon.txt ('#' lines are comments)."""
    try:
        if path is None:
            text = resources.files("geolm").joinpath("data/lexicon.txt").read_text(encoding="utf-8")
            where = "geolm/data/lexicon.txt"
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
            where = os.fspath(path)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read lexicon {path}: {e.__class__.__name__}; pass a UTF-8 file of "
                        f"word<TAB>noun|verb lines") from e
    lex = {}
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or parts[1].strip() not in ("noun", "verb"):
            raise DataError(f"{where} line {i} is not word<TAB>noun|verb; fix or remove that line")
        lex[parts[0].strip().lower()] = parts[1].strip()
    if not lex:
        raise DataError(f"lexicon {where} has no entries; pass a file of word<TAB>noun|verb lines")
    return lex


def word_class(token_str, lexicon, eos_strings=EOS_STRINGS):
    """'noun' | 'verb' | 'end' | 'other' for a decoded token string (stripped, lowercased, edge punctuation
    removed before the lexicon lookup; an end-of-story marker -> 'end')."""
    s = str(token_str).strip()
    if s.lower() in eos_strings:
        return "end"
    w = s.lower().strip(".,!?;:\"'()[]")
    return lexicon.get(w, "other")


# ----------------------------------------------------------------------------- projection

def pca_2d(Z):
    """PCA to two components. Z [N,D] -> (coords [N,2], components [2,D], mean [D]), float64.

    Component signs are fixed (largest-|.| entry positive) so pictures are reproducible. Fewer than two
    non-trivial directions give zero rows in `components`.
    """
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[0] < 1:
        raise ConfigError(f"pca_2d needs a [N,D] array with N >= 1, got shape {Z.shape}")
    mean = Z.mean(axis=0)                                    # [D]
    Zc = Z - mean                                            # [N,D]
    _, _, vt = np.linalg.svd(Zc, full_matrices=False)        # vt [min(N,D),D]
    comps = np.zeros((2, Z.shape[1]))
    k = min(2, vt.shape[0])
    comps[:k] = vt[:k]
    for i in range(k):
        j = np.argmax(np.abs(comps[i]))
        if comps[i, j] < 0.0:
            comps[i] = -comps[i]
    return Zc @ comps.T, comps, mean                          # [N,D] @ [D,2] -> [N,2]


def project(X, components, mean):
    """Points X [...,D] -> plane coordinates [...,2] with a pca_2d basis."""
    return (np.asarray(X, dtype=np.float64) - mean) @ components.T   # [...,D] @ [D,2] -> [...,2]


def plane_grid(components, mean, lim, n=48):
    """Grid on the PCA plane: (a [G], b [G], points [G*G,D]) with z = mean + a pc1 + b pc2.

    lim = (amin, amax, bmin, bmax); points are ordered row-major over (b, a), i.e. reshape to [G(b),G(a)].
    """
    a = np.linspace(lim[0], lim[1], n)
    b = np.linspace(lim[2], lim[3], n)
    A, B = np.meshgrid(a, b)                                  # [G,G] each, rows = b
    pts = mean + A.reshape(-1, 1) * components[0] + B.reshape(-1, 1) * components[1]   # [G*G,D]
    return a, b, pts


# ----------------------------------------------------------------------------- cluster statistics

def pairwise_dist(Z):
    """Euclidean distances [N,N] (float64) via the Gram matrix, clamped at 0 and zero on the diagonal."""
    Z = np.asarray(Z, dtype=np.float64)
    sq = np.einsum("nd,nd->n", Z, Z)                          # [N]
    D2 = sq[:, None] + sq[None, :] - 2.0 * (Z @ Z.T)          # [N,N]
    np.maximum(D2, 0.0, out=D2)
    np.fill_diagonal(D2, 0.0)
    return np.sqrt(D2)


def _codes(labels):
    labels = np.asarray(labels)
    uniq, codes = np.unique(labels, return_inverse=True)
    return uniq, codes.reshape(-1)


def silhouette(Z, labels, D=None):
    """Mean silhouette over points (Euclidean, full dimension); nan with fewer than 2 classes."""
    uniq, codes = _codes(labels)
    N, C = codes.shape[0], uniq.shape[0]
    if C < 2 or N < 2:
        return float("nan")
    D = pairwise_dist(Z) if D is None else D
    M = np.zeros((N, C))
    M[np.arange(N), codes] = 1.0                              # one-hot [N,C]
    sums = D @ M                                              # [N,N] @ [N,C] -> [N,C] distance sums per class
    n_c = M.sum(axis=0)                                       # [C]
    own_n = n_c[codes]                                        # [N]
    a = sums[np.arange(N), codes] / np.maximum(own_n - 1.0, 1.0)
    other = sums / n_c                                        # [N,C] mean distance per class
    other[np.arange(N), codes] = np.inf
    b = other.min(axis=1)
    denom = np.maximum(a, b)
    s = np.where(denom > 0.0, (b - a) / np.where(denom > 0.0, denom, 1.0), 0.0)
    s[own_n <= 1.0] = 0.0
    return float(s.mean())


def knn_purity(Z, labels, k=10, D=None):
    """Mean fraction of each point's k nearest neighbours (self excluded) that share its label."""
    _, codes = _codes(labels)
    N = codes.shape[0]
    if N < 2:
        return float("nan")
    k = int(min(k, N - 1))
    if k < 1:
        raise ConfigError("knn_purity needs k >= 1; pass --k 10")
    D = (pairwise_dist(Z) if D is None else D).copy()
    np.fill_diagonal(D, np.inf)
    nbrs = np.argpartition(D, k - 1, axis=1)[:, :k]           # [N,k]
    return float((codes[nbrs] == codes[:, None]).mean())


def knn_chance(labels):
    """Expected k-NN purity under random labels with the same class sizes: sum n_c(n_c-1) / (N(N-1))."""
    _, codes = _codes(labels)
    N = codes.shape[0]
    if N < 2:
        return float("nan")
    n_c = np.bincount(codes).astype(np.float64)
    return float((n_c * (n_c - 1.0)).sum() / (N * (N - 1.0)))


def endpoint_stats(Z, labels, k=10):
    """Cluster statistics of points Z [N,D] under `labels` [N], in the full dimension.

    Returns dict(silhouette, knn_purity, knn_chance, n, n_classes, k).
    """
    Z = np.asarray(Z, dtype=np.float64)
    labels = np.asarray(labels)
    if Z.ndim != 2 or labels.shape != (Z.shape[0],):
        raise ConfigError(f"endpoint_stats needs Z [N,D] and labels [N], got {Z.shape} and {labels.shape}")
    D = pairwise_dist(Z)
    uniq, _ = _codes(labels)
    return {"silhouette": silhouette(Z, labels, D=D), "knn_purity": knn_purity(Z, labels, k=k, D=D),
            "knn_chance": knn_chance(labels), "n": int(Z.shape[0]), "n_classes": int(uniq.shape[0]),
            "k": int(min(k, max(Z.shape[0] - 1, 0)))}


def class_stats(points, labels, k=10, drop=("other",)):
    """{name: endpoint_stats} for each named point set {name: Z [N,D]} sharing `labels` [N].

    Two views per set: "<name>" over the classes not in `drop` (the noun / verb / end claim) and
    "<name>/all" over every class. Sets whose kept points have < 2 classes get nan scores.
    """
    labels = np.asarray(labels)
    keep = ~np.isin(labels, list(drop))
    out = {}
    for name, Z in points.items():
        Z = np.asarray(Z)
        out[name] = endpoint_stats(Z[keep], labels[keep], k=k) if keep.sum() >= 2 else \
            {"silhouette": float("nan"), "knn_purity": float("nan"), "knn_chance": float("nan"),
             "n": int(keep.sum()), "n_classes": int(np.unique(labels[keep]).shape[0]), "k": 0}
        out[name + "/all"] = endpoint_stats(Z, labels, k=k)
    return out


def format_stats(stats):
    """A small fixed-width table of class_stats output."""
    head = f"{'points':<22} {'n':>4} {'C':>2} {'silhouette':>10} {'kNN purity':>10} {'chance':>7}"
    rows = [head, "-" * len(head)]
    for name, s in stats.items():
        rows.append(f"{name:<22} {s['n']:>4d} {s['n_classes']:>2d} {s['silhouette']:>10.3f} "
                    f"{s['knn_purity']:>10.3f} {s['knn_chance']:>7.3f}")
    return "\n".join(rows)


# ----------------------------------------------------------------------------- the picture

def draw_semantic_map(path, traj2d, labels, words, grid=None, title="", dpi=220, max_labels=200):
    """Draw trajectories, labelled endpoints by class and an optional log det g backdrop; PNG at `path`.

    traj2d [S+1,N,2] projected step-boundary states (last = endpoints); labels/words [N];
    grid = (a [G], b [G], L [G,G] log det g, rows over b) or None.
    """
    from .plots import pyplot, save_figure

    plt = pyplot()
    traj2d = np.asarray(traj2d, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(11, 9))
    if grid is not None:
        a, b, L = grid
        L = np.asarray(L, dtype=np.float64)
        if np.isfinite(L).any():
            cf = ax.contourf(a, b, L, levels=24, cmap="terrain", alpha=0.55, zorder=0)
            ax.contour(a, b, L, levels=12, colors="k", linewidths=0.3, alpha=0.35, zorder=1)
            cb = fig.colorbar(cf, ax=ax, shrink=0.8)
            cb.set_label("log det g(z) on the PCA plane")
    labels = np.asarray(labels)
    for c in CLASSES:
        idx = np.flatnonzero(labels == c)
        if idx.size == 0:
            continue
        col = CLASS_COLORS[c]
        for i in idx:
            ax.plot(traj2d[:, i, 0], traj2d[:, i, 1], color=col, lw=0.6, alpha=0.45, zorder=2)
        ax.scatter(traj2d[0, idx, 0], traj2d[0, idx, 1], s=6, color=col, alpha=0.4, marker="o", zorder=3)
        ax.scatter(traj2d[-1, idx, 0], traj2d[-1, idx, 1], s=22, color=col, edgecolor="k", linewidth=0.3,
                   label=f"{c} ({idx.size})", zorder=4)
    for i in range(min(len(words), max_labels)):
        ax.annotate(str(words[i]).strip() or "?", traj2d[-1, i], fontsize=5.5, alpha=0.85,
                    xytext=(2, 2), textcoords="offset points", zorder=5,
                    color=CLASS_COLORS.get(str(labels[i]), "k"))
    ax.set_xlabel("PC 1 of endpoints z_T")
    ax.set_ylabel("PC 2 of endpoints z_T")
    ax.set_title(title or "semantic map: trajectories z_0 -> z_T, endpoint token = head argmax")
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path, dpi=dpi)


def plot_limits(traj2d, pad=0.08):
    """(amin, amax, bmin, bmax) covering all projected states with a margin."""
    t = np.asarray(traj2d).reshape(-1, 2)
    lo, hi = t.min(axis=0), t.max(axis=0)
    span = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - pad * span, hi + pad * span
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])
