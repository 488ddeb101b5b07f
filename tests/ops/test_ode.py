"""RK4 solver and its discrete adjoint: order on an exact linear ODE, adjoint vs central differences
(with aux and boundary cotangents), vs an explicitly unrolled backward, S = 1, dtypes, errors, and the adjoint's
memory (one stage's field cache alive at a time, recomputed at the forward's stage inputs)."""
import numpy as np
import pytest
import scipy.linalg

from geolm.core.errors import ConfigError
from geolm.core.gradcheck import check_grads
from geolm.ops.ode import B_WEIGHTS, rk4_backward, rk4_forward, tree_add


# ---- test fields -----------------------------------------------------------------------------------------

def linear_forward(z, p):
    """dz/dt = A z for row vectors: z [N,D] @ A^T."""
    return z @ p["A"].T, {}, (z, p["A"])


def linear_backward(ddz, daux, cache):
    z, A = cache
    return ddz @ A, {"A": ddz.T @ z}


def mlp_field_forward(z, p):
    """F(z) = tanh(z W1 + b1) W2 + b2; aux f2 = |F|^2, hsum = sum tanh(.)."""
    a = np.tanh(z @ p["l1"]["w"] + p["l1"]["b"])  # [N,D] -> [N,H]
    F = a @ p["l2"]["w"] + p["l2"]["b"]  # [N,H] -> [N,D]
    aux = {"f2": np.sum(F * F, axis=1), "hsum": np.sum(a, axis=1)}
    return F, aux, (z, a, F, p)


def mlp_field_backward(ddz, daux, cache):
    z, a, F, p = cache
    dF = ddz.copy()
    if daux.get("f2") is not None:
        dF += 2.0 * daux["f2"][:, None] * F
    da = dF @ p["l2"]["w"].T
    if daux.get("hsum") is not None:
        da += daux["hsum"][:, None]
    dpre = da * (1.0 - a * a)
    dp = {"l1": {"w": z.T @ dpre, "b": dpre.sum(0)}, "l2": {"w": a.T @ dF, "b": dF.sum(0)}}
    return dpre @ p["l1"]["w"].T, dp


def _mlp_params(rng, D, H, dtype=np.float64):
    return {"l1": {"w": (rng.standard_normal((D, H)) / np.sqrt(D)).astype(dtype),
                   "b": (0.1 * rng.standard_normal(H)).astype(dtype)},
            "l2": {"w": (rng.standard_normal((H, D)) / np.sqrt(H)).astype(dtype),
                   "b": (0.1 * rng.standard_normal(D)).astype(dtype)}}


# ---- tests -----------------------------------------------------------------------------------------------

def test_tableau_is_classical_rk4():
    assert B_WEIGHTS == (1 / 6, 1 / 3, 1 / 3, 1 / 6)


def test_fourth_order_convergence_on_linear_ode(rng):
    D, N, t0, t1 = 4, 3, 0.0, 1.5
    A = 0.5 * rng.standard_normal((D, D))
    z0 = rng.standard_normal((N, D))
    exact = z0 @ scipy.linalg.expm(A * (t1 - t0)).T
    errs = []
    for S in (8, 16, 32, 64):
        zT, traj, aux, _ = rk4_forward(linear_forward, z0, {"A": A}, t0, t1, S)
        assert traj.shape == (S + 1, N, D) and aux == {}
        np.testing.assert_array_equal(traj[0], z0)
        np.testing.assert_array_equal(traj[-1], zT)
        errs.append(np.abs(zT - exact).max())
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all((ratios > 13.5) & (ratios < 18.0)) and 15.0 < ratios[-1] < 17.0, (errs, ratios)


@pytest.mark.parametrize("S,N", [(1, 3), (3, 2), (2, 1)])
def test_adjoint_matches_central_differences(rng, strict_float, S, N):
    D, H = 3, 5
    z0 = rng.standard_normal((N, D))
    p = _mlp_params(rng, D, H)

    def fwd(z0, p):
        zT, traj, aux, cache = rk4_forward(mlp_field_forward, z0, p, 0.0, 0.8, S)
        return (zT, traj, aux["f2"], aux["hsum"]), cache

    def bwd(dout, cache):
        dzT, dtraj, df2, dh = dout
        return rk4_backward(dzT, dtraj, {"f2": df2, "hsum": dh}, cache, mlp_field_forward, mlp_field_backward)

    check_grads(fwd, bwd, {"z0": z0, "p": p}, rng=rng)

    def fwd_T(z0, p):  # only zT: dtraj None, daux None
        zT, _, _, cache = rk4_forward(mlp_field_forward, z0, p, 0.0, 0.8, S)
        return zT, cache

    check_grads(fwd_T, lambda d, c: rk4_backward(d, None, None, c, mlp_field_forward, mlp_field_backward),
                {"z0": z0, "p": p}, rng=rng)


def test_field_eval_forward_sweep_matches(rng):
    """rk4_forward(field_eval=...) (cache-free forward sweep) gives the same result and the same gradients."""
    z0 = rng.standard_normal((3, 3))
    p = _mlp_params(rng, 3, 5)

    def ev(z, p):
        dz, aux, _ = mlp_field_forward(z, p)
        return dz, aux

    zT, traj, aux, cache = rk4_forward(mlp_field_forward, z0, p, 0.0, 1.0, 3)
    zT2, traj2, aux2, cache2 = rk4_forward(mlp_field_forward, z0, p, 0.0, 1.0, 3, field_eval=ev)
    np.testing.assert_array_equal(traj, traj2)
    np.testing.assert_array_equal(aux["f2"], aux2["f2"])
    g = rk4_backward(zT, None, None, cache, mlp_field_forward, mlp_field_backward)
    g2 = rk4_backward(zT, None, None, cache2, mlp_field_forward, mlp_field_backward)
    np.testing.assert_array_equal(g[0], g2[0])


def test_adjoint_check_catches_wrong_weights(rng):
    """The gradcheck above can fail: a field whose backward forgets the aux cotangent is caught."""
    z0 = rng.standard_normal((2, 3))
    p = _mlp_params(rng, 3, 4)

    def fwd(z0, p):
        zT, _, aux, cache = rk4_forward(mlp_field_forward, z0, p, 0.0, 1.0, 2)
        return (zT, aux["f2"]), cache

    def bwd(dout, cache):  # drops daux
        return rk4_backward(dout[0], None, None, cache, mlp_field_forward, mlp_field_backward)

    with pytest.raises(AssertionError):
        check_grads(fwd, bwd, {"z0": z0, "p": p}, rng=rng)


def _unrolled(z0, p, h, S, dzT, dtraj, daux):
    """Forward keeping every stage cache, then a plain reverse sweep over all 4 S stages."""
    z, caches = z0, []
    for s in range(S):
        k1, _, c1 = mlp_field_forward(z, p)
        k2, _, c2 = mlp_field_forward(z + 0.5 * h * k1, p)
        k3, _, c3 = mlp_field_forward(z + 0.5 * h * k2, p)
        k4, _, c4 = mlp_field_forward(z + h * k3, p)
        caches.append((c1, c2, c3, c4))
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    zb = dzT + dtraj[S]
    dp = None
    for s in reversed(range(S)):
        da = [{n: daux[n][s, i] for n in daux} for i in range(4)]
        kb4 = h / 6 * zb
        a4, g4 = mlp_field_backward(kb4, da[3], caches[s][3])
        kb3 = h / 3 * zb + h * a4
        a3, g3 = mlp_field_backward(kb3, da[2], caches[s][2])
        kb2 = h / 3 * zb + h / 2 * a3
        a2, g2 = mlp_field_backward(kb2, da[1], caches[s][1])
        kb1 = h / 6 * zb + h / 2 * a2
        a1, g1 = mlp_field_backward(kb1, da[0], caches[s][0])
        zb = zb + a1 + a2 + a3 + a4 + dtraj[s]
        for g in (g4, g3, g2, g1):
            dp = tree_add(dp, g)
    return zb, dp


def test_matches_unrolled_backward(rng):
    N, D, H, S = 6, 4, 7, 5
    z0 = rng.standard_normal((N, D))
    p = _mlp_params(rng, D, H)
    zT, traj, aux, cache = rk4_forward(mlp_field_forward, z0, p, 0.0, 2.0, S)
    dzT = rng.standard_normal((N, D))
    dtraj = rng.standard_normal((S + 1, N, D))
    daux = {k: rng.standard_normal(v.shape) for k, v in aux.items()}
    assert aux["f2"].shape == (S, 4, N)
    dz0, dp = rk4_backward(dzT, dtraj, daux, cache, mlp_field_forward, mlp_field_backward)
    dz0u, dpu = _unrolled(z0, p, 2.0 / S, S, dzT, dtraj, daux)
    np.testing.assert_allclose(dz0, dz0u, rtol=1e-12, atol=1e-12)
    for l in ("l1", "l2"):
        for k in ("w", "b"):
            np.testing.assert_allclose(dp[l][k], dpu[l][k], rtol=1e-12, atol=1e-12)


def test_float32_preserved(rng):
    z0 = rng.standard_normal((4, 3)).astype(np.float32)
    p = _mlp_params(rng, 3, 5, np.float32)
    zT, traj, aux, cache = rk4_forward(mlp_field_forward, z0, p, 0.0, 1.0, 2)
    assert zT.dtype == traj.dtype == aux["f2"].dtype == np.float32
    dz0, dp = rk4_backward(np.ones_like(zT), None, {"f2": np.ones_like(aux["f2"])}, cache,
                           mlp_field_forward, mlp_field_backward)
    assert dz0.dtype == np.float32 and dp["l1"]["w"].dtype == np.float32


def test_tree_add_handles_missing_and_none():
    acc = tree_add(None, {"a": np.ones(2), "b": {"c": np.ones(1)}})
    acc = tree_add(acc, {"a": np.ones(2), "b": None, "d": np.full(3, 2.0)})
    np.testing.assert_array_equal(acc["a"], [2.0, 2.0])
    np.testing.assert_array_equal(acc["b"]["c"], [1.0])
    np.testing.assert_array_equal(acc["d"], [2.0, 2.0, 2.0])


def test_bad_steps_raise():
    z0 = np.zeros((1, 2))
    with pytest.raises(ConfigError, match="n_steps"):
        rk4_forward(linear_forward, z0, {"A": np.eye(2)}, 0.0, 1.0, 0)
    with pytest.raises(ConfigError, match="n_steps"):
        rk4_forward(linear_forward, z0, {"A": np.eye(2)}, 0.0, 1.0, 2.5)


class _Cache:
    """A field cache that counts how many of its kind are alive (CPython frees it when the last reference goes)."""
    live, peak = 0, 0

    def __init__(self, inner):
        self.inner = inner
        _Cache.live += 1
        _Cache.peak = max(_Cache.peak, _Cache.live)

    def __del__(self):
        _Cache.live -= 1


def test_adjoint_holds_one_stage_cache_at_a_time(rng):
    """The backward recomputes each stage's cache from the stage input the forward stored (the same points, bit
    for bit) right before its VJP, and drops it after: never two field caches alive at once, 4 S recomputations."""
    N, D, H, S = 3, 4, 5, 3
    z0 = rng.standard_normal((N, D))
    p = _mlp_params(rng, D, H)
    points = []

    def fwd(z, p):
        points.append(z.copy())
        dz, aux, c = mlp_field_forward(z, p)
        return dz, aux, _Cache(c)

    def bwd(ddz, daux, cache):
        return mlp_field_backward(ddz, daux, cache.inner)

    zT, traj, aux, cache = rk4_forward(fwd, z0, p, 0.0, 1.0, S)
    assert _Cache.live == 0  # the forward sweep keeps no cache
    forward_points = points[:]
    points.clear()
    _Cache.peak = 0
    daux = {k: rng.standard_normal(v.shape) for k, v in aux.items()}
    dz0, dp = rk4_backward(zT, None, daux, cache, fwd, bwd)
    assert _Cache.peak == 1 and _Cache.live == 0
    # the adjoint visits steps S..1 and, within a step, stages 4..1, each at its forward point
    order = [4 * s + i for s in reversed(range(S)) for i in (3, 2, 1, 0)]
    assert len(points) == 4 * S
    for got, k in zip(points, order):
        np.testing.assert_array_equal(got, forward_points[k])
    dz0u, dpu = _unrolled(z0, p, 1.0 / S, S, zT, np.zeros((S + 1, N, D)), daux)
    np.testing.assert_allclose(dz0, dz0u, rtol=1e-12, atol=1e-12)
