import dataclasses

import pytest

from geolm.core.config import (ArgParser, add_args, aliases_of, canonical_keys, from_args, from_dict, opt, positive,
                               require)
from geolm.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Cfg:
    dim: int = opt(64, "model width")
    lr: float = opt(1e-3, "learning rate")
    metric: str = opt("lowrank", "metric kind", choices=["lowrank", "identity"])
    tied: bool = opt(False, "tie head to embedding")

    def __post_init__(self):
        positive(self, "dim", "lr")
        require(self.dim % 2 == 0, "dim", f"must be even, got {self.dim}")


def test_flags_roundtrip():
    p = add_args(ArgParser(), Cfg)
    cfg = from_args(Cfg, p.parse_args(["--dim", "32", "--lr", "0.5", "--metric", "identity", "--tied"]))
    assert cfg == Cfg(32, 0.5, "identity", True)
    assert from_dict(Cfg, dataclasses.asdict(cfg)) == cfg


def test_bad_values_name_the_flag():
    with pytest.raises(ConfigError, match="--dim"):
        Cfg(dim=-1)
    with pytest.raises(ConfigError, match="--dim: must be even"):
        Cfg(dim=3)
    with pytest.raises(ConfigError, match="unknown Cfg keys"):
        from_dict(Cfg, {"dim": 4, "width": 3})


def test_parser_error_is_one_line(capsys):
    p = add_args(ArgParser(), Cfg)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--metric", "dense"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


@dataclasses.dataclass(frozen=True)
class Aliased:
    max_train_stories: int = opt(2000, "first N training stories (--max-train: old spelling, deprecated)",
                                 aliases=("max_train",))
    data: str = opt("hub", "data (--dataset is the same option)", aliases=("dataset",))
    resume: bool = opt(False, "resume", aliases=("continue_run",))


def test_aliases_are_hidden_flags_of_the_same_option(capsys):
    p = add_args(ArgParser(), Aliased)
    assert from_args(Aliased, p.parse_args(["--max-train", "5", "--dataset", "x"])) == Aliased(5, "x")
    assert from_args(Aliased, p.parse_args(["--max-train-stories", "6"])) == Aliased(6)
    assert from_args(Aliased, p.parse_args(["--continue-run"])).resume is True
    assert from_args(Aliased, p.parse_args([])) == Aliased()
    assert vars(p.parse_args(["--max-train", "5"])).keys() == {"max_train_stories", "data", "resume"}
    with pytest.raises(SystemExit):
        p.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--max-train-stories" in out and "--max-train " not in out and "--max-train]" not in out
    assert "--dataset DATA" not in out and "--continue-run" not in out
    assert "--max-train: old spelling, deprecated" in " ".join(out.split())


def test_aliases_in_dicts():
    assert aliases_of(Aliased) == {"max_train": "max_train_stories", "dataset": "data", "continue_run": "resume"}
    assert canonical_keys(Aliased, {"max_train": 3, "data": "y"}) == {"max_train_stories": 3, "data": "y"}
    assert canonical_keys(Aliased, {"max_train": 3, "max_train_stories": 4}) == {"max_train_stories": 4}
    assert from_dict(Aliased, {"max_train": 7}) == Aliased(7)
