"""Files written whole or not at all, and strict JSON.

    atomic_write(path, data)        bytes/str, or a callable writing into a binary file object
    atomic_dir(path, fill)          a directory filled by fill(tmp_dir), renamed into place whole
    write_json(path, obj)           json_safe(obj) as indented JSON, atomically
    json_safe(x)                    -> plain JSON types: numpy scalars/arrays -> Python, dataclasses -> dicts,
                                       Paths -> str, non-finite floats -> "nan" / "inf" / "-inf"
An atomic write goes to a hidden temporary file in the same directory, is flushed and fsynced, then renamed over
the target with os.replace (atomic on POSIX), and the directory is fsynced: a crash at any moment leaves either
the old file or the new one, never a truncated one. The temporary is removed if the write fails.
"""
import dataclasses
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


def fsync_dir(d):
    """fsync a directory so a rename inside it survives a crash (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, data):
    """Write `data` (bytes, str, or a function f(fileobj) writing bytes) to `path` atomically -> Path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else bytes(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)
    return path


def atomic_dir(path, fill):
    """Create directory `path` whole or not at all -> Path: fill(tmp) writes into a hidden sibling directory,
    which then replaces `path` (an existing `path` is removed first). On any error the sibling is removed and
    the error raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        fill(tmp)
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(path.parent)
    return path


def json_safe(x):
    """x -> plain JSON types (see the module docstring); unknown objects become their str()."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = dataclasses.asdict(x)
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return str(x)


def write_json(path, obj, indent=1):
    """json_safe(obj) -> path, atomically, with a trailing newline."""
    return atomic_write(path, json.dumps(json_safe(obj), indent=indent) + "\n")
