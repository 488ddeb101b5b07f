"""Low-rank metric: the dense tier (float64: the oracle) vs NumPy ref vs Numba kernel, gradchecks, errors, dtypes,
scale sweeps, and the float64-work path for float32 with r close to d."""
import math

import numpy as np
import pytest

from geolm.core.errors import ConfigError, GeolmError, NumericalError
from geolm.core.gradcheck import check_grads
from geolm.ops import metric_kernels
from geolm.ops.metric import (dense_metric_backward, dense_metric_forward, metric_logdet_parts,
                              metric_solve_backward, metric_solve_backward_ref, metric_solve_forward,
                              metric_solve_ref, work_dtype)

SHAPES = [(5, 3, 7), (1, 1, 4), (4, 1, 6), (3, 6, 6), (2, 9, 5), (7, 8, 32), (1, 16, 16)]  # (N, r, d)
TOL = {np.float64: 1e-9, np.float32: 2e-4}


def _inputs(rng, N, r, d, dtype, scale=0.5):
    U = (scale * rng.standard_normal((N, r, d))).astype(dtype)
    f = rng.standard_normal((N, d)).astype(dtype)
    return U, f


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


def _oracle(U, f, eps, alpha, dv=None, dl=None):
    """The dense tier in float64 on the same (rounded) inputs: (v, logdet[, dU, df])."""
    v, l, cache = dense_metric_forward(U.astype(np.float64), f.astype(np.float64), eps, alpha)
    if dv is None:
        return v, l
    dl = None if dl is None else dl.astype(np.float64)
    return (v, l) + dense_metric_backward(dv.astype(np.float64), dl, cache)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,r,d", SHAPES)
def test_ref_and_numba_match_dense_oracle(rng, N, r, d, dtype):
    U, f = _inputs(rng, N, r, d, dtype)
    eps, alpha = 0.3, 1.7
    dv = rng.standard_normal((N, d)).astype(dtype)
    dl = rng.standard_normal(N).astype(dtype)
    v0, l0, dU0, df0 = _oracle(U, f, eps, alpha, dv, dl)
    _, _, dU0n, df0n = _oracle(U, f, eps, alpha, dv)
    for backend in ("ref", "numba"):
        v, l, cache = metric_solve_forward(U, f, eps, alpha, backend=backend)
        assert cache[0] == backend
        assert v.dtype == dtype and l.dtype == dtype and v.shape == (N, d) and l.shape == (N,)
        assert _rel(v, v0) < TOL[dtype], backend
        assert _rel(l, l0) < TOL[dtype], backend
        dU, df = metric_solve_backward(dv, dl, cache)
        assert dU.dtype == dtype and df.dtype == dtype and dU.shape == U.shape
        assert _rel(dU, dU0) < 10 * TOL[dtype], backend
        assert _rel(df, df0) < TOL[dtype], backend
        dU, df = metric_solve_backward(dv, None, cache)
        assert _rel(dU, dU0n) < 10 * TOL[dtype], backend
        assert _rel(df, df0n) < TOL[dtype], backend


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numba_matches_ref_large(rng, monkeypatch, dtype, parallel):
    """Both Numba drivers (prange over token chunks, and serial) against the NumPy reference."""
    monkeypatch.setattr(metric_kernels, "PARALLEL_FLOPS", 0.0 if parallel else float("inf"))
    U, f = _inputs(rng, 300, 24, 96, dtype, scale=0.2)
    dv = rng.standard_normal(f.shape).astype(dtype)
    dl = rng.standard_normal(300).astype(dtype)
    v1, l1, c1 = metric_solve_ref(U, f, 0.1, 1.0)
    v2, l2, c2 = metric_solve_forward(U, f, 0.1, 1.0)
    assert c2[0] == "numba"
    tol = 1e-10 if dtype == np.float64 else 1e-4
    assert _rel(v2, v1) < tol and _rel(l2, l1) < tol
    g1 = metric_solve_backward_ref(dv, dl, c1)
    g2 = metric_solve_backward(dv, dl, c2)
    for a, b in zip(g2, g1):
        assert _rel(a, b) < tol
    out = np.full(U.shape, np.nan, dtype)
    g3 = metric_solve_backward(dv, dl, c2, dU_out=out)  # written in place, same values
    assert g3[0] is out
    np.testing.assert_array_equal(g3[0], g2[0])
    np.testing.assert_array_equal(g3[1], g2[1])


def test_cache_factor_and_logdet_parts(rng):
    U, f = _inputs(rng, 4, 5, 9, np.float64)
    eps, alpha = 0.2, 3.0
    v, l, cache = metric_solve_forward(U, f, eps, alpha)
    const, logdetK = metric_logdet_parts(cache)
    assert isinstance(const, float) and const == pytest.approx((9 - 5) * math.log(eps))
    np.testing.assert_allclose(const + logdetK, l, rtol=1e-13)
    R = cache[4]
    K = eps * np.eye(5) + alpha * U @ U.transpose(0, 2, 1)
    np.testing.assert_allclose(R.transpose(0, 2, 1) @ R, K, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.tril(R, -1), 0.0)


@pytest.mark.parametrize("backend", ["numba", "ref"])
@pytest.mark.parametrize("N,r,d", [(2, 3, 5), (1, 1, 3), (2, 4, 4), (2, 5, 3)])
def test_gradcheck(rng, strict_float, backend, N, r, d):
    U, f = _inputs(rng, N, r, d, np.float64)

    def fwd(U, f):
        v, l, cache = metric_solve_forward(U, f, 0.4, 1.3, backend=backend)
        return (v, l), cache

    def bwd(dout, cache):
        return metric_solve_backward(dout[0], dout[1], cache)

    check_grads(fwd, bwd, {"U": U, "f": f}, rng=rng)

    def fwd_v(U, f):  # dlogdet = None path
        v, _, cache = metric_solve_forward(U, f, 0.4, 1.3, backend=backend)
        return v, cache

    check_grads(fwd_v, lambda dv, c: metric_solve_backward(dv, None, c), {"U": U, "f": f}, rng=rng)


def test_gradcheck_catches_a_wrong_backward(rng):
    U, f = _inputs(rng, 2, 3, 5, np.float64)

    def fwd(U, f):
        v, l, cache = metric_solve_forward(U, f, 0.4, 1.3)
        return (v, l), cache

    def bad(dout, cache):
        dU, df = metric_solve_backward(dout[0], None, cache)  # drops the log-det term
        return dU, df

    with pytest.raises(AssertionError):
        check_grads(fwd, bad, {"U": U, "f": f}, rng=rng)


@pytest.mark.parametrize("backend", ["numba", "ref"])
def test_not_positive_definite_raises(rng, backend):
    # two equal rows of U: K has the eigenvalue eps, which float32 cannot resolve next to alpha*|U|^2
    U, f = _inputs(rng, 3, 2, 4, np.float32, scale=30.0)
    U[:, 1] = U[:, 0]
    with pytest.raises(NumericalError, match=r"in float32.*eps=1e-06.*alpha=1000.*max\|U\|=.*raise eps"):
        metric_solve_forward(U, f, 1e-6, 1e3, backend=backend)
    U[[0, 2]] *= 1e-6  # only token 1 fails, and the message says so
    with pytest.raises(NumericalError, match=r"for 1 of 3 tokens \(first 1\)"):
        metric_solve_forward(U, f, 1e-6, 1e3, backend=backend)
    # r > d in float32 runs in float64 (see test_float64_work_*): resolved at 1e-6, not at 1e-14
    U, f = _inputs(rng, 3, 12, 4, np.float32, scale=30.0)
    assert np.isfinite(metric_solve_forward(U, f, 1e-6, 1e3, backend=backend)[0]).all()
    with pytest.raises(NumericalError, match=r"in float64 for 3 of 3 tokens"):
        metric_solve_forward(U, f, 1e-14, 1e3, backend=backend)
    U64 = U.astype(np.float64)
    U64[1, 0, 0] = np.nan
    with pytest.raises(NumericalError, match="non-finite"):
        metric_solve_forward(U64, f.astype(np.float64), 0.1, 1.0, backend=backend)


def test_bad_inputs_raise_one_line_errors(rng):
    U, f = _inputs(rng, 2, 3, 5, np.float64)
    with pytest.raises(ConfigError, match="eps"):
        metric_solve_forward(U, f, 0.0, 1.0)
    with pytest.raises(ConfigError, match="alpha"):
        metric_solve_forward(U, f, 0.1, -1.0)
    with pytest.raises(GeolmError, match=r"\[N,d\]"):
        metric_solve_forward(U, f[:, :4], 0.1, 1.0)
    with pytest.raises(GeolmError, match="dtype"):
        metric_solve_forward(U, f.astype(np.float32), 0.1, 1.0)
    with pytest.raises(GeolmError, match="backend"):
        metric_solve_forward(U, f, 0.1, 1.0, backend="gpu")


def test_alpha_zero_is_scaled_identity(rng):
    U, f = _inputs(rng, 3, 4, 6, np.float32)
    v, l, cache = metric_solve_forward(U, f, 0.5, 0.0)
    np.testing.assert_allclose(v, f / 0.5, rtol=1e-6)
    np.testing.assert_allclose(l, 6 * math.log(0.5), rtol=1e-6)


@pytest.mark.parametrize("backend", ["numba", "ref"])
def test_scale_sweep_float32(rng, backend):
    """eps, alpha over 1e-3..1e3 at default scales (U-MLP output ~0.01-0.1, r < d): finite, accurate."""
    N, r, d = 16, 8, 48
    U64 = 0.05 * rng.standard_normal((N, r, d))
    f64 = rng.standard_normal((N, d))
    dv = rng.standard_normal((N, d)).astype(np.float32)
    dl = rng.standard_normal(N).astype(np.float32)
    U, f = U64.astype(np.float32), f64.astype(np.float32)
    for eps in (1e-3, 1e-1, 1.0, 1e3):
        for alpha in (1e-3, 1.0, 1e3):
            v, l, cache = metric_solve_forward(U, f, eps, alpha, backend=backend)
            dU, df = metric_solve_backward(dv, dl, cache)
            assert all(np.isfinite(a).all() and a.dtype == np.float32 for a in (v, l, dU, df))
            v0, l0 = _oracle(U, f, eps, alpha)
            # |v| <= |f|/eps; compare in units of that bound
            assert np.abs(v - v0).max() <= 1e-4 * np.abs(f64).max() / eps, (eps, alpha)
            assert np.abs(l - l0).max() <= 1e-4 * max(1.0, np.abs(l0).max()), (eps, alpha)


# ------------------------------------------------------------------------------------------ the dense tier

@pytest.mark.parametrize("N,r,d", [(3, 2, 5), (2, 5, 3), (1, 1, 1)])
def test_dense_tier_gradcheck(rng, strict_float, N, r, d):
    U, f = _inputs(rng, N, r, d, np.float64)

    def fwd(U, f):
        v, l, cache = dense_metric_forward(U, f, 0.4, 1.3)
        return (v, l), cache

    check_grads(fwd, lambda dout, c: dense_metric_backward(dout[0], dout[1], c), {"U": U, "f": f}, rng=rng)
    check_grads(lambda U, f: (dense_metric_forward(U, f, 0.4, 1.3)[0], dense_metric_forward(U, f, 0.4, 1.3)[2]),
                lambda dv, c: dense_metric_backward(dv, None, c), {"U": U, "f": f}, rng=rng)


def test_dense_tier_float32(rng):
    U, f = _inputs(rng, 4, 3, 8, np.float32)
    dv = rng.standard_normal((4, 8)).astype(np.float32)
    v, l, cache = dense_metric_forward(U, f, 0.3, 1.7)
    dU, df = dense_metric_backward(dv, np.ones(4, np.float32), cache)
    assert all(a.dtype == np.float32 for a in (v, l, dU, df))
    for a, b in zip((v, l, dU, df), _oracle(U, f, 0.3, 1.7, dv, np.ones(4, np.float32))):
        assert _rel(a, b) < 1e-4
    with pytest.raises(GeolmError, match="dtype"):
        dense_metric_forward(U, f.astype(np.float64), 0.3, 1.7)


# ------------------------------------------------------------------------------------------ float32, r close to d

def test_work_dtype_rule():
    assert work_dtype(np.zeros((1, 8, 16), np.float32)) == np.float32  # 2r <= d: float32 throughout
    assert work_dtype(np.zeros((1, 9, 16), np.float32)) == np.float64  # 2r > d: float64 inside
    assert work_dtype(np.zeros((1, 16, 16), np.float64)) == np.float64


@pytest.mark.parametrize("chunk_bytes", [None, 3000])
@pytest.mark.parametrize("N,r,d", [(40, 9, 16), (7, 16, 16), (5, 20, 12)])
def test_float64_work_numba_matches_ref(rng, monkeypatch, N, r, d, chunk_bytes):
    """float32 with 2r > d: both backends compute in float64 (one or several token chunks), return float32."""
    from geolm.ops import metric
    if chunk_bytes:
        monkeypatch.setattr(metric, "WIDE_CHUNK_BYTES", chunk_bytes)  # a few tokens per chunk
    U, f = _inputs(rng, N, r, d, np.float32, scale=0.3)
    dv = rng.standard_normal((N, d)).astype(np.float32)
    dl = rng.standard_normal(N).astype(np.float32)
    ref = metric_solve_forward(U, f, 1e-3, 5.0, backend="ref")
    nb = metric_solve_forward(U, f, 1e-3, 5.0)
    assert nb[2][4].dtype == np.float64 and ref[2][4].dtype == np.float64  # the cached factor
    out = np.full(U.shape, np.nan, np.float32)
    for dlog in (dl, None):
        g_ref = metric_solve_backward(dv, dlog, ref[2])
        g_nb = metric_solve_backward(dv, dlog, nb[2], dU_out=out)
        assert g_nb[0] is out
        for a, b in zip(nb[:2] + g_nb, ref[:2] + g_ref):
            assert a.dtype == np.float32 and a.shape == b.shape
            assert _rel(a, b) < 1e-6
    const, logdetK = metric_logdet_parts(nb[2])
    np.testing.assert_allclose(const + logdetK, nb[1], rtol=1e-6)


SWEEP = [(d, r, eps, alpha) for d, alphas in ((96, (10.0, 100.0)), (384, (10.0,)))
         for r in (1, d // 2, d - 1, d) for eps in (1e-5, 1e-4) for alpha in alphas]


@pytest.mark.parametrize("d, rank, eps, alpha", SWEEP)
def test_float32_accuracy_sweep_small_eps_large_alpha(d, rank, eps, alpha):
    """Norm-wise relative errors of v, logdet, dU, df against the float64 dense oracle, U ~ N(0, 1/d), are at
    most those of a float32 dense solve (where that one factors) and below 1e-4 for every rank up to d (float32
    Woodbury with r close to d cancels catastrophically in (f - alpha U^T s)/eps: errors of percent size)."""
    rng = np.random.default_rng(d + rank)
    N = 12 if d < 384 else 3
    U = (rng.standard_normal((N, rank, d)) / math.sqrt(d)).astype(np.float32)
    f = rng.standard_normal((N, d)).astype(np.float32)
    dv = rng.standard_normal((N, d)).astype(np.float32)
    dl = rng.standard_normal(N).astype(np.float32)
    exact = _oracle(U, f, eps, alpha, dv, dl)
    try:
        vd, ld, cd = dense_metric_forward(U, f, eps, alpha)
        dense32 = (vd, ld) + dense_metric_backward(dv, dl, cd)
    except NumericalError:  # g does not factor in float32 at all: only the 1e-4 bound applies
        dense32 = (np.inf,) * 4

    def err(a, b):
        return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)

    for backend in ("numba", "ref"):
        v, l, cache = metric_solve_forward(U, f, eps, alpha, backend=backend)
        got = (v, l) + metric_solve_backward(dv, dl, cache)
        for name, a, b, c in zip(("v", "logdet", "dU", "df"), got, exact, dense32):
            assert a.dtype == np.float32
            e, e_dense = err(a, b), err(c, b)
            assert e <= min(e_dense, 1e-4), (backend, name, e, e_dense)
