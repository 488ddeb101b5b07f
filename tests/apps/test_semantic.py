import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geolm.apps import semantic, trajectories
from geolm.apps.riemann_run import run as run_riemann
from geolm.apps.riemann_settings import resolve_configs
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
    lab = lab.astype("<U5")  # room for "other" (the cluster labels are at most 4 characters)
    lab[::7] = "other"
    assert (lab == "other").sum() == 9
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
    # per-class log det g at the endpoints: the model's from its own metric, the control's is g = I's 0
    m, c = res["classes"]["model"], res["classes"]["control"]
    assert m["counts"] == res["counts"] and "learned" in m["metric"] and "g = I" in c["metric"]
    lab = np.array(res["labels"])
    for cls in semantic.CLASSES:
        rec = m["z_T"]["logdet"][cls]
        assert rec["n"] == (lab == cls).sum()
        if rec["n"]:
            assert np.isfinite(rec["mean"]) and rec["mean"] != 0.0
        crec = c["z_T"]["logdet"][cls]
        assert crec["mean"] in (None, 0.0) and crec["sd"] in (None, 0.0)
    assert set(m["z_T"]) == {"logdet", "isolation", "isolation_chance", "all", "no_other"}
    assert m["z_T"]["all"] == res["stats"]["z_T/all"] and c["z_0"]["all"] == res["stats"]["control z_0/all"]


def test_semantic_map_label_by_target_gives_model_and_control_the_same_classes(rng):
    theta, cfg, spec = _tiny_model(rng)
    ctrl = _tiny_model(rng, metric="identity")
    tok, st = _FakeTok(40), _stories(rng)
    res = semantic.semantic_map(theta, cfg, spec, tok, st, n=40, seed=3, control=ctrl, k=3, label_by="target")
    si, pos = trajectories.sample_positions(st, 40, seed=3)
    want = semantic.label_tokens(tok, trajectories.next_tokens(st, si, pos, tok.eos_id), semantic.load_lexicon())[1]
    assert res["labels"] == want.tolist() and res["label_by"] == "target"
    assert res["counts"] == res["control_counts"] and res["counts"]["end"] >= 5  # round(40 / 8) story ends
    pred = semantic.semantic_map(theta, cfg, spec, tok, st, n=40, seed=3, k=3)
    assert pred["label_by"] == "predicted" and pred["labels"] != res["labels"]
    with pytest.raises(ConfigError, match="label_by 'next'"):
        semantic.semantic_map(theta, cfg, spec, tok, st, n=4, label_by="next")


def test_semantic_map_no_ode_control(tmp_path, rng):
    theta, cfg, spec = _tiny_model(rng, no_ode=True)
    res = semantic.semantic_map(theta, cfg, spec, _FakeTok(40), _stories(rng), path=tmp_path / "n.png", n=12,
                                grid_n=6, dpi=50)
    assert res["png"] and res["stats"]["z_T/all"]["n"] == 12
    m = res["classes"]["model"]
    assert m["z_T"]["logdet"] is None and "no metric" in m["metric"]
    assert "-" in semantic.format_classes(m)


def test_semantic_map_logdet_matches_landscape(rng):
    theta, cfg, spec = _tiny_model(rng)
    st = _stories(rng)
    res = semantic.semantic_map(theta, cfg, spec, _FakeTok(40), st, n=20, seed=2, k=3)
    si, pos = trajectories.sample_positions(st, 20, seed=2)
    ids, col = trajectories.context_batch(st, si, pos, cfg.seq_len, 39)
    run = trajectories.run_trajectories(theta, cfg, spec, ids, col)
    lab = np.array(res["labels"])
    for name, key in (("z_T", "zT"), ("z_0", "z0")):
        L = trajectories.logdet_landscape(theta, cfg, spec, run[key])
        for cls in semantic.CLASSES:
            rec = res["classes"]["model"][name]["logdet"][cls]
            if rec["n"]:
                assert rec["mean"] == pytest.approx(L[lab == cls].mean(), rel=1e-12)


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "semantic_map.py"


def test_example_bad_checkpoint_one_line_exit_2(tmp_path):
    ex = EXAMPLE
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
    r = subprocess.run([sys.executable, str(ex), "--checkpoint", str(bad), "--label-by", "next"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "--label-by" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- per-class measures (issue 16 item 6)

def _rotate(rng, Z, d):
    """Embed 2-D points Z [N,2] in d dimensions by a random orthonormal map plus a shift (distances unchanged)."""
    Q = np.linalg.qr(rng.normal(size=(d, d)))[0][:2]              # [2,d] orthonormal rows
    return Z @ Q + rng.normal(size=d)


def test_value_stats_hand_computed():
    lab = np.array(["noun", "noun", "noun", "end", "other", "other"])
    vals = np.array([1.0, 2.0, 3.0, 5.0, 0.0, 4.0])
    st = semantic.value_stats(vals, lab)
    assert st["noun"] == {"n": 3, "mean": 2.0, "sd": 1.0, "note": ""}
    assert st["end"]["n"] == 1 and st["end"]["mean"] == 5.0 and st["end"]["sd"] is None
    assert "one point" in st["end"]["note"]
    assert st["verb"] == {"n": 0, "mean": None, "sd": None, "note": "no points"}
    assert st["other"]["mean"] == 2.0 and st["other"]["sd"] == pytest.approx(math.sqrt(8.0), abs=1e-12)


def test_centroid_isolation_planted_far_cluster(rng):
    # noun at (+-1, 0): centroid 0, RMS spread 1; verb at (10, +-1): centroid (10, 0), spread 1;
    # end at (0, 50 +- 1): centroid (0, 50), spread 1. Nearest to end: noun at 50 (verb at sqrt(2600) = 50.99).
    Z2 = np.array([[1, 0], [-1, 0], [10, 1], [10, -1], [0, 49], [0, 51]], dtype=float)
    lab = np.array(["noun", "noun", "verb", "verb", "end", "end"])
    for Z in (Z2, _rotate(rng, Z2, 7)):                          # full dimension: rotation/shift invariant
        iso = semantic.centroid_isolation(Z, lab)
        assert iso["end"]["nearest"] == "noun" and iso["end"]["isolation"] == pytest.approx(50.0, rel=1e-12)
        assert iso["end"]["spread"] == pytest.approx(1.0, rel=1e-12)
        assert iso["noun"]["nearest"] == "verb" and iso["noun"]["isolation"] == pytest.approx(10.0, rel=1e-12)
        assert iso["verb"]["centroid_distance"] == pytest.approx(10.0, rel=1e-12)
        assert iso["other"] == {"n": 0, "spread": None, "nearest": None, "centroid_distance": None,
                                "isolation": None, "note": "no points"}
    # unequal spread: end at (0, 50 +- 3) -> RMS spread 3, isolation 50 / 3
    Z3 = Z2.copy()
    Z3[4:, 1] = [47.0, 53.0]
    assert semantic.centroid_isolation(Z3, lab)["end"]["isolation"] == pytest.approx(50.0 / 3.0, rel=1e-12)
    # RMS, not mean distance: end points at distances 1, 1, 1, 3 from (0, 50) -> spread sqrt(12 / 4)
    Z4 = np.array([[1, 0], [-1, 0], [0, 51], [0, 49], [1, 50], [-3, 50]], dtype=float)
    lab4 = np.array(["noun", "noun", "end", "end", "end", "end"])
    mu = Z4[2:].mean(0)
    rms = np.sqrt(np.mean(np.sum((Z4[2:] - mu) ** 2, 1)))
    iso = semantic.centroid_isolation(Z4, lab4)["end"]
    assert iso["spread"] == pytest.approx(rms) and iso["isolation"] == pytest.approx(np.linalg.norm(mu) / rms)


def test_centroid_isolation_degenerate_classes(rng):
    Z = rng.normal(size=(5, 4))
    iso = semantic.centroid_isolation(Z, ["noun"] * 4 + ["end"])     # one end point
    assert iso["end"]["isolation"] is None and iso["end"]["spread"] == 0.0 and "one point" in iso["end"]["note"]
    assert iso["end"]["nearest"] == "noun" and iso["noun"]["isolation"] is not None
    iso = semantic.centroid_isolation(Z, ["verb"] * 5)                # a single class
    assert iso["verb"]["isolation"] is None and "no other class" in iso["verb"]["note"]
    Zs = np.concatenate([np.zeros((2, 4)), np.ones((2, 4))])           # zero spread
    iso = semantic.centroid_isolation(Zs, ["end", "end", "noun", "noun"])
    assert iso["end"]["isolation"] is None and "zero spread" in iso["end"]["note"]


def test_isolation_chance_below_planted(rng):
    Z = rng.normal(size=(80, 12))
    lab = np.array(["noun"] * 30 + ["verb"] * 30 + ["other"] * 12 + ["end"] * 8)
    Z[lab == "end"] += 6.0                                              # planted far end cluster
    iso = semantic.centroid_isolation(Z, lab)
    ch = semantic.isolation_chance(Z, lab, n_perm=20)
    assert iso["end"]["isolation"] > 4.0 and ch["end"] < 1.5
    assert iso["noun"]["isolation"] < 1.0                               # unplanted classes are not isolated
    assert ch == semantic.isolation_chance(Z, lab, n_perm=20)          # deterministic
    assert semantic.isolation_chance(Z[:1], lab[:1])["noun"] is None


def test_class_measures_and_table(rng):
    Z, lab = _clusters(rng, n_per=(20, 15, 6))
    lab = lab.astype("<U5")
    lab[[0, 1, 2]] = "other"
    z0 = rng.normal(size=Z.shape)
    ld = {"z_T": np.where(lab == "noun", -3.0, 1.0), "z_0": None}
    ld["z_T"][lab == "end"] = [4.0, 6.0, 4.0, 6.0, 4.0, 6.0]
    m = semantic.class_measures({"z_T": Z, "z_0": z0}, lab, ld, metric="test metric", k=5)
    assert m["counts"] == {"noun": 17, "verb": 15, "end": 6, "other": 3} and m["metric"] == "test metric"
    assert m["z_T"]["logdet"]["noun"]["mean"] == -3.0 and m["z_T"]["logdet"]["noun"]["sd"] == 0.0
    assert m["z_T"]["logdet"]["end"]["mean"] == 5.0
    assert m["z_T"]["logdet"]["end"]["sd"] == pytest.approx(math.sqrt(6.0 / 5.0), abs=1e-12)
    assert m["z_0"]["logdet"] is None
    assert m["z_T"]["all"]["silhouette"] > m["z_0"]["all"]["silhouette"]
    assert m["z_T"]["all"]["knn_purity"] > m["z_0"]["all"]["knn_purity"]
    assert m["z_T"]["all"]["n"] == 41 and m["z_T"]["no_other"]["n"] == 38
    assert m["z_T"]["isolation"]["end"]["isolation"] > 2 * m["z_0"]["isolation"]["end"]["isolation"]
    t = semantic.format_classes(m, title="model")
    assert t.startswith("model: test metric") and "-3 +- 0" in t and "5 +- 1.1" in t
    assert all(c in t for c in semantic.CLASSES) and "silhouette" in t
    # classes with 0 or 1 member print '-' and never crash
    lab1 = np.array(["noun"] * 40 + ["end"])
    m1 = semantic.class_measures({"z_T": Z, "z_0": z0}, lab1, {"z_T": np.zeros(41), "z_0": None}, k=5)
    assert m1["counts"]["verb"] == 0 and m1["z_T"]["logdet"]["end"]["sd"] is None
    t1 = semantic.format_classes(m1)
    assert "(n=1)" in t1 and "verb" in t1


TINY_RUN = dict(data="builtin", max_train_stories=120, max_val_stories=20, batch_size=4, warmup=2, val_batches=2,
                gen_tokens=0, map_points=0, threads=1, eval_every=3, log_every=1, dim=16, layers=1, heads=2,
                seq_len=16, vocab_size=300, hidden=8, field_hidden=16, ode_steps=2, steps=6)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A 6-step low-rank run and its g = I control on the built-in stories."""
    root = tmp_path_factory.mktemp("semantic_runs")
    run_riemann(*resolve_configs(dict(TINY_RUN, rank=2, output=str(root / "lowrank"))), progress=False)
    run_riemann(*resolve_configs(dict(TINY_RUN, metric="identity", output=str(root / "identity"))), progress=False)
    return root


def test_example_json_with_control(tiny_runs, tmp_path):
    js = tmp_path / "m.json"
    r = subprocess.run([sys.executable, str(EXAMPLE), "--checkpoint", str(tiny_runs / "lowrank"),
                        "--control-checkpoint", str(tiny_runs / "identity"), "--n", "24", "--k", "3", "--dpi", "50",
                        "--output", str(tmp_path / "m.png"), "--json", str(js)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "model: learned" in r.stdout and "control: g = I" in r.stdout and "isolation z_T" in r.stdout
    out = json.loads(js.read_text())
    assert sum(out["counts"].values()) == 24 and sum(out["control_counts"].values()) == 24
    for who in ("model", "control"):
        m = out["classes"][who]
        for name in ("z_T", "z_0"):
            assert set(m[name]["logdet"]) == set(semantic.CLASSES) == set(m[name]["isolation"])
            assert m[name]["all"]["n"] == 24
    ld = out["classes"]["control"]["z_T"]["logdet"]
    assert all(v["mean"] in (None, 0.0) for v in ld.values())
    assert out["checkpoint"].endswith(".npz") and out["control_checkpoint"] == str(tiny_runs / "identity")
