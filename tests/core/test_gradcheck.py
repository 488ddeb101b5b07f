"""The checker must be able to fail: broken backwards (flipped sign, dropped transpose, wrong scale) are caught."""
import numpy as np
import pytest

from geolm.core.gradcheck import check_grads, check_grads_directional, rel_error
from geolm.ops.layernorm import layernorm_backward, layernorm_forward
from geolm.ops.linear import linear_backward, linear_forward


def _lin_inputs(rng, I=4, O=4):
    return {"x": rng.standard_normal((3, I)), "w": rng.standard_normal((I, O)), "b": rng.standard_normal(O)}


def test_passes_correct_ops(rng):
    errs = check_grads(linear_forward, linear_backward, _lin_inputs(rng), rng=rng)
    assert set(errs) == {"x", "w", "b"} and max(errs.values()) < 1e-8
    inputs = {"x": rng.standard_normal((2, 5)), "w": rng.standard_normal(5), "b": rng.standard_normal(5)}
    check_grads(layernorm_forward, layernorm_backward, inputs, rng=rng)


def _broken(transform):
    def backward(dy, cache):
        dx, dw, db = linear_backward(dy, cache)
        return transform(dy, cache, dx, dw, db)
    return backward


BROKEN = {
    "flipped sign of dx": lambda dy, c, dx, dw, db: (-dx, dw, db),
    "flipped sign of db": lambda dy, c, dx, dw, db: (dx, dw, -db),
    # square w: dy @ w has the right shape but the wrong values
    "dropped transpose in dx": lambda dy, c, dx, dw, db: (dy @ c[1], dw, db),
    "dropped transpose in dw": lambda dy, c, dx, dw, db: (dx, dw.T, db),
    "wrong scale 2x": lambda dy, c, dx, dw, db: (dx, 2.0 * dw, db),
    "wrong scale 1+1e-4": lambda dy, c, dx, dw, db: (dx * (1.0 + 1e-4), dw, db),
    "missing batch sum in db": lambda dy, c, dx, dw, db: (dx, dw, dy[0]),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_fails_broken_backward(rng, name):
    with pytest.raises(AssertionError, match="gradient of|shape"):
        check_grads(linear_forward, _broken(BROKEN[name]), _lin_inputs(rng), rng=rng)


def test_failure_names_array_and_index(rng):
    def bwd(dy, cache):
        dx, dw, db = linear_backward(dy, cache)
        dw = dw.copy()
        dw[2, 1] += 1.0
        return dx, dw, db
    with pytest.raises(AssertionError, match=r"gradient of w wrong.*worst at \(2, 1\)"):
        check_grads(linear_forward, bwd, _lin_inputs(rng), rng=rng)


def test_small_array_not_masked_by_big_one(rng):
    # per-array error: a 1% error in the tiny gradient of s fails although x's gradient is ~1e6
    def fwd(x, s):
        return 1e6 * x + s * x[0], (x, s)

    def bwd(dy, cache):
        x, s = cache
        dx = 1e6 * dy
        dx[0] += s * dy.sum()
        return dx, np.array(1.01 * x[0] * dy.sum())

    with pytest.raises(AssertionError, match="gradient of s"):
        check_grads(fwd, bwd, {"x": rng.standard_normal(3), "s": np.array(0.5)}, rng=rng)


def test_wrong_number_or_shape_of_grads(rng):
    with pytest.raises(AssertionError, match="expected grads for"):
        check_grads(linear_forward, lambda dy, c: linear_backward(dy, c)[:2], _lin_inputs(rng), rng=rng)
    with pytest.raises(AssertionError, match="shape"):
        check_grads(linear_forward, lambda dy, c: (*linear_backward(dy, c)[:2], np.zeros(1)),
                    _lin_inputs(rng), rng=rng)


def test_nondiff_and_dict_params_and_tuple_outputs(rng):
    def fwd(x, p, k):
        return (x * p["a"] * k, np.sum(p["b"]["c"] ** 2)), (x, p, k)

    def bwd(douts, cache):
        dy, ds = douts
        x, p, k = cache
        return {"a": dy * x * k, "b": {"c": 2.0 * ds * p["b"]["c"]}}

    inputs = {"x": rng.standard_normal(4), "p": {"a": rng.standard_normal(4), "b": {"c": rng.standard_normal(2)}},
              "k": 3}
    errs = check_grads(fwd, bwd, inputs, rng=rng, nondiff=("x",))
    assert set(errs) == {"p.a", "p.b.c"}


def test_random_upstream_catches_what_all_ones_misses(rng):
    # w = ones: with an all-ones upstream every row of dx is the same, so reversing the rows of dx
    # would go unnoticed; the random dout catches it
    inputs = _lin_inputs(rng)
    inputs["w"] = np.ones((4, 4))

    def bwd(dy, cache):
        dx, dw, db = linear_backward(dy, cache)
        return dx[::-1].copy(), dw, db
    with pytest.raises(AssertionError, match="gradient of x"):
        check_grads(linear_forward, bwd, inputs, rng=rng)


def test_directional(rng):
    A = rng.standard_normal((5, 5))

    def loss(t):
        return float(0.5 * t @ A @ t + np.sin(t).sum())

    def grad_ok(t):
        return 0.5 * (A + A.T) @ t + np.cos(t)

    theta = rng.standard_normal(5)
    assert max(check_grads_directional(loss, grad_ok, theta, rng=rng)) < 1e-7
    with pytest.raises(AssertionError, match="directional derivative"):
        check_grads_directional(loss, lambda t: A @ t + np.cos(t), theta, rng=rng)  # dropped symmetrisation
    with pytest.raises(AssertionError, match="directional derivative"):
        check_grads_directional(loss, lambda t: -grad_ok(t), theta, rng=rng)


def test_rel_error():
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.2])) == pytest.approx(0.2 / 2.2)
