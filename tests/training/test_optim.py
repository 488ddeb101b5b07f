import math

import numpy as np
import pytest

from geolm.training.optim import (_kernel, adam_init, adam_step, adam_step_ref, clip_grad_norm, global_norm,
                                  global_norm_ref, lr_at)


def _adam_by_hand(theta, grads, lr, b1, b2, eps, wd):
    """Scalar loops over the textbook Adam(W) formulas."""
    theta = [float(t) for t in theta]
    m = [0.0] * len(theta)
    v = [0.0] * len(theta)
    for t, g in enumerate(grads, start=1):
        for i in range(len(theta)):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            theta[i] -= lr * wd * theta[i]
            mh, vh = m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)
            theta[i] -= lr * mh / (math.sqrt(vh) + eps)
    return np.array(theta)


def test_first_adam_step_is_lr_times_sign():
    theta = np.array([1.0, -2.0, 0.5])
    grad = np.array([0.3, -4.0, 1e-3])
    state = adam_init(theta)
    adam_step(theta, grad, state, lr=0.01)
    # t = 1: m_hat = g, v_hat = g^2 -> step = lr g / (|g| + eps)
    g = [0.3, -4.0, 1e-3]
    expected = [t - 0.01 * gi / (abs(gi) + 1e-8) for t, gi in zip([1.0, -2.0, 0.5], g)]
    np.testing.assert_allclose(theta, expected, rtol=1e-14)
    np.testing.assert_allclose(theta, [0.99, -1.99, 0.49], rtol=1e-6)  # ~ lr * sign(g)
    assert state["t"] == 1


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adam_matches_hand_computed(rng, wd):
    theta0 = rng.standard_normal(6)
    grads = rng.standard_normal((4, 6))
    theta = theta0.copy()
    state = adam_init(theta)
    for g in grads:
        adam_step(theta, g, state, lr=0.05, b1=0.8, b2=0.95, eps=1e-6, weight_decay=wd)
    np.testing.assert_allclose(theta, _adam_by_hand(theta0, grads, 0.05, 0.8, 0.95, 1e-6, wd), rtol=1e-12)


def test_adamw_decay_is_decoupled():
    # zero gradient: plain Adam leaves theta alone, AdamW shrinks it by (1 - lr wd) per step
    theta = np.array([2.0, -3.0])
    state = adam_init(theta)
    for _ in range(3):
        adam_step(theta, np.zeros(2), state, lr=0.1, weight_decay=0.5)
    np.testing.assert_allclose(theta, np.array([2.0, -3.0]) * 0.95 ** 3, rtol=1e-12)
    theta2 = np.array([2.0, -3.0])
    state2 = adam_init(theta2)
    adam_step(theta2, np.zeros(2), state2, lr=0.1)
    assert theta2.tolist() == [2.0, -3.0]


def test_adam_in_place_and_float32(rng):
    theta = rng.standard_normal(10).astype(np.float32)
    ptr = theta.__array_interface__["data"][0]
    state = adam_init(theta)
    adam_step(theta, rng.standard_normal(10).astype(np.float32), state, lr=1e-3, weight_decay=0.01)
    assert theta.dtype == state["m"].dtype == state["v"].dtype == np.float32
    assert theta.__array_interface__["data"][0] == ptr


def test_clip_returns_preclip_norm_and_rescales():
    g = np.array([3.0, 4.0], np.float32)
    n = clip_grad_norm(g, 1.0)
    assert n == pytest.approx(5.0)
    np.testing.assert_allclose(g, [0.6, 0.8], rtol=1e-6)
    assert g.dtype == np.float32
    assert global_norm(g) == pytest.approx(1.0, rel=1e-6)
    g2 = np.array([0.3, 0.4])
    assert clip_grad_norm(g2, 1.0) == pytest.approx(0.5)
    assert g2.tolist() == [0.3, 0.4]  # under the limit: untouched
    g3 = np.array([30.0, 40.0])
    assert clip_grad_norm(g3, 0.0) == pytest.approx(50.0) and g3.tolist() == [30.0, 40.0]  # 0 disables


def test_global_norm_float64_accumulation():
    g = np.full(10 ** 6, 1e-3, np.float32)
    assert global_norm(g) == pytest.approx(1.0, rel=1e-6)


def test_lr_warmup_and_cosine_endpoints():
    base, lo, warm, total = 1e-3, 1e-5, 10, 110
    assert lr_at(0, base, "cosine", warm, total, lo) == pytest.approx(base / warm)
    assert lr_at(warm - 1, base, "cosine", warm, total, lo) == pytest.approx(base)
    assert lr_at(warm, base, "cosine", warm, total, lo) == pytest.approx(base)
    assert lr_at(warm + 50, base, "cosine", warm, total, lo) == pytest.approx(0.5 * (base + lo))
    assert lr_at(total, base, "cosine", warm, total, lo) == pytest.approx(lo)
    assert lr_at(total + 100, base, "cosine", warm, total, lo) == pytest.approx(lo)
    lrs = [lr_at(s, base, "cosine", warm, total, lo) for s in range(total + 1)]
    assert all(a <= b for a, b in zip(lrs[:warm], lrs[1:warm + 1]))  # rising warm-up
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1:]))  # falling cosine


def test_lr_constant_and_unknown():
    assert lr_at(0, 0.1) == 0.1 and lr_at(1000, 0.1) == 0.1
    assert lr_at(1, 0.1, "constant", warmup=4) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(0, 0.1, "linear")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("wd,scale", [(0.0, 1.0), (0.01, 0.37)])
def test_fused_adam_matches_numpy_reference(rng, dtype, wd, scale):
    theta0 = rng.standard_normal(1001).astype(dtype)
    a, b = theta0.copy(), theta0.copy()
    sa, sb = adam_init(a), adam_init(b)
    for _ in range(5):
        g = rng.standard_normal(1001).astype(dtype)
        adam_step(a, g, sa, lr=0.01, weight_decay=wd, grad_scale=scale)
        adam_step_ref(b, g, sb, lr=0.01, weight_decay=wd, grad_scale=scale)
    assert a.dtype == dtype and sa["m"].dtype == dtype
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    np.testing.assert_allclose(sa["v"], sb["v"], rtol=tol * 10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_norm_kernel_matches_reference(rng, dtype):
    g = (rng.standard_normal(12345) * 1e3).astype(dtype)
    assert math.sqrt(_kernel("_sumsq_nb")(g)) == pytest.approx(global_norm_ref(g), rel=1e-10)
    assert global_norm(g) == pytest.approx(global_norm_ref(g), rel=1e-10)
    assert global_norm(np.zeros(3, dtype)) == 0.0
    assert math.isnan(global_norm(np.array([1.0, np.nan], dtype)))
    assert math.isinf(global_norm(np.array([1.0, np.inf], dtype)))


def test_global_norm_float32_squares_in_float64():
    g = np.full(4, 1e20, np.float32)  # squares overflow float32; the norm 2e20 does not
    assert global_norm(g) == pytest.approx(2e20, rel=1e-6)
