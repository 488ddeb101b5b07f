import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geolm.apps.geometric_config import GeoRunConfig
from geolm.apps.geometric_tuning import select_lrs, selection_table, tuned_models
from geolm.core.errors import ConfigError

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "tune_geometric.py"
TINY = dict(data="builtin", max_train_stories=30, max_val_stories=6, vocab_size=200, kappa_holdout=15, epochs=2,
            jobs=1)


def test_tuned_models_skip_controls_and_kappa_but_keep_their_bases():
    assert tuned_models(["bigram", "geo_shuffled", "hybrid_kappa", "trigram", "geo_abs"]) == ["hybrid", "trigram",
                                                                                              "geo_abs"]
    assert tuned_models(["bigram", "geo_successor_shuffled"]) == []


def test_selection_scores_heldout_picks_the_lowest_final_ppl_and_never_reads_validation(tmp_path, monkeypatch):
    import geolm.apps.geometric_tuning as T
    seen = []
    real_run = T.run

    def spy(cfg, **kw):
        seen.append(cfg)
        return real_run(cfg, **kw)

    monkeypatch.setattr(T, "run", spy)
    cfg = GeoRunConfig(**TINY, models="trigram,geo_abs,geo_shuffled", output=str(tmp_path))
    tuning = select_lrs(cfg, lrs=(1e-3, 3e-2), progress=False)
    assert [c.eval_on for c in seen] == ["heldout", "heldout"] and all(c.models == "trigram,geo_abs" for c in seen)
    for name, by in tuning["models"].items():
        finals = {float(k): v["final"] for k, v in by.items()}
        assert tuning["chosen"][name] == min(finals, key=finals.get)
        assert len(by["0.001"]["epochs"]) == 2
    assert tuning["heldout_source"].startswith("held-out training stories 30..44")
    assert json.loads((tmp_path / "tuning.json").read_text())["chosen"] == tuning["chosen"]
    assert "*" in selection_table(tuning)
    seen.clear()
    assert select_lrs(cfg, lrs=(1e-3, 3e-2), progress=False)["chosen"] == tuning["chosen"] and not seen  # reused
    again = dataclasses.replace(cfg, resume=True)
    assert select_lrs(again, lrs=(1e-3, 3e-2), progress=False)["chosen"] == tuning["chosen"] and not seen
    from geolm.apps.geometric_run import finished_run
    done = dataclasses.replace(cfg, lr=1e-3, model_lr=None, eval_on="heldout", models="trigram,geo_abs",
                              output=str(tmp_path / "select" / "lr0.001"))
    assert finished_run(done) is not None and finished_run(dataclasses.replace(done, epochs=1)) is None


def test_bad_lrs_and_nothing_to_tune_are_one_line_errors(tmp_path):
    cfg = GeoRunConfig(**TINY, models="bigram,geo_shuffled", output=str(tmp_path))
    with pytest.raises(ConfigError, match="--models: no model to tune"):
        select_lrs(cfg, progress=False)
    with pytest.raises(ConfigError, match="--lrs: needs learning rates > 0"):
        select_lrs(GeoRunConfig(**TINY, output=str(tmp_path)), lrs=(-1.0,), progress=False)


def test_quick_script_writes_the_tuned_table_with_per_model_rates(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--output", str(tmp_path)], capture_output=True,
                       text=True, timeout=240, env={**os.environ, "GEOLM_MPI": "0"})
    assert r.returncode == 0, r.stderr[-2000:]
    tuning = json.loads((tmp_path / "tuning.json").read_text())
    res = json.loads((tmp_path / "table" / "results.json").read_text())
    assert res["seeds"] == [0, 1] and res["tuning"]["chosen"] == tuning["chosen"]
    m = res["models"]
    assert m["trigram"]["lr"] == tuning["chosen"]["trigram"] and m["geo_shuffled"]["lr"] == tuning["chosen"]["geo_abs"]
    ep = m["geo_abs"]["epochs"]
    assert len(ep) == 2 and all(e["train_loss"] is not None and e["val_loss"] is not None for e in ep)
    assert (tmp_path / "table" / "losses.png").stat().st_size > 0 and "held-out perplexity" in r.stdout
    assert "lr per-model" in r.stdout  # the published matcher names the per-model rates as the difference
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--lrs", "1e-3,x", "--output", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--lrs" in r.stderr
