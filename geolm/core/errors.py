"""Errors that name their fix, and the one CLI wrapper that turns them into `error: ...` + exit 2."""
import functools
import os
import sys


class GeolmError(Exception):
    """Base of every user-facing error; its message is one line that names the fix."""


class ConfigError(GeolmError):
    """A flag or config value is out of range or contradicts another."""


class DataError(GeolmError):
    """A data file is missing, empty, unreadable or in the wrong format."""


class CheckpointError(GeolmError):
    """A checkpoint is corrupt, truncated, of another version, or does not match the config."""


class NumericalError(GeolmError):
    """A numerical failure (non-PD metric, repeated non-finite steps) with the offending scale."""


def _rank():
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def cli_main(fn):
    """Decorate an example's main(): GeolmError -> one `error:` line on stderr, exit 2; Ctrl-C -> exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GeolmError as e:
            msg = " ".join(str(e).split())
            if _rank() == 0:  # under mpiexec every rank exits 2, only rank 0 prints
                print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)

    return wrapper
