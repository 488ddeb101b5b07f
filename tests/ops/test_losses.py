import math

import numpy as np
import pytest

from geolm.core.errors import DataError
from geolm.core.gradcheck import check_grads
from geolm.ops.losses import (nll_rows, nll_sum, perplexity, shifted_exp_rows, xent_backward, xent_factors,
                              xent_forward)
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


# ---------------------------------------------------------------- fast tier (implicit form, in place)

def _explicit(e, r, y):
    """The gradient xent_factors leaves implicit: r[:,None] * e - onehot(y) / N."""
    d = r[:, None] * e
    d[np.arange(len(y)), y] -= 1.0 / len(y)
    return d


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 40.0, -40.0])  # 40 * randn: rows beyond +-60 take the shifted path
def test_xent_factors_matches_reference(rng, dtype, scale):
    logits = (scale * rng.standard_normal((6, 13))).astype(dtype)
    logits[2] -= 200.0  # a row far below: shifted, not underflowed
    y = rng.integers(0, 13, 6)
    ref, cache = xent_forward(logits.astype(np.float64), y)
    dref = xent_backward(1.0, cache)
    e = logits.copy()
    loss, r = xent_factors(e, y)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    assert abs(loss - ref) <= tol * abs(ref) and r.dtype == dtype and e.dtype == dtype
    np.testing.assert_allclose(_explicit(e, r, y), dref, atol=tol)
    nll = nll_rows(logits, y)
    assert nll.dtype == np.float64
    np.testing.assert_allclose(nll.mean(), ref, rtol=tol)
    np.testing.assert_allclose(nll.sum(), nll_sum(logits.astype(np.float64), y)[0], rtol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale,shift", [(1.0, 0.0), (40.0, 0.0), (1.0, -200.0), (1.0, 300.0)])
def test_xent_factors_refill_matches_shifted(rng, dtype, scale, shift):
    """The optimistic no-max path, and its refill fallback (overflow, underflow), equal the shifted computation."""
    logits = (scale * rng.standard_normal((6, 13)) + shift).astype(dtype)
    logits[1] += 5.0
    y = rng.integers(0, 13, 6)
    e1, e2 = logits.copy(), logits.copy()
    calls = []

    def refill(z):
        calls.append(1)
        z[...] = logits

    l1, r1 = xent_factors(e1, y)
    l2, r2 = xent_factors(e2, y, refill)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    assert abs(l1 - l2) <= tol * abs(l1)
    np.testing.assert_allclose(r1[:, None] * e1, r2[:, None] * e2, atol=tol)
    fallback = not (scale == 1.0 and shift == 0.0) and (dtype == np.float32 or shift < 0)  # float64 exp: 1e308
    assert len(calls) == int(fallback)
    z = logits.copy()
    np.testing.assert_allclose(nll_rows(z, y, overwrite=True, refill=refill), nll_rows(logits, y), rtol=tol)


@pytest.mark.parametrize("refill", [False, True])
def test_fast_tier_float32_at_extreme_logits_matches_float64_oracle(rng, refill):
    """float32 logits of +-1e4, rows just below and above exp's float32 range (88), a row at -100: the loss, its
    gradient and the NLL rows agree with the float64 reference on the same (float32-rounded) logits."""
    V = 9
    logits = rng.standard_normal((7, V)).astype(np.float32)
    logits[0] = [1e4, 0.0, -1e4, 5.0, 1e4, -3.0, 2.0, 9e3, 0.5]
    logits[1] += 87.5  # exp still finite in float32
    logits[2] += 95.0  # exp overflows float32 without a shift
    logits[3] -= 100.0  # exp underflows: the row sum would be 0
    logits[4, 3] = 3e4
    logits[5] = -1e4
    y = np.array([2, 0, 1, 8, 3, 4, 5])
    ref, cache = xent_forward(logits.astype(np.float64), y)
    dref = xent_backward(1.0, cache)
    nref = nll_rows(logits.astype(np.float64), y)
    fill = (lambda z: z.__setitem__(Ellipsis, logits)) if refill else None
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        e = logits.copy()
        loss, r = xent_factors(e, y, fill)
        z = logits.copy()
        nll = nll_rows(z, y, overwrite=True, refill=fill)
    assert math.isclose(loss, ref, rel_tol=1e-6)
    np.testing.assert_allclose(_explicit(e, r, y), dref, atol=1e-6)
    np.testing.assert_allclose(nll, nref, rtol=1e-6, atol=1e-6)
    assert math.isclose(nref[0], 2e4 + math.log(2.0), rel_tol=1e-12)


def test_shifted_exp_rows_shift_only_when_needed(rng):
    z = rng.standard_normal((3, 4))
    e = z.copy()
    s, c = shifted_exp_rows(e)
    assert c is None
    np.testing.assert_allclose(e, np.exp(z), rtol=1e-15)
    np.testing.assert_allclose(s, np.exp(z).sum(axis=1), rtol=1e-15)
    z[1] += 70.0
    e = z.copy()
    s, c = shifted_exp_rows(e)
    np.testing.assert_array_equal(c[:, 0], z.max(axis=1))
    np.testing.assert_allclose(e, np.exp(z - c), rtol=1e-15)


def test_xent_factors_propagates_nan(rng):
    logits = rng.standard_normal((3, 5)).astype(np.float32)
    logits[1, 2] = np.nan
    loss, _ = xent_factors(logits.copy(), np.array([0, 1, 2]))
    assert np.isnan(loss)
    z = logits.copy()
    loss, _ = xent_factors(z, np.array([0, 1, 2]), lambda b: b.__setitem__(Ellipsis, logits))
    assert np.isnan(loss)
