import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geolm.apps.data_scaling import size_configs, trend
from geolm.apps.geometric_config import GeoRunConfig
from geolm.core.errors import ConfigError
from geolm.data.builtin import builtin_corpus

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "data_scaling.py"


def test_trend_is_a_log_log_line_over_the_large_sizes():
    pts = [(250, 999.0), (1000, 100.0), (2000, 100.0 * 2 ** -0.5), (4000, 50.0)]  # ppl ~ n^-0.5 from 1000 on
    slope, at = trend(pts, target=16000)
    assert slope == pytest.approx(-0.5) and at == pytest.approx(25.0)
    assert trend([(250, 9.0), (1000, 5.0)]) == (None, None)


def test_every_size_shares_tokenizer_validation_and_rates(tmp_path):
    cfg = GeoRunConfig(data="d", model_lr="trigram=3e-3", output=str(tmp_path))
    rows = size_configs(cfg, [500, 250, 3000], extra_data="x.txt")
    assert [r[0] for r in rows] == ["250", "500", "3000", "3000+extra"]
    assert {r[3].tokenizer_stories for r in rows} == {2000} and {r[3].kappa_holdout for r in rows} == {0}
    assert {r[3].model_lr for r in rows} == {"trigram=3e-3"} and rows[-1][3].extra_data == "x.txt"
    assert rows[0][3].extra_data is None and rows[0][3].output == str(tmp_path / "n250")
    with pytest.raises(ConfigError, match="--sizes"):
        size_configs(cfg, [0])


def test_quick_script_with_an_extra_file(tmp_path):
    extra = tmp_path / "extra.txt"
    extra.write_text("".join(s + "\n<|endoftext|>\n" for s in builtin_corpus(9, 0, seed=3)[0]))
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--extra-data", str(extra), "--output",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=240,
                       env={**os.environ, "GEOLM_MPI": "0"})
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "out" / "scaling.json").read_text())
    assert res["labels"] == ["10", "20", "40", "40+extra"] and "+ 9 extra training stories" in res["extra"]
    tri = res["models"]["trigram"]
    assert [p[0] for p in tri["points"]] == [10, 20, 40, 49]
    assert all(math.isclose(g[1], 1.0) for g in tri["gap"]) and res["models"]["trigram"]["published_20k"] == 32.02
    geo = res["models"]["geo_abs"]
    assert geo["gap"][0][1] == pytest.approx(geo["points"][0][1] / tri["points"][0][1])
    assert (tmp_path / "out" / "scaling.png").stat().st_size > 0 and "gap to the trigram" in r.stdout
