import dataclasses

import pytest

from geolm.core.config import ArgParser, add_args, from_args, from_dict, opt, positive, require
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
