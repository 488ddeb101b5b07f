import math

import numpy as np
import pytest

from geolm.core.errors import DataError
from geolm.core.gradcheck import check_grads
from geolm.ops.losses import nll_sum, perplexity, xent_backward, xent_forward
from naive_nn import xent_naive


def _targets(rng, N, V, n_ignored=0):
    t = rng.integers(0, V, N)
    t[rng.permutation(N)[:n_ignored]] = -1
    return t


@pytest.mark.parametrize("N,V,n_ign", [(1, 1, 0), (1, 5, 0), (4, 3, 1), (7, 11, 3), (5, 2, 0)])
def test_xent_gradcheck(rng, strict_float, N, V, n_ign):
    inputs = {"logits": 2.0 * rng.standard_normal((N, V)), "targets": _targets(rng, N, V, n_ign)}
    check_grads(xent_forward, xent_backward, inputs, rng=rng)


@pytest.mark.parametrize("ignore_index", [-1, 0, 3])
def test_xent_matches_naive(rng, ignore_index):
    logits = 3.0 * rng.standard_normal((9, 6))
    t = rng.integers(0, 6, 9)
    t[:3] = ignore_index
    loss, _ = xent_forward(logits, t, ignore_index)
    ref, n = xent_naive(logits, t, ignore_index)
    assert math.isclose(loss, ref, rel_tol=1e-12)
    s, n2 = nll_sum(logits, t, ignore_index)
    assert n2 == n and math.isclose(s, ref * n, rel_tol=1e-12)


def test_ignored_rows_zero_grad(rng):
    logits = rng.standard_normal((6, 5))
    t = np.array([1, -1, 2, -1, 4, 0])
    loss, cache = xent_forward(logits, t)
    d = xent_backward(1.0, cache)
    assert np.all(d[[1, 3]] == 0.0) and np.all(d[[0, 2, 4, 5]] != 0.0)
    # ignored rows do not change the loss
    logits2 = logits.copy()
    logits2[[1, 3]] = 100.0 * rng.standard_normal((2, 5))
    assert xent_forward(logits2, t)[0] == loss
    # rows sum to zero (softmax minus one-hot) and the mean is over non-ignored rows only
    np.testing.assert_allclose(d.sum(axis=1), 0.0, atol=1e-15)


def test_all_ignored(rng):
    loss, cache = xent_forward(rng.standard_normal((3, 4)), np.full(3, -1))
    assert loss == 0.0 and np.all(xent_backward(1.0, cache) == 0.0)
    assert nll_sum(rng.standard_normal((3, 4)), np.full(3, -1)) == (0.0, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_xent_dtype(rng, dtype):
    logits = rng.standard_normal((5, 7)).astype(dtype)
    loss, cache = xent_forward(logits, rng.integers(0, 7, 5))
    assert isinstance(loss, float)
    assert xent_backward(1.0, cache).dtype == dtype
    assert xent_backward(np.float64(0.5), cache).dtype == dtype


def test_xent_huge_logits_float32():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 1e4], [3e4, 3e4, 3e4]], np.float32)
    t = np.array([2, 1, 0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, cache = xent_forward(logits, t)
        d = xent_backward(1.0, cache)
        s, n = nll_sum(logits, t)
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    expected = (2e4 + math.log(2.0) + math.log(3.0)) / 3
    assert math.isclose(loss, expected, rel_tol=1e-6)
    assert math.isclose(s, 3 * expected, rel_tol=1e-12) and n == 3


def test_nll_sum_is_float64_sum(rng):
    logits = rng.standard_normal((50, 30)).astype(np.float32)
    t = _targets(rng, 50, 30, 5)
    s, n = nll_sum(logits, t)
    assert isinstance(s, float) and n == 45
    ref, _ = xent_naive(logits.astype(np.float64), t)
    assert math.isclose(s, ref * n, rel_tol=1e-13)


def test_perplexity():
    assert math.isclose(perplexity(5.616 * 10, 10), math.exp(5.616))
    assert perplexity(0.0, 4) == 1.0
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(DataError, match="at least one target"):
        perplexity(0.0, 0)


def test_bad_targets(rng):
    with pytest.raises(DataError, match="outside the vocabulary"):
        xent_forward(rng.standard_normal((2, 3)), np.array([0, 3]))
    with pytest.raises(DataError, match="reshape"):
        xent_forward(rng.standard_normal((2, 2, 3)), np.array([0, 1]))
    with pytest.raises(DataError, match="integer"):
        nll_sum(rng.standard_normal((2, 3)), np.array([0.0, 1.0]))


def test_xent_backward_is_pure(rng):
    loss, cache = xent_forward(rng.standard_normal((4, 5)), np.array([0, -1, 4, 2]))
    d1 = xent_backward(1.0, cache)
    np.testing.assert_array_equal(d1, xent_backward(1.0, cache))
    np.testing.assert_allclose(xent_backward(2.0, cache), 2.0 * d1)
