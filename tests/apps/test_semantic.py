import numpy as np
import pytest

from geolm.apps import semantic
from geolm.core.errors import ConfigError, DataError
from tiny_riemann import stories as _stories, tiny_model as _tiny_model


def _silhouette_naive(Z, labels):
    Z = np.asarray(Z, dtype=np.float64)
    labels = list(labels)
    N = len(labels)
    classes = sorted(set(labels))
    s = []
    for i in range(N):
        d = {c: [] for c in classes}
        for j in range(N):
            if j != i:
                d[labels[j]].append(float(np.linalg.norm(Z[i] - Z[j])))
        own = d[labels[i]]
        if not own:
            s.append(0.0)
            continue
        a = sum(own) / len(own)
        b = min(sum(v) / len(v) for c, v in d.items() if c != labels[i] and v)
        s.append((b - a) / max(a, b))
    return sum(s) / N


def _clusters(rng, n_per=(30, 25, 20), d=40, sep=6.0):
    Z, lab = [], []
    for c, n in enumerate(n_per):
        centre = rng.normal(size=d) * sep / np.sqrt(d) * 3
        Z.append(centre + rng.normal(size=(n, d)) * 0.5)
        lab += [["noun", "verb", "end"][c]] * n
    return np.concatenate(Z), np.array(lab)


def test_lexicon_shipped_and_word_class():
    lex = semantic.load_lexicon()
    assert len(lex) >= 300
    assert set(lex.values()) == {"noun", "verb"}
    assert semantic.word_class(" tree", lex) == "noun"
    assert semantic.word_class(" Smiled", lex) == "verb"
    assert semantic.word_class("decided.", lex) == "verb"
    assert semantic.word_class(" the", lex) == "other"
    assert semantic.word_class("<|endoftext|>", lex) == "end"
    assert semantic.word_class("  ", lex) == "other"
    for w in ("town", "garden", "boat", "car", "friends"):
        assert lex[w] == "noun"
    for w in ("realized", "started", "played"):
        assert lex[w] == "verb"


def test_lexicon_bad_file(tmp_path):
    p = tmp_path / "lex.txt"
    p.write_text("tree\tnoun\nrun verb\n")
    with pytest.raises(DataError, match="line 2"):
        semantic.load_lexicon(p)
    with pytest.raises(DataError):
        semantic.load_lexicon(tmp_path / "missing.txt")
    p.write_text("# only a comment\n")
    with pytest.raises(DataError):
        semantic.load_lexicon(p)


def test_silhouette_matches_naive(rng):
    Z = rng.normal(size=(23, 5))
    labels = rng.choice(["a", "b", "c"], size=23)
    labels[0] = "d"  # singleton class -> s = 0 for that point
    assert semantic.silhouette(Z, labels) == pytest.approx(_silhouette_naive(Z, labels), abs=1e-12)


def test_knn_purity_matches_naive(rng):
    Z = rng.normal(size=(17, 4))
    labels = rng.integers(0, 3, size=17)
    k = 4
    ref = []
    for i in range(17):
        d = np.linalg.norm(Z - Z[i], axis=1)
        d[i] = np.inf
        nb = np.argsort(d)[:k]
        ref.append(np.mean(labels[nb] == labels[i]))
    assert semantic.knn_purity(Z, labels, k=k) == pytest.approx(np.mean(ref), abs=1e-12)


def test_endpoint_stats_clusters_vs_random(rng):
    Z, lab = _clusters(rng)
    st = semantic.endpoint_stats(Z, lab, k=10)
    assert st["silhouette"] > 0.5
    assert st["knn_purity"] > 0.95
    assert st["n"] == 75 and st["n_classes"] == 3
    # same points, labels shuffled: chance level
    sh = rng.permutation(lab)
    st_r = semantic.endpoint_stats(Z, sh, k=10)
    assert abs(st_r["silhouette"]) < 0.1
    assert abs(st_r["knn_purity"] - st_r["knn_chance"]) < 0.12
    # unstructured points, random labels
    st_u = semantic.endpoint_stats(rng.normal(size=(150, 40)), rng.choice(list("ab"), 150), k=10)
    assert abs(st_u["silhouette"]) < 0.05
    assert abs(st_u["knn_purity"] - 0.5) < 0.1


def test_endpoint_stats_degenerate_and_bad(rng):
    st = semantic.endpoint_stats(rng.normal(size=(5, 3)), ["noun"] * 5)
    assert np.isnan(st["silhouette"]) and st["knn_purity"] == 1.0
    with pytest.raises(ConfigError):
        semantic.endpoint_stats(rng.normal(size=(5, 3)), ["a"] * 4)


def test_endpoint_stats_full_dimension_not_2d(rng):
    # classes separated only along dimensions 10..19: a 2-D view of dims 0..1 would see nothing
    Z = rng.normal(size=(60, 20)) * 0.1
    lab = np.array(["noun"] * 30 + ["verb"] * 30)
    Z[:30, 10:] += 3.0
    assert semantic.endpoint_stats(Z, lab)["silhouette"] > 0.8
    assert abs(semantic.endpoint_stats(Z[:, :2], lab)["silhouette"]) < 0.2


def test_class_stats_drops_other(rng):
    Z, lab = _clusters(rng, n_per=(20, 20, 20))
    lab = lab.copy()
    lab[::7] = "other"
    st = semantic.class_stats({"z_T": Z, "z_0": rng.normal(size=Z.shape)}, lab, k=5)
    assert set(st) == {"z_T", "z_T/all", "z_0", "z_0/all"}
    assert st["z_T"]["n"] == int((lab != "other").sum()) and st["z_T/all"]["n"] == 60
    assert st["z_T"]["silhouette"] > st["z_0"]["silhouette"]
    table = semantic.format_stats(st)
    assert "z_T/all" in table and "silhouette" in table


def test_pca_2d(rng):
    d = 12
    basis = np.linalg.qr(rng.normal(size=(d, 2)))[0].T     # [2,d] orthonormal
    coef = rng.normal(size=(50, 2)) * np.array([5.0, 1.0])
    Z = (coef @ basis + 3.0).astype(np.float32)
    coords, comps, mean = semantic.pca_2d(Z)
    assert coords.shape == (50, 2) and comps.shape == (2, d) and mean.shape == (d,)
    np.testing.assert_allclose(comps @ comps.T, np.eye(2), atol=1e-10)
    # recovers the plane: reconstruction is exact
    np.testing.assert_allclose(mean + coords @ comps, Z, atol=1e-4)
    assert coords[:, 0].var() > coords[:, 1].var()
    np.testing.assert_allclose(semantic.project(Z, comps, mean), coords, atol=1e-10)
    # one point / rank-1 data work
    c1, k1, _ = semantic.pca_2d(Z[:1])
    assert c1.shape == (1, 2) and np.all(c1 == 0.0) and k1.shape == (2, d)


def test_plane_grid(rng):
    _, comps, mean = semantic.pca_2d(rng.normal(size=(30, 6)))
    a, b, pts = semantic.plane_grid(comps, mean, (-1.0, 1.0, -2.0, 2.0), n=5)
    assert pts.shape == (25, 6)
    ab = semantic.project(pts, comps, mean).reshape(5, 5, 2)
    np.testing.assert_allclose(ab[..., 0], np.broadcast_to(a, (5, 5)), atol=1e-10)
    np.testing.assert_allclose(ab[..., 1], np.broadcast_to(b[:, None], (5, 5)), atol=1e-10)


class _FakeTok:
    """Word-level stand-in for the BPE tokenizer: ids -> ' word'."""

    def __init__(self, V):
        base = ["tree", "boat", "garden", "smiled", "played", "decided", "the", "and", "a", "."]
        self.words = [base[i % len(base)] for i in range(V - 3)] + ["<unk>", "<pad>", "<|endoftext|>"]
        self.unk_id, self.pad_id, self.eos_id = V - 3, V - 2, V - 1
        self.V = V

    def decode(self, ids):
        return "".join(" " + self.words[i] for i in ids)




def test_semantic_map_end_to_end(tmp_path, rng):
    theta, cfg, spec = _tiny_model(rng)
    ctrl = _tiny_model(rng, metric="identity")
    tok = _FakeTok(40)
    res = semantic.semantic_map(theta, cfg, spec, tok, _stories(rng), path=tmp_path / "m.png", n=30, seed=1,
                                control=ctrl, k=5, grid_n=10, dpi=60)
    assert (tmp_path / "m.png").stat().st_size > 5000
    assert sum(res["counts"].values()) == 30 and sum(res["control_counts"].values()) == 30
    assert {"z_T", "z_0", "control z_T", "control z_0", "z_T/all"} <= set(res["stats"])
    assert res["stats"]["z_T/all"]["n"] == 30
    assert len(res["words"]) == 30 and set(res["labels"]) <= set(semantic.CLASSES)


def test_semantic_map_no_ode_control(tmp_path, rng):
    theta, cfg, spec = _tiny_model(rng, no_ode=True)
    res = semantic.semantic_map(theta, cfg, spec, _FakeTok(40), _stories(rng), path=tmp_path / "n.png", n=12,
                                grid_n=6, dpi=50)
    assert res["png"] and res["stats"]["z_T/all"]["n"] == 12


def test_example_bad_checkpoint_one_line_exit_2(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    ex = Path(__file__).resolve().parents[2] / "examples" / "semantic_map.py"
    r = subprocess.run([sys.executable, str(ex), "--checkpoint", str(tmp_path / "missing")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    bad = tmp_path / "ckpt_000000001.npz"
    bad.write_bytes(b"not a zip")
    r = subprocess.run([sys.executable, str(ex), "--checkpoint", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, str(ex), "--checkpoint", str(bad), "--n", "1"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "--n" in r.stderr
