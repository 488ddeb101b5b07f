"""Semantic cartography: where do trajectories end, by word class, and is that clustering real?

N points · D model dim · S ODE steps · C classes · G grid side

Labels. The endpoint token of a trajectory is the head's argmax at z_T (label_by "predicted") or the true next
token at its position (label_by "target": the same classes for the model and its control); its decoded BPE
string is stripped and lowercased and looked up in a shipped lexicon (geolm/data/lexicon.txt,
`word<TAB>noun|verb`), giving noun / verb / end (the end-of-story token) / other.

Projection (for the picture only). PCA of the endpoints: Zc = Z - mean, Zc = U S V^T (numpy SVD),
coords = Zc V[:2]^T. Trajectories (their step-boundary states) are projected on the same plane. The
backdrop is log det g(z) on the plane z = mean + a pc1 + b pc2. The model runs in geolm.apps.trajectories,
the drawing in geolm.apps.plots.

Statistics (in the full D dimensions, never on the 2-D picture), Euclidean distances:
    silhouette  s_i = (b_i - a_i) / max(a_i, b_i), a_i = mean distance to the rest of i's class,
                b_i = min over other classes of the mean distance to that class; s_i = 0 for a singleton
                class (the usual convention); score = mean_i s_i in [-1, 1] (~0 for random labels).
    k-NN purity mean_i (1/k) #{j in kNN(i): label_j = label_i} (self excluded); its chance level with the
                same class sizes is sum_c n_c (n_c - 1) / (N (N - 1)).
Per class c (noun / verb / end / other), for z_T and z_0 (class_measures):
    log det g   mean +- sample sd (ddof 1) over the class's points; for a control its own constant metric
                (g = I: 0; alpha = 0: D log eps), none without an ODE (geolm.apps.trajectories.metric_note)
    isolation   |mu_c - mu_nearest| / s_c: centroid mu_c, nearest other present class centroid, spread s_c the
                RMS distance of the class's points to mu_c; its chance level is the mean over random relabellings
                with the same class sizes (a small class's centroid is off by noise alone)
A class with no point has no mean and no isolation, one point has no sd and no isolation (noted, never an error).
Caveat: labelled by prediction, endpoints are classed by the token the linear head reads off z_T, so some
separation of z_T by class is built in by the readout itself (label_by "target" removes that); the g = I control
(same statistics, --metric identity run) and z_0 are the comparisons that make a "basins carved by the metric"
claim testable.
"""
import os
from importlib import resources

import numpy as np

from ..core.errors import ConfigError, DataError
from .plots import draw_semantic_map, plot_limits
from .trajectories import (context_batch, logdet_landscape, metric_note, next_tokens, point_logdet,
                           run_trajectories, sample_positions)

CLASSES = ("noun", "verb", "end", "other")
LABEL_BY = ("predicted", "target")  # what classes a point: its head's argmax at z_T, or the true next token
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


# ----------------------------------------------------------------------------- per-class measures

def value_stats(values, labels, classes=CLASSES):
    """Per class c: {"n", "mean", "sd", "note"} of values [N] (e.g. log det g) over the points labelled c.

    sd is the sample standard deviation (ddof 1). No point: mean = sd = None; one point: sd = None (noted).
    """
    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray(labels)
    out = {}
    for c in classes:
        x = values[labels == c]
        n = int(x.size)
        out[c] = {"n": n, "mean": float(x.mean()) if n else None, "sd": float(x.std(ddof=1)) if n > 1 else None,
                  "note": "no points" if n == 0 else ("one point: no sd" if n == 1 else "")}
    return out


def centroid_isolation(Z, labels, classes=CLASSES):
    """Isolation of each class's centroid among the present classes, in the full dimension.

    For class c with n_c >= 1 points z_i:  mu_c = mean_i z_i,  spread s_c = sqrt(mean_i |z_i - mu_c|^2) (RMS
    distance to the centroid),  nearest = argmin_{c' != c, n_c' >= 1} |mu_c - mu_c'|,
    isolation = |mu_c - mu_nearest| / s_c  (> 1: the nearest centroid lies outside the class's typical radius).
    -> {class: {"n", "spread", "nearest", "centroid_distance", "isolation", "note"}}; isolation is None (with a
    note) for a class with < 2 points, zero spread, or no other class present.
    """
    Z = np.asarray(Z, dtype=np.float64)
    labels = np.asarray(labels)
    present = [c for c in classes if np.any(labels == c)]
    mu = {c: Z[labels == c].mean(axis=0) for c in present}                        # {c: [D]}
    out = {}
    for c in classes:
        Zc = Z[labels == c]                                                       # [n_c,D]
        rec = {"n": int(Zc.shape[0]), "spread": None, "nearest": None, "centroid_distance": None,
               "isolation": None, "note": ""}
        out[c] = rec
        if rec["n"] == 0:
            rec["note"] = "no points"
            continue
        rec["spread"] = float(np.sqrt(np.mean(np.sum((Zc - mu[c]) ** 2, axis=1))))
        others = {o: float(np.linalg.norm(mu[c] - mu[o])) for o in present if o != c}
        if others:
            rec["nearest"] = min(others, key=others.get)
            rec["centroid_distance"] = others[rec["nearest"]]
        if rec["n"] == 1:
            rec["note"] = "one point: spread 0, isolation undefined"
        elif not others:
            rec["note"] = "no other class present"
        elif rec["spread"] <= 0.0:
            rec["note"] = "zero spread: isolation undefined"
        else:
            rec["isolation"] = rec["centroid_distance"] / rec["spread"]
    return out


def isolation_chance(Z, labels, classes=CLASSES, n_perm=50, seed=0):
    """Mean isolation per class over n_perm random relabellings with the same class sizes (a class of few points
    has a centroid offset by noise alone, ~ s sqrt(1/n_c + 1/n_c')): {class: float or None}."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), 11])
    acc = {c: [] for c in classes}
    for _ in range(n_perm):
        iso = centroid_isolation(Z, rng.permutation(labels), classes)
        for c in classes:
            if iso[c]["isolation"] is not None:
                acc[c].append(iso[c]["isolation"])
    return {c: float(np.mean(v)) if v else None for c, v in acc.items()}


def class_measures(points, labels, logdet=None, metric="", k=10):
    """Per-class measures of named point sets {name: Z [N,D]} (e.g. "z_T", "z_0") sharing labels [N].

    logdet: {name: log det g [N] or None} at the same points (None: no metric). -> {"metric": metric,
    "counts": {class: n}, name: {"logdet": value_stats or None, "isolation": centroid_isolation,
    "isolation_chance": isolation_chance, "all": endpoint_stats over every class, "no_other": endpoint_stats
    without "other"}}. All in the full dimension.
    """
    labels = np.asarray(labels)
    logdet = logdet or {}
    st = class_stats(points, labels, k=k)
    out = {"metric": metric, "counts": {c: int((labels == c).sum()) for c in CLASSES}}
    for name, Z in points.items():
        ld = logdet.get(name)
        out[name] = {"logdet": None if ld is None else value_stats(ld, labels),
                     "isolation": centroid_isolation(Z, labels), "isolation_chance": isolation_chance(Z, labels),
                     "all": st[name + "/all"], "no_other": st[name]}
    return out


def _pm(rec):
    if rec is None or rec["mean"] is None:
        return "-"
    return f"{rec['mean']:.4g}" + (f" +- {rec['sd']:.2g}" if rec["sd"] is not None else " (n=1)")


def _num(x, fmt=".2f"):
    return "-" if x is None else format(x, fmt)


def format_classes(meas, title="model", sets=("z_T", "z_0")):
    """A compact per-class table of class_measures output: log det g (mean +- sd) per point set, then the isolation
    (nearest class) and its chance level per set; then each set's silhouette and k-NN purity over all classes."""
    head = f"{'class':<6} {'n':>4}" + "".join(f" {'log det g ' + s:>19}" for s in sets) + \
        "".join(f" {'isolation ' + s:>20} {'chance':>6}" for s in sets)
    rows = [f"{title}: {meas['metric']}", head, "-" * len(head)]
    for c in CLASSES:
        r = f"{c:<6} {meas['counts'][c]:>4d}"
        for s in sets:
            ld = meas[s]["logdet"]
            r += f" {_pm(None if ld is None else ld[c]):>19}"
        for s in sets:
            iso = meas[s]["isolation"][c]
            near = f"{_num(iso['isolation'])} ({iso['nearest']})" if iso["isolation"] is not None else "-"
            r += f" {near:>20} {_num(meas[s]['isolation_chance'][c]):>6}"
        rows.append(r)
    for s in sets:
        a = meas[s]["all"]
        rows.append(f"{s}: silhouette {a['silhouette']:.3f}, kNN purity {a['knn_purity']:.3f} (chance "
                    f"{a['knn_chance']:.3f}, k = {a['k']}) over {a['n_classes']} classes")
    return "\n".join(rows)


def format_stats(stats):
    """A small fixed-width table of class_stats output."""
    head = f"{'points':<22} {'n':>4} {'C':>2} {'silhouette':>10} {'kNN purity':>10} {'chance':>7}"
    rows = [head, "-" * len(head)]
    for name, s in stats.items():
        rows.append(f"{name:<22} {s['n']:>4d} {s['n_classes']:>2d} {s['silhouette']:>10.3f} "
                    f"{s['knn_purity']:>10.3f} {s['knn_chance']:>7.3f}")
    return "\n".join(rows)


# ----------------------------------------------------------------------------- labels and the map

def label_tokens(tok, pred, lexicon):
    """Decoded endpoint tokens and their classes: -> (words list[str], labels array[str])."""
    words, labels = [], []
    for t in np.asarray(pred).tolist():
        if t == getattr(tok, "eos_id", None):
            words.append("<end>")
            labels.append("end")
            continue
        w = tok.decode([t])
        words.append(w.strip())
        labels.append(word_class(w, lexicon))
    return words, np.array(labels)


def _measure(theta, cfg, spec, tok, stories, si, pos, lexicon, k, targets=None):
    """Trajectories of one model at the sampled positions, labelled by its own endpoint predictions or, given
    targets [n], by the true next tokens (the same labels for every model)."""
    ids, col = context_batch(stories, si, pos, cfg.seq_len, tok.eos_id)
    run = run_trajectories(theta, cfg, spec, ids, col)
    words, labels = label_tokens(tok, run["pred"] if targets is None else targets, lexicon)
    pts = {"z_T": run["zT"], "z_0": run["z0"]}
    logdet = {name: point_logdet(theta, cfg, spec, Z) for name, Z in pts.items()}
    return run, words, labels, class_measures(pts, labels, logdet, metric_note(cfg), k=k)


def semantic_map(theta, cfg, spec, tok, stories, path=None, n=200, seed=0, lexicon=None, control=None,
                 k=10, grid_n=48, dpi=220, title="", label_by="predicted"):
    """Sample n trajectories of a Riemannian model on validation stories, label their endpoints, compute
    full-dimension statistics and (if path) draw the map.

    stories: list of model-id int arrays; tok: .decode(ids), .eos_id (also the right padding); control: optional
    (theta, cfg, spec) of the g = I run, sampled at the same positions. label_by "predicted": each model's points
    are classed by the token its head predicts at z_T (the write-up's reading of a map); "target": by the true next
    token, so the model and the control are compared on the same classes of the same points.
    Returns dict(stats={name: endpoint_stats}, classes={"model": class_measures, "control": ...},
    counts={class: n}, control_counts, words, labels, png, n, label_by).
    """
    if label_by not in LABEL_BY:
        raise ConfigError(f"label_by {label_by!r}: choose one of {', '.join(LABEL_BY)}")
    lexicon = load_lexicon() if lexicon is None else lexicon
    si, pos = sample_positions(stories, n, seed=seed)
    targets = next_tokens(stories, si, pos, tok.eos_id) if label_by == "target" else None
    run, words, labels, meas = _measure(theta, cfg, spec, tok, stories, si, pos, lexicon, k, targets)
    stats = {name: meas[base][view] for base in ("z_T", "z_0") for name, view in ((base, "no_other"),
                                                                                   (base + "/all", "all"))}
    out = {"n": int(n), "label_by": label_by, "counts": meas["counts"], "words": words, "labels": labels.tolist(),
           "png": None, "classes": {"model": meas}}
    if control is not None:
        c_theta, c_cfg, c_spec = control
        _, _, _, c_meas = _measure(c_theta, c_cfg, c_spec, tok, stories, si, pos, lexicon, k, targets)
        stats.update({"control " + name: c_meas[base][view] for base in ("z_T", "z_0")
                      for name, view in ((base, "no_other"), (base + "/all", "all"))})
        out["control_counts"] = c_meas["counts"]
        out["classes"]["control"] = c_meas
    out["stats"] = stats
    if path is not None:
        _, comps, mean = pca_2d(run["zT"])
        traj2d = project(run["traj"], comps, mean)                   # [S+1,n,D] -> [S+1,n,2]
        lim = plot_limits(traj2d)
        a, b, pts = plane_grid(comps, mean, lim, n=grid_n)
        L = logdet_landscape(theta, cfg, spec, pts)
        grid = (a, b, np.full((grid_n, grid_n), np.nan) if L is None else L.reshape(grid_n, grid_n))
        st = stats["z_T"]
        ttl = title or (f"semantic map: {n} trajectories, {cfg.ode_steps} RK4 steps, metric {cfg.metric}, "
                        f"r={cfg.rank}; z_T silhouette {st['silhouette']:.3f}, kNN purity {st['knn_purity']:.3f}")
        out["png"] = draw_semantic_map(path, traj2d, labels, words, grid=grid, title=ttl, dpi=dpi)
    return out

