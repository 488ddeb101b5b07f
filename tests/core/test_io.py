import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from geolm.core.io import atomic_dir, atomic_write, json_safe, write_json


def test_json_safe_is_strict_json():
    @dataclass
    class C:
        a: float = math.nan

    x = {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "np": np.float32(1.5), "arr": np.arange(3),
         "path": Path("/x"), "dc": C(), "t": (1, 2), 3: None}
    out = json_safe(x)
    assert out == {"nan": "nan", "inf": "inf", "ninf": "-inf", "np": 1.5, "arr": [0, 1, 2], "path": "/x",
                   "dc": {"a": "nan"}, "t": [1, 2], "3": None}
    json.dumps(out, allow_nan=False)  # raises on a float NaN/inf left behind


def test_atomic_write_kinds_and_no_leftovers(tmp_path):
    atomic_write(tmp_path / "a.txt", "hello")
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    atomic_write(tmp_path / "c.npy", lambda f: np.save(f, np.arange(4)))
    write_json(tmp_path / "d.json", {"x": math.nan})
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert np.load(tmp_path / "c.npy").tolist() == [0, 1, 2, 3]
    assert json.loads((tmp_path / "d.json").read_text()) == {"x": "nan"}
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.bin", "c.npy", "d.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write(p, "old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("cut")

    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    def fill(d, text):
        (d / "a.txt").write_text(text)

    atomic_dir(tmp_path / "d", lambda d: fill(d, "one"))
    atomic_dir(tmp_path / "d", lambda d: fill(d, "two"))  # an existing directory is replaced
    assert (tmp_path / "d" / "a.txt").read_text() == "two"

    def boom(d):
        fill(d, "half")
        raise OSError("cut")

    with pytest.raises(OSError):
        atomic_dir(tmp_path / "d", boom)
    assert (tmp_path / "d" / "a.txt").read_text() == "two" and os.listdir(tmp_path) == ["d"]
