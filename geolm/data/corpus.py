"""Corpus loading with provenance: local TinyStories-format files, the Hugging Face hub, or the built-in generator.

`load_corpus(data)` returns `Corpus(train, val, source)`: lists of stripped, non-empty stories and a one-line
human description of where they came from (printed by every example, so a number is never detached from its data).

`data` may be
- a local file: `.txt` / `.txt.gz` in the official layout (each story followed by a line `<|endoftext|>`),
  `.jsonl` / `.json` (optionally `.gz`) with a `text` field, or `.parquet` with a `text` column;
  without `val_data`, a sibling `valid*` / `validation*` file of the same kind is used, else the last 10 % of the
  train file's stories are held out (and `source` says so);
- a directory holding `train.<ext>` (and optionally `valid.<ext>` / `validation.<ext>`);
- "builtin": the geolm story generator (`geolm.data.builtin`), deterministic in `seed`;
- a hub name (default `roneneldan/TinyStories`): first `max_train` stories of split `train` and first `max_val`
  of `validation`, streamed. The hub is probed first with a short timeout (or skipped when HF_HUB_OFFLINE /
  HF_DATASETS_OFFLINE is set); if it cannot be reached, the built-in corpus is used and one line on stderr says so,
  unless `allow_builtin=False`, which raises DataError instead.

Every file is read through Hugging Face `datasets` (builders "text" with sample_by="document", "json", "parquet"),
with datasets' own cache in a temporary directory that is removed afterwards. Bad input raises DataError /
ConfigError with one line naming the fix.
"""
import dataclasses
import gzip
import zlib
import os
import sys
import tempfile
import threading
from pathlib import Path

from ..core.errors import ConfigError, DataError

DEFAULT_HUB = "roneneldan/TinyStories"
STORY_SEP = "<|endoftext|>"  # official TinyStories .txt layout: a line holding only this token ends each story
HUB_TIMEOUT = 3.0  # seconds for the hub probe
TEXT_EXTS = (".txt", ".txt.gz")
JSON_EXTS = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
PARQUET_EXTS = (".parquet",)
KNOWN_EXTS = TEXT_EXTS + JSON_EXTS + PARQUET_EXTS
_FIX_FMT = "use .txt/.txt.gz (stories separated by a line <|endoftext|>), .jsonl/.json with a 'text' field, or .parquet"


@dataclasses.dataclass
class Corpus:
    train: list  # list[str], stripped, non-empty
    val: list  # list[str]
    source: str  # one human line: where the stories came from and how many


# ----------------------------------------------------------------------------- local files

def _ext(path):
    name = Path(path).name.lower()
    for e in sorted(KNOWN_EXTS, key=len, reverse=True):
        if name.endswith(e):
            return e
    return None


def _check_file(path):
    """Existence, readability, emptiness and (for text formats) binary content, before datasets sees the file."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file {p} not found; pass --data PATH to an existing file")
    if p.is_dir():
        raise DataError(f"{p} is a directory; pass --data PATH to a train file or to a directory with train.<ext>")
    if not os.access(p, os.R_OK):
        raise DataError(f"data file {p} is not readable; fix its permissions (chmod +r)")
    if p.stat().st_size == 0:
        raise DataError(f"data file {p} is empty; pass --data PATH to a file with stories")
    ext = _ext(p)
    if ext is None:
        raise DataError(f"data file {p} has an unknown extension; {_FIX_FMT}")
    if ext in PARQUET_EXTS:
        return ext
    try:
        opener = gzip.open if ext.endswith(".gz") else open
        with opener(p, "rb") as f:
            head = f.read(1 << 16)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a bad stream is zlib.error
        raise DataError(f"data file {p} cannot be read ({type(e).__name__}); "
                        f"check that it is a valid {'gzip ' if ext.endswith('.gz') else ''}file") from None
    if not head.strip():
        raise DataError(f"data file {p} holds no text; pass --data PATH to a file with stories")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a multi-byte char cut at the end of the 64 KiB window
            raise DataError(f"data file {p} is not UTF-8 text (binary?); {_FIX_FMT}") from None
    if b"\x00" in head:
        raise DataError(f"data file {p} is binary (NUL bytes); {_FIX_FMT}")
    return ext


def _root_cause(e):
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    return e


def _load_dataset(builder, path, **kw):
    """datasets.load_dataset on one local file, with its cache in a temporary directory."""
    import datasets

    datasets.disable_progress_bars()
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its parse errors come back as one DataError line
    try:
        with tempfile.TemporaryDirectory(prefix="geolm-datasets-") as tmp:
            try:
                ds = datasets.load_dataset(builder, data_files={"train": str(path)}, split="train", cache_dir=tmp,
                                           **kw)
            except Exception as e:  # noqa: BLE001 - datasets wraps parse errors; report the root cause
                root = _root_cause(e)
                msg = " ".join(str(root).split())[:160]
                raise DataError(f"cannot read {path} as {builder} ({type(root).__name__}: {msg}); {_FIX_FMT}") from None
            cols = ds.column_names
            if "text" not in cols:
                raise DataError(f"{path} has no 'text' field (fields: {', '.join(cols) or 'none'}); "
                                f"store each story under the key 'text'")
            return ds.data.column("text").to_pylist()  # copied out of the arrow files before tmp goes
    finally:
        datasets.logging.set_verbosity(verbosity)


def read_stories(path):
    """Stories of one local file (stripped, empty ones dropped), read through `datasets`."""
    ext = _check_file(path)
    if ext in TEXT_EXTS:
        docs = _load_dataset("text", path, sample_by="document")
        stories = [s.strip() for d in docs for s in d.split(STORY_SEP)]
    else:
        texts = _load_dataset("json" if ext in JSON_EXTS else "parquet", path)
        bad = [t for t in texts if t is not None and not isinstance(t, str)]
        if bad:
            raise DataError(f"{path}: the 'text' field holds {type(bad[0]).__name__}, not strings; "
                            f"store each story as a string under 'text'")
        stories = [t.strip() for t in texts if t is not None]
    stories = [s for s in stories if s]
    if not stories:
        raise DataError(f"data file {path} holds no stories; {_FIX_FMT}")
    return stories


def _sibling_valid(train_path):
    """valid*/validation* file next to train_path with the same extension, if any."""
    p = Path(train_path)
    ext = _ext(p)
    cands = sorted(q for q in p.parent.iterdir()
                   if q.is_file() and _ext(q) == ext and q != p and q.name.lower().startswith(("valid", "validation")))
    exact = [q for q in cands if q.name.lower() in ("valid" + ext, "validation" + ext)]
    return (exact or cands or [None])[0]


def _dir_train(d):
    d = Path(d)
    cands = sorted(q for q in d.iterdir() if q.is_file() and _ext(q) and q.name.lower().startswith("train"))
    exact = [q for q in cands if q.name.lower() == "train" + _ext(q)]
    if not (exact or cands):
        raise DataError(f"directory {d} has no train.<ext> file; pass --data PATH to the training file itself")
    return (exact or cands)[0]


def _take(stories, n):
    return stories if n is None else stories[:n]


def _load_local(path, val_path, max_train, max_val):
    path = Path(path).expanduser()
    if path.is_dir():
        path = _dir_train(path)
    train_all = read_stories(path)
    if val_path is None:
        val_path = _sibling_valid(path)
    if val_path is not None:
        val_path = Path(val_path).expanduser()
        train, val = _take(train_all, max_train), _take(read_stories(val_path), max_val)
        return Corpus(train, val, f"local files {path} ({len(train)} stories) + {val_path} ({len(val)})")
    if len(train_all) < 2:
        raise DataError(f"{path} holds only 1 story and there is no valid file beside it; "
                        f"separate stories with a line {STORY_SEP} or pass --val-data PATH")
    n_hold = max(1, len(train_all) // 10)
    train, val = _take(train_all[:-n_hold], max_train), _take(train_all[-n_hold:], max_val)
    return Corpus(train, val, f"local file {path} ({len(train)} stories; last 10% = {n_hold} stories held out, "
                              f"{len(val)} used as validation; no valid* file beside it)")


# ----------------------------------------------------------------------------- hub

def _offline_env():
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def hub_status(name, timeout=HUB_TIMEOUT):
    """(reachable: bool, reason: str). Never blocks longer than ~timeout: the probe runs in a daemon thread,
    so a hanging DNS lookup cannot stall the caller. A reachable hub that lacks `name` raises DataError."""
    var = _offline_env()
    if var:
        return False, f"{var} is set"
    out = {}

    def probe():
        try:
            from huggingface_hub import HfApi

            HfApi().dataset_info(name, timeout=timeout)
            out["ok"] = True
        except Exception as e:  # noqa: BLE001 - classified below
            out["err"] = e

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    if t.is_alive():
        return False, f"no answer within {timeout:g} s"
    if out.get("ok"):
        return True, "reachable"
    e = out["err"]
    kind = type(e).__name__
    if kind in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"):
        raise DataError(f"hub dataset '{name}' not found or not accessible ({kind}); "
                        f"check the name or pass --data PATH to a local file")
    return False, f"{kind}: {' '.join(str(e).split())[:120]}"


def _load_hub(name, max_train, max_val):
    import itertools

    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()

    def first(split, n):
        ds = datasets.load_dataset(name, split=split, streaming=True)
        out = []
        for row in itertools.islice(ds, n):
            t = row.get("text")
            if isinstance(t, str) and t.strip():
                out.append(t.strip())
        return out

    train = first("train", max_train)
    val = None
    for split in ("validation", "valid", "test"):
        try:
            val = first(split, max_val)
            break
        except ValueError:  # unknown split
            continue
    if not train or not val:
        raise DataError(f"hub dataset '{name}' gave no stories in its train/validation splits with a 'text' field; "
                        f"pass --data PATH to a local file")
    return Corpus(train, val, f"hub {name} (first {len(train)} train + first {len(val)} validation stories)")


# ----------------------------------------------------------------------------- builtin

def _load_builtin(max_train, max_val, seed):
    from .builtin import builtin_corpus

    train, val = builtin_corpus(max_train, max_val, seed)
    return Corpus(train, val, f"built-in geolm story generator (seed {seed}, {len(train)}+{len(val)} stories; "
                              f"not TinyStories)")


# ----------------------------------------------------------------------------- entry point

def _looks_local(data):
    s = str(data)
    return (os.path.exists(os.path.expanduser(s)) or s.startswith(("/", ".", "~"))
            or "." in Path(s).name and Path(s).suffix.lower() in (".txt", ".gz", ".json", ".jsonl", ".parquet",
                                                                   ".csv", ".tsv", ".arrow", ".zip", ".bz2", ".xz"))


def _check_sizes(max_train, max_val, need_int):
    for flag, v in (("max-train-stories", max_train), ("max-val-stories", max_val)):
        if v is None and need_int:
            raise ConfigError(f"--{flag}: needs a number of stories for the hub or built-in corpus, e.g. 2000")
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise ConfigError(f"--{flag}: must be a positive number of stories, got {v!r}")


def load_corpus(data=DEFAULT_HUB, val_data=None, max_train=2000, max_val=1000, allow_builtin=True, *, seed=0,
                quiet=False, hub_timeout=HUB_TIMEOUT):
    """Load train/validation stories.

    data: local file or directory, hub dataset name, or "builtin" (None = the default hub dataset).
    val_data: local validation file (else a sibling valid* file, else the last 10 % of train).
    max_train, max_val: first N stories of each (None = all, local files only).
    allow_builtin: when the hub is unreachable, use the built-in generator (one line on stderr) instead of failing.
    seed: seed of the built-in generator.
    Returns Corpus(train: list[str], val: list[str], source: str).
    """
    data = DEFAULT_HUB if data is None else str(data)
    if data.strip().lower() in ("builtin", "built-in"):
        _check_sizes(max_train, max_val, need_int=True)
        return _load_builtin(max_train, max_val, seed)
    if _looks_local(data) or val_data is not None:
        _check_sizes(max_train, max_val, need_int=False)
        if not _looks_local(data):
            raise DataError(f"--val-data is a local file but --data '{data}' is not; pass --data PATH to a local "
                            f"train file")
        p = Path(data).expanduser()
        if not p.exists():
            raise DataError(f"data file {p} not found; pass --data PATH to an existing file")
        return _load_local(p, val_data, max_train, max_val)
    _check_sizes(max_train, max_val, need_int=True)
    ok, reason = hub_status(data, hub_timeout)
    if ok:
        try:
            return _load_hub(data, max_train, max_val)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - connection dropped mid-stream, etc.
            ok, reason = False, f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
    if not allow_builtin:
        raise DataError(f"hub dataset '{data}' unreachable ({reason}); pass --data PATH to a local file "
                        f"(e.g. a TinyStories train.txt.gz)")
    corpus = _load_builtin(max_train, max_val, seed)
    if not quiet:
        print(f"note: hub {data} unreachable ({reason}); using the {corpus.source}; "
              f"pass --data PATH for real TinyStories", file=sys.stderr)
    return corpus
