import pytest

from geolm.apps.geometric_config import GeoRunConfig
from geolm.apps.published import PUBLISHED, SETTINGS, compare, differences, run_setting


def _models():
    return {"bigram": {"val_ppl": 170.0, "epochs": []},
            "geo_abs": {"val_ppl": 250.0, "epochs": [{"epoch": e, "train_loss": 6.0 - 0.1 * e} for e in range(1, 6)]},
            "geo_abs_kappa": {"val_ppl": 310.0, "epochs": []},
            "geo_abs_kappa_fit": {"val_ppl": 240.0, "epochs": []}}


def test_the_writeups_setting_matches_and_puts_the_figures_beside_ours():
    ours = run_setting(GeoRunConfig(), {"train_stories": 2000, "source": "hub roneneldan/TinyStories (...)"})
    c = compare(ours, _models())
    assert c["matched"] == "2k" and "the write-up's 2k setting" in c["note"]
    m = c["models"]
    assert m["bigram"]["published"] == 175.7 and m["bigram"]["diff"] == pytest.approx(170.0 - 175.7)
    assert m["bigram"]["rel"] == pytest.approx((170.0 - 175.7) / 175.7)
    assert m["geo_abs"]["published"] == 282.8 and m["geo_abs_kappa"]["published"] == 304.5
    assert m["geo_abs"]["train_loss"] == [6.006, 5.831, 5.741, 5.668, 5.616]
    assert m["geo_abs"]["train_loss_ours"] == pytest.approx([5.9, 5.8, 5.7, 5.6, 5.5])
    assert m["geo_abs"]["train_loss_diff"][0] == pytest.approx(5.9 - 6.006)
    assert "geo_abs_kappa_fit" not in m  # no published figure


def test_a_different_setting_says_which_settings_differ():
    cfg = GeoRunConfig(epochs=2, lr=1e-3)
    c = compare(run_setting(cfg, {"train_stories": 300, "source": "local files x"}), _models())
    assert c["matched"] is None and c["models"] == {}
    assert "2k differs in stories 300 (published 2000), epochs 2 (published 5), lr 0.001 (published 0.0001)" \
        in c["note"]
    assert "20k differs in stories 300 (published 20000), epochs 2 (published 15)" in c["note"]


def test_the_built_in_generator_never_matches():
    ours = run_setting(GeoRunConfig(), {"train_stories": 2000, "source": "built-in geolm story generator (...)"})
    assert differences(ours, SETTINGS["2k"]) == {"data": ("built-in generator", "TinyStories")}
    assert compare(ours, _models())["matched"] is None


def test_the_20k_rows():
    ours = run_setting(GeoRunConfig(epochs=15, max_train_stories=20000),
                       {"train_stories": 20000, "source": "hub roneneldan/TinyStories"})
    res = {n: {"val_ppl": 50.0, "epochs": []} for n in ("bigram", "trigram", "hybrid", "hybrid_kappa",
                                                         "geo_attention", "geo_rot_nbrs", "geo_abs", "geo_rot")}
    c = compare(ours, res)
    assert c["matched"] == "20k"
    got = {n: v["published"] for n, v in c["models"].items()}
    assert got == {"bigram": 72.97, "trigram": 32.02, "hybrid": 43.24, "hybrid_kappa": 43.81, "geo_attention": 55.54,
                   "geo_rot_nbrs": 126.85, "geo_abs": 145.08, "geo_rot": 272.98}
    assert c["models"]["geo_attention"]["mapping"].startswith("inferred")
    assert all(f.setting in SETTINGS for f in PUBLISHED)
