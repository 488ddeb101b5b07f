import math

import pytest

from geolm.apps.geometric_report import aggregate_seeds, mean_sd, table, write_curves


def _entry(ppl, losses, ppls):
    return {"val_ppl": ppl, "val_loss": math.log(ppl), "best_val_ppl": min(ppls), "params": 10, "seconds": 1.5,
            "epochs": [{"epoch": i + 1, "train_loss": a, "val_ppl": b} for i, (a, b) in enumerate(zip(losses, ppls))]}


PER_SEED = {0: {"m": _entry(10.0, [3.0, 2.0], [12.0, 10.0]), "bigram": {"val_ppl": 5.0, "params": 0, "epochs": []}},
            1: {"m": _entry(12.0, [3.5, 2.5], [13.0, 12.0]), "bigram": {"val_ppl": 5.0, "params": 0, "epochs": []}},
            2: {"m": _entry(14.0, [4.0, 2.0], [11.0, 14.0]), "bigram": {"val_ppl": 5.0, "params": 0, "epochs": []}}}


def test_mean_sd_by_hand():
    # 10, 12, 14: mean 12, squared deviations 4 + 0 + 4 = 8, sample variance 8 / 2 = 4, sd 2
    assert mean_sd([10.0, 12.0, 14.0]) == (12.0, 2.0, 3)
    assert mean_sd([1.0, None, float("nan"), 3.0]) == (2.0, math.sqrt(2.0), 2)
    assert mean_sd([7.0]) == (7.0, None, 1) and mean_sd([]) == (None, None, 0)


def test_aggregate_seeds_by_hand():
    agg = aggregate_seeds(PER_SEED)
    m = agg["m"]
    assert (m["val_ppl"], m["val_ppl_sd"], m["val_ppl_n"]) == (12.0, 2.0, 3)
    # best: 10, 12, 11 -> mean 11, deviations -1, 1, 0 -> sd sqrt(2 / 2) = 1
    assert (m["best_val_ppl"], m["best_val_ppl_sd"]) == (pytest.approx(11.0), pytest.approx(1.0))
    e1, e2 = m["epochs"]
    # epoch 1 train loss 3.0, 3.5, 4.0: mean 3.5, sd sqrt((0.25 + 0 + 0.25) / 2) = 0.5
    assert (e1["train_loss"], e1["train_loss_sd"]) == (pytest.approx(3.5), pytest.approx(0.5))
    # epoch 2 val ppl 10, 12, 14 -> 12 +- 2; train loss 2, 2.5, 2 -> mean 13/6, sd sqrt((1/36 + 4/36 + 1/36) / 2)
    assert (e2["val_ppl"], e2["val_ppl_sd"]) == (12.0, 2.0)
    assert e2["train_loss_sd"] == pytest.approx(math.sqrt(6 / 36 / 2))
    assert m["seeds"] == [0, 1, 2] and m["per_seed"]["1"]["val_ppl"] == 12.0 and m["seconds"] == 4.5
    assert agg["bigram"]["val_ppl"] == 5.0 and agg["bigram"]["val_ppl_sd"] == 0.0
    assert list(agg) == ["m", "bigram"]


def test_table_with_seeds_and_published_values():
    models = aggregate_seeds(PER_SEED)
    models["m"]["published"] = {"row": "Row", "mapping": "", "published": 10.0, "diff": 2.0, "rel": 0.2,
                                "train_loss": [3.1, 2.1], "train_loss_ours": [3.5, None]}
    out = table({"models": models, "seeds": [0, 1, 2],
                 "published": {"matched": "2k", "note": "the write-up's 2k setting (x)"}})
    lines = out.splitlines()
    assert "published" in lines[0] and "diff" in lines[0]
    assert "12.00 +- 2.00" in lines[1] and "10.00" in lines[1] and "+2.00 (+20%)" in lines[1]
    assert "mean +- sample sd over seeds 0,1,2" in out
    assert "m training loss per epoch: ours 3.500 -; published 3.100 2.100" in out


def test_curves_with_a_band(tmp_path):
    write_curves(tmp_path / "c.png", aggregate_seeds(PER_SEED), 2)
    assert (tmp_path / "c.png").stat().st_size > 1000
