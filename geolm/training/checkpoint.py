"""Atomic, versioned `.npz` checkpoints (no pickles) and the checks that refuse a wrong one.

File `RUN_DIR/ckpt_<step:09d>.npz`, loaded with allow_pickle=False, holds:
    theta                 flat parameters (training dtype, bit-exact)
    <name> arrays         e.g. adam_m, adam_v (same dtype as theta), extra.<name> from the caller
    meta                  UTF-8 JSON as uint8: format, geolm version, step, dtype, family, cfg, spec,
                          tokenizer hash and a free "train" dict (optimiser step, sampler and RNG state, ...)
Write: geolm.core.io.atomic_write (temp file `.ckpt_*.tmp` in the same directory, fsync, rename, fsync the
directory), then prune to the newest `keep`. A kill -9 at any moment leaves the previous checkpoint intact; the
loader only looks at `ckpt_*.npz` (temp files are ignored and removed by the next save). A non-finite array is never
written. Loading checks the zip CRCs (truncation, bit flips), the format, the model family, the config,
the parameter layout and the tokenizer, and raises CheckpointError with one line naming the fix.

Snapshots `RUN_DIR/eval_<step:09d>.npy` hold only theta: parameters waiting for a deferred evaluation
(geolm.training.evaluation), written atomically, deleted once their evaluation is recorded.
"""
import json
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..core.errors import CheckpointError, NumericalError
from ..core.io import atomic_write, json_safe

FORMAT = 1
_NAME = re.compile(r"^ckpt_(\d+)\.npz$")
_SNAPSHOT = re.compile(r"^eval_(\d+)\.npy$")


def _geolm_version():
    return __version__


def checkpoint_path(run_dir, step):
    return Path(run_dir) / f"ckpt_{int(step):09d}.npz"


def list_checkpoints(run_dir):
    """Checkpoint paths in run_dir, oldest step first (temp files ignored)."""
    d = Path(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir):
    """Newest checkpoint path in run_dir, or None."""
    cks = list_checkpoints(run_dir)
    return cks[-1] if cks else None


def save_checkpoint(run_dir, step, theta, meta, arrays=None, keep=3):
    """Atomically write RUN_DIR/ckpt_<step>.npz and keep the newest `keep`; returns its path.

    meta: JSON-able dict (family, cfg, spec, tokenizer, train state, ...); format, version, step, dtype added.
    arrays: extra named float/int arrays (e.g. adam_m, adam_v). Raises NumericalError on any non-finite
    float array, so a blown-up model never replaces a good checkpoint.
    """
    run_dir = Path(run_dir)
    arrays = dict(arrays or {})
    arrays["theta"] = theta
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise NumericalError(f"refusing to checkpoint non-finite {name!r} at step {step}; "
                                 f"the last good checkpoint in {run_dir} is kept")
    meta = dict(json_safe(meta), format=FORMAT, geolm_version=_geolm_version(), step=int(step),
                dtype=str(np.asarray(theta).dtype))
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    final = atomic_write(checkpoint_path(run_dir, step), lambda f: np.savez(f, **payload))
    for p in run_dir.glob(".ckpt_*.tmp"):  # left by a killed writer
        try:
            p.unlink()
        except OSError:
            pass
    for old in list_checkpoints(run_dir)[:-max(1, int(keep))]:
        old.unlink()
    return final


@dataclass
class Checkpoint:
    """A loaded checkpoint: theta, named arrays, meta JSON (dict) and where it came from."""

    path: Path
    step: int
    theta: np.ndarray
    meta: dict
    arrays: dict = field(default_factory=dict)

    @property
    def family(self):
        return self.meta.get("family")

    @property
    def train(self):
        return self.meta.get("train", {})

    @property
    def extra(self):
        """extra.<name> arrays and the JSON "extra" dict, merged."""
        out = dict(self.meta.get("extra", {}))
        out.update({k[6:]: v for k, v in self.arrays.items() if k.startswith("extra.")})
        return out


def _fmt(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v) if isinstance(v, (list, dict)) or v is None else str(v)


def _flag(k):
    return "--" + k.replace("_", "-")


def check_config(have, want, what="checkpoint", where="--output"):
    """Raise CheckpointError naming every differing key: 'checkpoint has dim=64 but you passed --dim 32; ...'."""
    have, want = json_safe(have), json_safe(want)
    keys = [k for k in list(have) + [k for k in want if k not in have] if have.get(k, "?") != want.get(k, "?")]
    if not keys:
        return
    has = ", ".join(f"{k}={_fmt(have.get(k))}" for k in keys)
    passed = " ".join(f"{_flag(k)} {_fmt(want.get(k))}" for k in keys)
    fix = " ".join(f"{_flag(k)} {_fmt(have.get(k))}" for k in keys if k in have)
    raise CheckpointError(f"{what} has {has} but you passed {passed}; pass {fix} or start a new {where}")


def load_checkpoint(path_or_dir, expect_family=None, expect_cfg=None, expect_spec=None, expect_tokenizer=None):
    """Load a checkpoint file, or the newest one in a run directory, and check it against expectations.

    expect_cfg: the model config (dataclass or dict), compared key by key; expect_spec: a ParamSpec;
    expect_tokenizer: the tokenizer hash. Every refusal is a CheckpointError with one line naming the fix.
    """
    p = Path(path_or_dir)
    if p.is_dir():
        latest = latest_checkpoint(p)
        if latest is None:
            raise CheckpointError(f"no checkpoint (ckpt_*.npz) in {p}; drop --resume to start a new run, "
                                  f"or pass the run directory that holds the checkpoints")
        p = latest
    elif not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist; pass a run directory or a ckpt_*.npz file")
    where = p.parent
    corrupt = CheckpointError(f"{p} is corrupt or truncated; delete it or resume from an earlier "
                              f"checkpoint in {where}")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}  # reading every member checks its CRC
        meta = json.loads(bytes(data.pop("meta")).decode("utf-8"))
        theta = data.pop("theta")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError, UnicodeDecodeError) as e:
        raise corrupt from e
    if not isinstance(meta, dict) or "format" not in meta:
        raise CheckpointError(f"{p} is not a geolm checkpoint (no format field); pass a ckpt_*.npz written by geolm")
    if meta["format"] != FORMAT:
        raise CheckpointError(f"{p} has checkpoint format {meta['format']} (geolm {meta.get('geolm_version')}) but "
                              f"geolm {_geolm_version()} reads format {FORMAT}; use that geolm version or start "
                              f"a new --output")
    if theta.ndim != 1 or (theta.dtype.kind == "f" and not np.isfinite(theta).all()):
        raise corrupt
    fam = meta.get("family")
    if expect_family is not None and fam != expect_family:
        raise CheckpointError(f"checkpoint {p} is a {fam} model, not {expect_family}; use "
                              f"examples/train_{fam}.py to resume it, or start a new --output")
    if expect_cfg is not None:
        check_config(meta.get("cfg", {}), expect_cfg)
    if expect_spec is not None:
        have = meta.get("spec")
        want = json.loads(expect_spec.to_json())
        if have != want or theta.shape[0] != expect_spec.size:
            diff = next(((a, b) for a, b in zip(have or [], want) if a != b), None)
            detail = (f" (checkpoint {diff[0][0]} {tuple(diff[0][1])} vs model {diff[1][0]} {tuple(diff[1][1])})"
                      if diff else f" ({theta.shape[0]} vs {expect_spec.size} parameters)")
            raise CheckpointError(f"checkpoint {p} has a different parameter layout{detail}; pass the model flags "
                                  f"it was trained with or start a new --output")
    if expect_tokenizer is not None and meta.get("tokenizer", "") != expect_tokenizer:
        raise CheckpointError(f"checkpoint {p} was trained with tokenizer {str(meta.get('tokenizer'))[:12]} but this "
                              f"run built tokenizer {str(expect_tokenizer)[:12]}; pass the same data and "
                              f"--vocab-size as the original run, or start a new --output")
    return Checkpoint(path=p, step=int(meta["step"]), theta=theta, meta=meta, arrays=data)


# ---------------------------------------------------------------------------------------------------------------
# parameter snapshots for deferred evaluation

def snapshot_path(run_dir, step):
    return Path(run_dir) / f"eval_{int(step):09d}.npy"


def save_snapshot(run_dir, step, theta):
    """theta -> RUN_DIR/eval_<step>.npy, atomically; returns its path."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return atomic_write(snapshot_path(run_dir, step), lambda f: np.save(f, np.asarray(theta)))


def list_snapshots(run_dir, last_step=None):
    """Steps of the snapshots in run_dir (at most last_step), oldest first."""
    d = Path(run_dir)
    if not d.is_dir():
        return []
    steps = sorted(int(m.group(1)) for p in d.iterdir() if (m := _SNAPSHOT.match(p.name)) and p.is_file())
    return [k for k in steps if last_step is None or k <= last_step]


def load_snapshot(run_dir, step):
    """The theta saved by save_snapshot(run_dir, step)."""
    p = snapshot_path(run_dir, step)
    try:
        theta = np.load(p, allow_pickle=False)
    except FileNotFoundError:
        raise CheckpointError(f"snapshot {p} does not exist (evaluated already, or deleted); list the waiting "
                              f"ones with list_snapshots") from None
    except (OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"snapshot {p} is corrupt or truncated ({type(e).__name__}); delete it (that "
                              f"step then has no evaluation)") from None
    if theta.ndim != 1:
        raise CheckpointError(f"snapshot {p} is not a flat parameter vector; delete it (that step then has no "
                              f"evaluation)")
    return theta


def remove_snapshot(run_dir, step):
    snapshot_path(run_dir, step).unlink(missing_ok=True)
