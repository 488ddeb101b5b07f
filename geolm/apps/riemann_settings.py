"""The settings of a Riemannian run: three frozen dataclasses, resolved from layers, and configuration files.

    RiemannConfig (the model, geolm.models.riemann_config) . TrainConfig (geolm.training.train, with this model's
    TRAIN_DEFAULTS) . RunConfig (data, output, evaluation, generation; below)

Each field is set by the last layer that gives it:
    dataclass defaults < TRAIN_DEFAULTS < the resumed run's checkpoint < a configuration file < explicit overrides
    cfg, tcfg, rc = resolve_configs({"rank": 8}, config_file="examples/configs/riemann_third.toml")
    cfg, tcfg, rc = resume_configs("runs/r", {"steps": 900})   # every setting not overridden from the run
The checkpoint layer holds the model, training and run settings the run was started with (its data as RUN_DATA
records it: local paths absolute); output, resume and threads are never taken from it.

Configuration file: TOML (tomllib) or JSON (by suffix .json), one section per dataclass, keys = field names:
    [model]                 # RiemannConfig
    dim = 128
    [train]                 # TrainConfig
    lr = 1e-3
    [run]                   # RunConfig
    max_val_stories = 500
A key in no section or the wrong one, an unknown key or section, a value of the wrong type and the keys a file
cannot set (n_vocab, resume) are each a one-line ConfigError naming the file, the key and the fix. Integers are
accepted for float fields; JSON null for the Optional ones; paths are relative to the working directory. A
field's old spelling (its alias, e.g. max_val) is read as the field, in files, overrides and older checkpoints.
"""
import dataclasses
import difflib
import json
import math
import tomllib
import typing
from pathlib import Path
from typing import Optional

from ..core.config import aliases_of, canonical_keys, opt, require
from ..core.errors import ConfigError
from ..models.riemann_config import ODE_FIELDS, RiemannConfig
from ..training.checkpoint import load_checkpoint
from ..training.train import TrainConfig

# TrainConfig defaults for this model (spec 1.4: KAHLER's AdamW (0.9, 0.95), wd 1e-4, clip 1; peak lr 1e-3)
TRAIN_DEFAULTS = dict(steps=400, batch_size=16, lr=1e-3, schedule="cosine", warmup=50, min_lr=1e-4,
                      weight_decay=1e-4, b1=0.9, b2=0.95, clip=1.0, eval_every=100, checkpoint_every=0,
                      log_every=10)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    data: Optional[str] = opt(None, "train data: a .txt/.txt.gz/.jsonl/.parquet file or directory, 'builtin', or "
                                    "a hub name (default: the TinyStories hub, built-in stories when offline)")
    val_data: Optional[str] = opt(None, "validation file (default: a sibling valid* file or the last 10%)")
    max_train_stories: int = opt(2000, "first N training stories (--max-train: the old spelling, deprecated)",
                                 aliases=("max_train",))
    max_val_stories: int = opt(1000, "first N validation stories (--max-val: the old spelling, deprecated)",
                               aliases=("max_val",))
    min_count: int = opt(5, "keep tokens seen at least this often (BPE merges and model vocabulary); the rest are "
                            "UNK (--min-frequency: the old spelling, deprecated)", aliases=("min_frequency",))
    output: str = opt("runs/riemann", "run directory (metrics, checkpoints, plots, story)")
    resume: Optional[str] = opt(None, "continue the run in this directory from its newest checkpoint (with a "
                                      "larger --rank: grow the metric rank first)")
    val_batches: int = opt(8, "validation batches (of --batch-size chunks) per evaluation; 0 = all")
    tel_batch: int = opt(8, "validation chunks in the fixed telemetry batch")
    prompt: str = opt("Once upon a time", "prompt of the story generated at the end")
    temperature: float = opt(0.8, "sampling temperature (0 = greedy)")
    top_k: int = opt(40, "sample from the k most likely tokens (0 = all)")
    gen_tokens: int = opt(120, "tokens to generate at the end (0 = none)")
    map_points: int = opt(200, "trajectories in the semantic map (0 = no map)")

    def __post_init__(self):
        require(self.max_train_stories > 0, "max_train_stories", f"must be > 0, got {self.max_train_stories}")
        require(self.max_val_stories > 0, "max_val_stories", f"must be > 0, got {self.max_val_stories}")
        require(self.min_count >= 1, "min_count", f"must be >= 1, got {self.min_count}")
        require(self.val_batches >= 0, "val_batches", f"must be >= 0, got {self.val_batches}")
        require(self.tel_batch > 0, "tel_batch", f"must be > 0, got {self.tel_batch}")
        require(self.temperature >= 0 and math.isfinite(self.temperature), "temperature",
                f"must be >= 0 (0 = greedy), got {self.temperature}")
        require(self.top_k >= 0, "top_k", f"must be >= 0 (0 = all), got {self.top_k}")
        require(self.gen_tokens >= 0, "gen_tokens", f"must be >= 0, got {self.gen_tokens}")
        require(self.map_points >= 0, "map_points", f"must be >= 0, got {self.map_points}")
        require(bool(str(self.output).strip()), "output", "must be a directory path")


# RunConfig fields a checkpoint records (its "extra" dict), so the data can be rebuilt on resume and by the tools
RUN_DATA = ("data", "val_data", "max_train_stories", "max_val_stories", "min_count")  # older runs: their aliases
SECTIONS = {"model": RiemannConfig, "train": TrainConfig, "run": RunConfig}
NOT_IN_FILES = {"n_vocab": "it is set from the tokenizer", "resume": "pass --resume DIR on the command line"}
_NOT_FROM_CHECKPOINT = ("output", "resume", "threads", "n_vocab")
_ALIASES = {a: name for cls in SECTIONS.values() for a, name in aliases_of(cls).items()}  # old key -> field


def _fields():
    """{field name: (section, type)} over the three dataclasses."""
    out = {}
    for sec, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        out.update({f.name: (sec, hints[f.name]) for f in dataclasses.fields(cls)})
    return out


def default_values():
    """Every field's default, TRAIN_DEFAULTS applied -> {name: value}."""
    vals = {f.name: f.default for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    vals.update(TRAIN_DEFAULTS)
    return vals


def build_configs(values):
    """{field name: value} -> (RiemannConfig, TrainConfig, RunConfig), validated; unknown names are refused."""
    unknown = sorted(set(values) - set(_fields()))
    if unknown:
        raise ConfigError(f"unknown settings {unknown}; the names are the dataclass fields of RiemannConfig, "
                          f"TrainConfig and RunConfig (the flags with _ for -)")
    return tuple(cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})
                 for cls in SECTIONS.values())


# ---------------------------------------------------------------------------------------------------------------
# configuration files

def _typed(where, key, value, t):
    """value checked against field type t (int accepted for float; None only for Optional) -> value."""
    opt_ = typing.get_origin(t) is typing.Union
    base = [a for a in typing.get_args(t) if a is not type(None)][0] if opt_ else t
    ok = (value is None and opt_) or (isinstance(value, base) and not (base is int and isinstance(value, bool)))
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        want = {int: "an integer", float: "a number", bool: "true or false", str: "a quoted string"}[base]
        raise ConfigError(f"{where}: {key} = {value!r} is a {type(value).__name__}, but {key} takes {want}; "
                          f"write e.g. {key} = {json.dumps(_example(base))}")
    return value


def _example(base):
    return {int: 1, float: 0.1, bool: True, str: "text"}[base]


def _unknown(where, key, fields):
    near = difflib.get_close_matches(key, list(fields), n=1)
    hint = f"did you mean {near[0]!r}?" if near else "the keys are the field names (the flags with _ for -)"
    return ConfigError(f"{where}: unknown key {key!r}; {hint}")


def load_config_file(path):
    """A TOML or JSON configuration file -> {field name: value} (checked as the module docstring says)."""
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"--config {p}: cannot read it ({e.strerror}); pass an existing .toml or .json file")
    try:
        doc = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
        raise ConfigError(f"--config {p} is not valid {kind} ({' '.join(str(e).split())}); fix the file")
    if not isinstance(doc, dict):
        raise ConfigError(f"--config {p}: the top level must be a table of sections [model], [train], [run]")
    fields, out = _fields(), {}
    for sec, table in doc.items():
        if sec in fields:
            raise ConfigError(f"{p}: key {sec!r} must sit in a section; put it under [{fields[sec][0]}]")
        if sec not in SECTIONS or not isinstance(table, dict):
            raise ConfigError(f"{p}: unknown section [{sec}]; the sections are [model], [train] and [run]")
        for key, value in table.items():
            where = f"{p} [{sec}]"
            key = _ALIASES.get(key, key)
            if key not in fields:
                raise _unknown(where, key, fields)
            if fields[key][0] != sec:
                raise ConfigError(f"{where}: {key} belongs in [{fields[key][0]}], not [{sec}]; move it there")
            if key in NOT_IN_FILES:
                raise ConfigError(f"{where}: {key} cannot be set in a configuration file; {NOT_IN_FILES[key]}")
            out[key] = _typed(where, key, value, fields[key][1])
    return out


# ---------------------------------------------------------------------------------------------------------------
# resolving

def checkpoint_values(run_dir):
    """The settings recorded in run_dir's newest checkpoint -> {field name: value} (model, training, run; the
    data fields as RUN_DATA records them)."""
    ck = load_checkpoint(run_dir, expect_family="riemann")
    saved = dict(ck.meta.get("cfg", {}))
    saved.update(ck.meta.get("tcfg", {}))
    saved.update(canonical_keys(RunConfig, ck.extra.get("run", {})))
    extra = canonical_keys(RunConfig, ck.extra)  # a checkpoint of an older run records the old names
    saved.update({k: extra[k] for k in RUN_DATA if k in extra})
    fields = _fields()
    return {k: v for k, v in saved.items() if k in fields and k not in _NOT_FROM_CHECKPOINT}


def resolve_configs(overrides=None, *, config_file=None, resume=None):
    """-> (RiemannConfig, TrainConfig, RunConfig) from the layers of the module docstring. overrides: {field: value}
    (e.g. the flags given on a command line). An override no_ode=True drops the file's ODE/metric fields (a
    preset's control run). Old names (aliases) of a field are accepted as keys."""
    overrides = {_ALIASES.get(k, k): v for k, v in (overrides or {}).items()}
    values = default_values()
    if resume is not None:
        values.update(checkpoint_values(resume))
        values["resume"] = str(resume)
    if config_file is not None:
        file_vals = load_config_file(config_file)
        if overrides.get("no_ode"):
            file_vals = {k: v for k, v in file_vals.items() if k not in ODE_FIELDS}
        values.update(file_vals)
    values.update(overrides)
    return build_configs(values)


def resume_configs(run_dir, overrides=None, config_file=None):
    """The configs that continue the run in run_dir: its checkpoint's settings, then config_file, then overrides."""
    return resolve_configs(overrides, config_file=config_file, resume=run_dir)
