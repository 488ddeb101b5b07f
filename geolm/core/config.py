"""Frozen dataclass configs and their command-line flags, derived by one function.

A config field carries its help in metadata: `opt(default, "help text", choices=..., aliases=(...))`.
`add_args(parser, Cfg)` makes `--field-name` flags; `from_args(Cfg, ns)` builds the validated config.
Configs validate in __post_init__ and raise ConfigError naming the flag and the fix.
Aliases are other names of a field (a synonym, or an old spelling kept for old command lines and files): each is a
hidden flag (`--alias`, not in --help) with the field's dest, and a key that from_dict / canonical_keys accept; the
field's help text names them.
"""
import argparse
import dataclasses
import os
import sys
import tempfile
import typing
from pathlib import Path

from .errors import ConfigError


def opt(default, help, choices=None, flag=True, aliases=()):
    """A config field: its default, --help text, choices, flag=False for no command-line flag, and aliases (other
    accepted names, e.g. "max_train" for max_train_stories)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "flag": flag,
                                                        "aliases": tuple(aliases)})


def aliases_of(cls):
    """{alias: field name} of a config dataclass."""
    return {a: f.name for f in dataclasses.fields(cls) for a in f.metadata.get("aliases", ())}


def canonical_keys(cls, d):
    """The dict d with alias keys renamed to their field names (a key given under both names: the field's wins)."""
    amap = aliases_of(cls)
    out = {amap[k]: v for k, v in d.items() if k in amap}
    out.update({k: v for k, v in d.items() if k not in amap})
    return out


def flag_name(name):
    return "--" + name.replace("_", "-")


class ArgParser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: <what> (see --help)` on stderr, exit 2."""

    def error(self, message):
        print(f"error: {message} (run with --help for the list of flags)", file=sys.stderr)
        sys.exit(2)


def _type_of(f, cls):
    hints = typing.get_type_hints(cls)
    return hints[f.name]


def add_args(parser, cls, skip=()):
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("flag", True):
            continue
        t = _type_of(f, cls)
        help_ = f.metadata.get("help", "").replace("%", "%%")  # argparse %-formats help text
        hidden = dict(dest=f.name, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if t is bool:
            parser.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, default=f.default,
                                help=help_)
            for a in f.metadata.get("aliases", ()):
                parser.add_argument(flag_name(a), action=argparse.BooleanOptionalAction, **hidden)
            continue
        if typing.get_origin(t) is typing.Union:  # Optional[X]
            t = [a for a in typing.get_args(t) if a is not type(None)][0]
        kw = dict(type=t, choices=f.metadata.get("choices"), metavar=f.name.upper() if t is not str else None)
        parser.add_argument(flag_name(f.name), default=f.default, help=f"{help_} (default: %(default)s)", **kw)
        for a in f.metadata.get("aliases", ()):
            parser.add_argument(flag_name(a), **kw, **hidden)
    return parser


def from_args(cls, ns, **override):
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in vars(ns).items() if k in names}
    kw.update(override)
    return cls(**kw)


def from_dict(cls, d):
    """Build a config from a dict (e.g. a checkpoint's JSON; aliases accepted); unknown keys are rejected by name."""
    names = {f.name for f in dataclasses.fields(cls)}
    d = canonical_keys(cls, d)
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}; they come from another geolm version or model")
    return cls(**d)


def require(cond, flag, fix):
    """Raise ConfigError(`--flag ...: fix`) unless cond."""
    if not cond:
        raise ConfigError(f"{flag_name(flag)}: {fix}")


def positive(cfg, *names):
    for n in names:
        v = getattr(cfg, n)
        require(v > 0, n, f"must be > 0, got {v}")


def check_output_dir(path, flag="output"):
    """Fail early, before any work, if PATH cannot be the run directory (a file, or not writable).
    Creates the directory (empty) if needed."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag_name(flag)} {p} is a file; pass a directory path")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".geolm-write-test-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{flag_name(flag)} {p} is not writable ({e.strerror}); pass a directory you can write to")
    return p
