import json
import zipfile
from dataclasses import dataclass

import numpy as np
import pytest

from geolm.training import checkpoint as ck
from geolm.training.checkpoint import (FORMAT, check_config, latest_checkpoint, list_checkpoints, list_snapshots,
                                      load_checkpoint, load_snapshot, remove_snapshot, save_checkpoint, save_snapshot)
from geolm.core.errors import CheckpointError, NumericalError
from geolm.core.params import ParamSpec


@dataclass(frozen=True)
class Cfg:
    dim: int = 64
    rank: int = 4
    act: str = "gelu"


SPEC = ParamSpec({"emb": {"w": (5, 3)}, "b": (3,)})


def _save(d, step, dtype=np.float32, rng=None, **kw):
    rng = rng or np.random.default_rng(step)
    theta = rng.normal(size=SPEC.size).astype(dtype)
    meta = dict(family="riemann", cfg=Cfg(), spec=json.loads(SPEC.to_json()), tokenizer="abc123",
                train=dict(step=step, sampler={"epoch": 1, "pos": 2}))
    arrays = dict(adam_m=theta * 0.5, adam_v=theta * theta)
    return save_checkpoint(d, step, theta, meta, arrays, **kw), theta


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_bit_exact_and_pickle_free(tmp_path, dtype):
    p, theta = _save(tmp_path, 7, dtype)
    c = load_checkpoint(p, expect_family="riemann", expect_cfg=Cfg(), expect_spec=SPEC, expect_tokenizer="abc123")
    assert c.theta.dtype == dtype and np.array_equal(c.theta, theta)
    assert np.array_equal(c.arrays["adam_v"], theta * theta)
    assert c.step == 7 and c.family == "riemann" and c.train["sampler"] == {"epoch": 1, "pos": 2}
    assert c.meta["format"] == FORMAT and c.meta["geolm_version"] and c.meta["cfg"] == {"dim": 64, "rank": 4,
                                                                                          "act": "gelu"}
    with np.load(p, allow_pickle=False) as z:  # nothing needs pickle
        assert all(z[k].dtype != object for k in z.files)


def test_keeps_newest_k_and_loads_the_latest(tmp_path):
    for s in (1, 2, 3, 10, 11):
        _save(tmp_path, s, keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_000000003.npz", "ckpt_000000010.npz",
                                                            "ckpt_000000011.npz"]
    assert load_checkpoint(tmp_path).step == 11


def test_partial_temp_file_from_a_crash_is_ignored_and_cleaned(tmp_path):
    good, theta = _save(tmp_path, 4)
    data = good.read_bytes()
    tmp = tmp_path / ".ckpt_000000008.npz.999.tmp"  # writer killed mid-write
    tmp.write_bytes(data[: len(data) // 2])
    c = load_checkpoint(tmp_path)
    assert c.step == 4 and np.array_equal(c.theta, theta)
    _save(tmp_path, 5)
    assert not tmp.exists()


def test_crash_inside_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    good, theta = _save(tmp_path, 4)

    def boom(f, **kw):
        f.write(b"PK\x03\x04partial")
        raise OSError("disk full")
    monkeypatch.setattr(ck.np, "savez", boom)
    with pytest.raises(OSError):
        _save(tmp_path, 6)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == [good.name]
    assert np.array_equal(load_checkpoint(tmp_path).theta, theta)


def test_non_finite_is_never_written(tmp_path):
    good, _ = _save(tmp_path, 2)
    theta = np.ones(SPEC.size, np.float32)
    theta[3] = np.nan
    with pytest.raises(NumericalError, match="non-finite 'theta'"):
        save_checkpoint(tmp_path, 3, theta, {"family": "x"})
    m = np.ones(SPEC.size)
    m[0] = np.inf
    with pytest.raises(NumericalError, match="adam_m"):
        save_checkpoint(tmp_path, 3, np.ones(SPEC.size), {"family": "x"}, {"adam_m": m})
    assert list_checkpoints(tmp_path) == [good] and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_corrupt_file_is_refused_with_one_line(tmp_path, damage):
    p, _ = _save(tmp_path, 9)
    data = bytearray(p.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 200]
    elif damage == "flip":
        with zipfile.ZipFile(p) as z:
            info = z.getinfo("theta.npy")
        off = info.header_offset + 30 + len(info.filename) + len(info.extra) + 140  # inside theta's bytes
        data[off] ^= 0xFF
    elif damage == "empty":
        data = b""
    else:
        data = b"not a checkpoint at all" * 10
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "corrupt or truncated" in msg and "delete it or resume from an earlier" in msg


def test_wrong_format_version(tmp_path, monkeypatch):
    monkeypatch.setattr(ck, "FORMAT", 99)
    p, _ = _save(tmp_path, 1)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="format 99 .* reads format 1"):
        load_checkpoint(p)


def test_other_family_names_the_right_script(tmp_path):
    p, _ = _save(tmp_path, 1)
    with pytest.raises(CheckpointError, match=r"is a riemann model, not geometric; use examples/train_riemann\.py"):
        load_checkpoint(p, expect_family="geometric")


def test_config_mismatch_names_keys_and_fix(tmp_path):
    _save(tmp_path, 1)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path, expect_cfg=Cfg(dim=32))
    assert str(e.value) == "checkpoint has dim=64 but you passed --dim 32; pass --dim 64 or start a new --output"
    with pytest.raises(CheckpointError, match=r"dim=64, rank=4 but you passed --dim 8 --rank 2; pass --dim 64 "
                                              r"--rank 4"):
        load_checkpoint(tmp_path, expect_cfg=Cfg(dim=8, rank=2))
    check_config({"a": [1, 2]}, {"a": (1, 2)})  # tuples equal their JSON lists


def test_spec_and_tokenizer_mismatch(tmp_path):
    _save(tmp_path, 1)
    other = ParamSpec({"emb": {"w": (5, 4)}, "b": (3,)})
    with pytest.raises(CheckpointError, match=r"different parameter layout \(checkpoint emb.w \(5, 3\) vs model "
                                              r"emb.w \(5, 4\)\)"):
        load_checkpoint(tmp_path, expect_spec=other)
    with pytest.raises(CheckpointError, match="tokenizer abc123 but this run built tokenizer zzz"):
        load_checkpoint(tmp_path, expect_tokenizer="zzz")


def test_missing_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint .* drop --resume"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "ckpt_000000001.npz")
    assert latest_checkpoint(tmp_path / "nope") is None
    (tmp_path / "x.npz").write_bytes(b"")
    np.savez(tmp_path / "ckpt_000000001.npz", theta=np.zeros(3))  # an npz, but not ours
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


def test_snapshots_round_trip_list_and_remove(tmp_path):
    d = tmp_path / "run"
    assert list_snapshots(d) == []
    thetas = {k: np.random.default_rng(k).normal(size=5).astype(np.float32) for k in (12, 4, 8)}
    for k, th in thetas.items():
        save_snapshot(d, k, th)
    _save(d, 8)  # checkpoints and temp files are not snapshots
    (d / ".eval_000000016.npy.7.tmp").write_bytes(b"half")
    assert list_snapshots(d) == [4, 8, 12] and list_snapshots(d, last_step=8) == [4, 8]
    got = load_snapshot(d, 8)
    assert got.dtype == np.float32 and np.array_equal(got, thetas[8])
    remove_snapshot(d, 8)
    remove_snapshot(d, 8)  # already gone: fine
    assert list_snapshots(d) == [4, 12]
    with pytest.raises(CheckpointError, match="does not exist"):
        load_snapshot(d, 8)
    (d / "eval_000000004.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_snapshot(d, 4)
