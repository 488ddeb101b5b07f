import math

import numpy as np
import pytest

from geolm.core.errors import DataError
from geolm.models.ngram import bigram_fit, bigram_log_probs, bigram_nll
from naive_geometry import bigram_nll_naive


def _data(rng, M, V, pad):
    prev = rng.integers(0, V, M)
    prev[rng.random(M) < 0.2] = pad
    return prev, rng.integers(0, V, M)


@pytest.mark.parametrize("pad_offset", [0, 5])
def test_matches_naive(rng, pad_offset):
    V = 9
    pad = V + pad_offset
    prev, y = _data(rng, 200, V, pad)
    pe, ye = _data(rng, 60, V, pad)
    counts = bigram_fit(prev, y, V)
    assert counts.shape == (V + 1, V) and counts.dtype == np.int64 and counts.sum() == 200
    nll, n = bigram_nll(counts, pe, ye)
    want, wn = bigram_nll_naive(prev, y, V, pe, ye)
    assert n == wn == 60 and nll == pytest.approx(want, rel=1e-12)


def test_hand_example():
    # V = 3, PAD = 3; pairs (PAD,0) (0,1) (0,1) (1,2)
    counts = bigram_fit([3, 0, 0, 1], [0, 1, 1, 2], 3)
    nll, n = bigram_nll(counts, [0, 3, 2], [1, 0, 0])
    want = -(math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3))
    assert n == 3 and nll == pytest.approx(want, rel=1e-14)


def test_log_probs_normalised_and_consistent(rng):
    V = 7
    prev, y = _data(rng, 100, V, V)
    counts = bigram_fit(prev, y, V)
    pe, ye = _data(rng, 20, V, V)
    lp = bigram_log_probs(counts, pe)
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, rtol=1e-12)
    assert -lp[np.arange(20), ye].sum() == pytest.approx(bigram_nll(counts, pe, ye)[0], rel=1e-12)
    assert bigram_log_probs(counts, pe, np.float32).dtype == np.float32


def test_shards_add(rng):
    V = 5
    prev, y = _data(rng, 50, V, V)
    full = bigram_fit(prev, y, V)
    assert (full != bigram_fit(prev[:20], y[:20], V) + bigram_fit(prev[20:], y[20:], V)).nnz == 0


def test_errors():
    with pytest.raises(DataError, match="UNK"):
        bigram_fit([0, 1], [0, 3], 3)
    with pytest.raises(DataError, match="aligned"):
        bigram_fit([0, 1, 2], [0, 1], 3)
