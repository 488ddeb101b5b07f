import gzip
import os
from pathlib import Path

import numpy as np
import pytest

DATA_DIR = Path(os.environ.get("GEOLM_TINYSTORIES",
                               Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinystories"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "data: needs the shared TinyStories sample")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def strict_float():
    """Float warnings become errors for gradient checks."""
    old = np.seterr(over="raise", invalid="raise", divide="raise")
    yield
    np.seterr(**old)


@pytest.fixture
def tinystories():
    """Directory with train.txt.gz / valid.txt.gz; skips cleanly when absent."""
    if not (DATA_DIR / "train.txt.gz").is_file() or not (DATA_DIR / "valid.txt.gz").is_file():
        pytest.skip(f"shared TinyStories sample not found at {DATA_DIR} (set GEOLM_TINYSTORIES)")
    return DATA_DIR
