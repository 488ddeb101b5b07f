"""geolm.apps.riemann_settings: layered settings (defaults < checkpoint < file < overrides), configuration files and
their one-line errors, and the shipped presets."""
import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geolm.apps.riemann_settings import (TRAIN_DEFAULTS, load_config_file, resolve_configs, resume_configs)
from geolm.core.errors import ConfigError
from geolm.models.riemann_config import RiemannConfig
from geolm.training.checkpoint import save_checkpoint
from geolm.training.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_riemann.py"
PRESETS = sorted((ROOT / "examples" / "configs").glob("riemann_*.toml"))


def _example():
    spec = importlib.util.spec_from_file_location("train_riemann_example", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _file(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_layers_defaults_file_overrides(tmp_path):
    f = _file(tmp_path, "[model]\ndim = 24\nrank = 3\n[train]\nlr = 1e-2\nsteps = 7\n[run]\nmax_val = 9\n")
    cfg, tcfg, rc = resolve_configs({"dim": 32, "steps": 5}, config_file=f)
    assert (cfg.dim, cfg.rank) == (32, 3)  # flag > file > default
    assert (tcfg.lr, tcfg.steps, tcfg.batch_size) == (1e-2, 5, TRAIN_DEFAULTS["batch_size"])
    assert rc.max_val_stories == 9 and rc.output == "runs/riemann" and cfg.heads == RiemannConfig.heads


def test_command_line_flags_override_the_file(tmp_path):
    f = _file(tmp_path, "[model]\ndim = 24\nrank = 3\nheads = 2\n[train]\nbatch_size = 4\n")
    cfg, tcfg, rc, cf = _example().parse(["--config", str(f), "--rank", "5", "--batch-size=8"])
    assert (cfg.dim, cfg.rank, cfg.heads, tcfg.batch_size, cf) == (24, 5, 2, 8, str(f))
    cfg, _, _, _ = _example().parse(["--config", str(f), "--no-ode"])  # a preset's plain-Transformer control
    assert cfg.no_ode and cfg.dim == 24 and cfg.rank == RiemannConfig.rank


def test_json_file_and_int_for_float(tmp_path):
    f = _file(tmp_path, json.dumps({"model": {"eps": 1, "dim": 16, "heads": 2}, "run": {"val_data": None}}), "c.json")
    cfg, _, rc = resolve_configs(config_file=f)
    assert cfg.eps == 1.0 and isinstance(cfg.eps, float) and rc.val_data is None


@pytest.mark.parametrize("text, needles", [
    ("[model]\ndimm = 3\n", ["'dimm'", "did you mean 'dim'"]),
    ("[model]\nflux = 3\n", ["'flux'", "unknown key"]),
    ("[model]\ndim = \"128\"\n", ["dim", "an integer", "dim = 1"]),
    ("[train]\nlr = true\n", ["lr", "a number"]),
    ("[model]\ntie_head = 1\n", ["tie_head", "true or false"]),
    ("[model]\nlr = 0.1\n", ["lr belongs in [train]"]),
    ("dim = 3\n", ["'dim'", "under [model]"]),
    ("[optim]\nlr = 0.1\n", ["[optim]", "[model], [train] and [run]"]),
    ("[model]\nn_vocab = 3\n", ["n_vocab", "tokenizer"]),
    ("[run]\nresume = \"x\"\n", ["resume", "--resume"]),
    ("[model\ndim = 3\n", ["not valid TOML"]),
])
def test_bad_files_are_one_line_errors_naming_the_key(tmp_path, text, needles):
    f = _file(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config_file(f)
    msg = str(e.value)
    assert "\n" not in msg and str(f) in msg, msg
    for n in needles:
        assert n in msg, msg


def test_values_out_of_range_are_caught_by_the_dataclasses(tmp_path):
    with pytest.raises(ConfigError, match="--rank"):
        resolve_configs(config_file=_file(tmp_path, "[model]\ndim = 16\nrank = 17\n"))
    with pytest.raises(ConfigError, match="unknown settings"):
        resolve_configs({"dimm": 3})


def test_resume_takes_the_checkpoint_then_the_file_then_the_overrides(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg0 = RiemannConfig(dim=16, heads=2, rank=4, n_vocab=50)
    tcfg0 = TrainConfig(**dict(TRAIN_DEFAULTS, steps=6, lr=2e-3, threads=1))
    meta = dict(family="riemann", cfg=cfg0, tcfg=tcfg0, extra=dict(data="builtin", max_train=50, min_frequency=2))
    save_checkpoint(run, 3, np.zeros(4, np.float32), meta)
    cfg, tcfg, rc = resume_configs(run, {"steps": 9})
    assert (cfg.dim, cfg.rank, cfg.n_vocab, tcfg.lr, tcfg.steps, tcfg.threads) == (16, 4, 0, 2e-3, 9, 0)
    assert (rc.data, rc.max_train_stories, rc.min_count, rc.resume, rc.output) == ("builtin", 50, 2, str(run),
                                                                                "runs/riemann")
    f = _file(tmp_path, "[model]\nrank = 8\n[train]\nlr = 1e-3\n")
    cfg, tcfg, _ = resume_configs(run, {"lr": 5e-4}, config_file=f)
    assert (cfg.rank, cfg.dim, tcfg.lr) == (8, 16, 5e-4)


@pytest.mark.parametrize("path", PRESETS, ids=[p.name for p in PRESETS])
def test_presets_load_and_validate(path):
    cfg, tcfg, rc = resolve_configs(config_file=path)
    assert set(load_config_file(path)) <= {f.name for c in (RiemannConfig, TrainConfig) for f in
                                           dataclasses.fields(c)} | set(dataclasses.asdict(rc))
    assert (cfg.seq_len, tcfg.batch_size, cfg.eps, cfg.alpha, cfg.ode_steps) == (192, 32, 0.1, 1.0, 4)
    assert (cfg.lambda_field, cfg.lambda_metric) == (1e-3, 1e-5) and not cfg.no_ode


def test_preset_shapes():
    w, _, _ = resolve_configs(config_file=ROOT / "examples" / "configs" / "riemann_writeup.toml")
    t, _, _ = resolve_configs(config_file=ROOT / "examples" / "configs" / "riemann_third.toml")
    assert (w.dim, w.rank, w.hidden, w.field_hidden) == (384, 24, 128, 4 * 384)
    assert (t.dim, t.rank, t.field_hidden) == (128, 8, 4 * 128)
    assert t.rank / t.dim == w.rank / w.dim and round(64 / 384 * t.dim) == 21
    assert round(w.hidden / w.dim * t.dim) == t.hidden


def test_cli_bad_config_one_line_exit_2(tmp_path):
    f = _file(tmp_path, "[model]\nrnak = 3\n")
    r = subprocess.run([sys.executable, str(SCRIPT), "--config", str(f), "--output", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "'rnak'" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_old_flag_spellings_are_hidden_aliases():
    ex = _example()
    p = ex.build_parser()
    old = ex.explicit_flags(p, ["--max-train", "40", "--max-val", "10", "--min-frequency", "3"])
    new = ex.explicit_flags(p, ["--max-train-stories", "40", "--max-val-stories", "10", "--min-count", "3"])
    assert old == new == {"max_train_stories": 40, "max_val_stories": 10, "min_count": 3}
    helptext = p.format_help()
    assert "--max-train-stories" in helptext and "--min-count" in helptext
    assert "--max-train " not in helptext and "--max-val " not in helptext and "--min-frequency " not in helptext


def test_old_names_as_file_keys_and_overrides(tmp_path):
    f = _file(tmp_path, "[run]\nmax_train = 40\nmin_frequency = 3\n")
    _, _, rc = resolve_configs({"max_val": 7}, config_file=f)
    assert (rc.max_train_stories, rc.min_count, rc.max_val_stories) == (40, 3, 7)
