"""The metric kernels' per-token helpers against NumPy (np.linalg in float64), awkward sizes and both dtypes, and
the float32 kernel at extreme settings (rank 1, r = d, eps 1e-5, alpha 100, one token) against the float64 dense
oracle."""
import math

import numpy as np
import pytest

from geolm.ops import metric_kernels as mk
from geolm.ops.metric import dense_metric_backward, dense_metric_forward, metric_solve_backward, metric_solve_forward

SIZES = [(1, 1), (1, 7), (3, 5), (4, 4), (5, 16), (8, 3), (13, 40), (64, 384)]  # (r, d)


def _spd(rng, r, dtype):
    A = rng.standard_normal((r, 2 * r + 1))
    return (A @ A.T / r + 0.1 * np.eye(r)).astype(dtype)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("r,d", SIZES)
def test_gram_upper_matches_numpy(rng, r, d, dtype):
    U = rng.standard_normal((r, d)).astype(dtype)
    K = np.full((r, r), np.nan, dtype)
    mk.gram_upper(K, U, dtype(1.7), dtype(0.3))
    ref = 1.7 * U.astype(np.float64) @ U.T.astype(np.float64) + 0.3 * np.eye(r)
    iu = np.triu_indices(r)
    assert _rel(K[iu], ref[iu]) < (1e-6 if dtype == np.float32 else 1e-14)
    Ks = np.full((r, r, 3), np.nan, dtype)  # a strided destination (one lane of a [r, r, 3] array)
    mk.gram_upper(Ks[:, :, 1], U, dtype(1.7), dtype(0.3))
    np.testing.assert_array_equal(Ks[:, :, 1][iu], K[iu])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("r", [1, 2, 5, 16, 17, 64])
def test_solve_and_inverse_match_numpy(rng, r, dtype):
    K = _spd(rng, r, dtype)
    K64 = K.astype(np.float64)
    R = np.linalg.cholesky(K64).T.astype(dtype)  # upper, zero below
    tol = 1e-5 if dtype == np.float32 else 1e-12
    w = rng.standard_normal(r).astype(dtype)
    s = w.copy()
    mk.solve_factor(R, s)
    R64 = R.astype(np.float64)
    assert _rel(s, np.linalg.solve(R64.T @ R64, w)) < 10 * tol
    Ri = np.full((r, r), np.nan, dtype)
    mk.inverse_factor(Ri, R)
    assert _rel(Ri, np.linalg.inv(R64)) < 10 * tol
    np.testing.assert_array_equal(np.tril(Ri, -1), 0.0)
    M = np.empty((r, r), dtype)
    mk.gram_upper(M, Ri, dtype(1.0), dtype(0.0))  # K^-1 = Ri Ri^T
    iu = np.triu_indices(r)
    assert _rel(M[iu], np.linalg.inv(R64.T @ R64)[iu]) < 10 * tol


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matvec_rmatvec(rng, dtype):
    U = rng.standard_normal((13, 37)).astype(dtype)
    x, w = rng.standard_normal(37).astype(dtype), rng.standard_normal(13).astype(dtype)
    out_w, out_x = np.empty(13, dtype), np.empty(37, dtype)
    mk.matvec(out_w, U, x)
    mk.rmatvec(out_x, U, w)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    assert _rel(out_w, U.astype(np.float64) @ x) < tol
    assert _rel(out_x, U.T.astype(np.float64) @ w) < tol


EXTREME = [(1, 96), (96, 96), (1, 384), (384, 384), (64, 384)]  # (rank, d)


@pytest.mark.parametrize("rank,d", EXTREME)
@pytest.mark.parametrize("eps,alpha", [(1e-5, 100.0), (1e-5, 1.0), (1.0, 100.0)])
def test_float32_kernel_extremes_one_token(rank, d, eps, alpha):
    """Batch 1 (the serial driver), float32 in: v, logdet, dU, df within 1e-4 (norm-wise) of the float64 dense
    oracle on the same rounded inputs; r = d runs in float64 inside (metric.work_dtype)."""
    rng = np.random.default_rng(rank * 1000 + d)
    U = (rng.standard_normal((1, rank, d)) / math.sqrt(d)).astype(np.float32)
    f = rng.standard_normal((1, d)).astype(np.float32)
    dv = rng.standard_normal((1, d)).astype(np.float32)
    dl = rng.standard_normal(1).astype(np.float32)
    v0, l0, c0 = dense_metric_forward(U.astype(np.float64), f.astype(np.float64), eps, alpha)
    dU0, df0 = dense_metric_backward(dv.astype(np.float64), dl.astype(np.float64), c0)
    v, l, cache = metric_solve_forward(U, f, eps, alpha)
    dU, df = metric_solve_backward(dv, dl, cache)
    for name, a, b in (("v", v, v0), ("logdet", l, l0), ("dU", dU, dU0), ("df", df, df0)):
        assert a.dtype == np.float32
        err = np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b)
        assert err < 1e-4, (name, err)


@pytest.mark.parametrize("chunk", [5, 16, 1000])
def test_log_det_gemm_in_row_chunks(rng, monkeypatch, chunk):
    """The backward's GEMM cut into row chunks (as on OpenBLAS kernel sets with a small-matrix path) gives the
    same dU as one call, to rounding."""
    U = (0.2 * rng.standard_normal((9, 12, 40))).astype(np.float32)
    f, dv = (rng.standard_normal((9, 40)).astype(np.float32) for _ in range(2))
    dl = rng.standard_normal(9).astype(np.float32)
    _, _, cache = metric_solve_forward(U, f, 0.1, 2.0)
    whole = metric_solve_backward(dv, dl, cache)
    monkeypatch.setattr(mk, "gemm_row_chunk", lambda r, d: chunk)
    cut = metric_solve_backward(dv, dl, cache)
    for a, b in zip(cut, whole):
        assert _rel(a, b) < 1e-6


def test_gemm_row_chunk_rule(monkeypatch):
    class Info:
        def __init__(self, arch):
            self.arch = arch

        def info(self):
            return [{"internal_api": "openblas", "architecture": self.arch, "filepath": "/x/scipy.libs/libopenblas.so"}]

    for arch, want in (("Haswell", 384), ("SkylakeX", 192)):
        mk.gemm_row_chunk.cache_clear()
        monkeypatch.setattr(mk, "_blas_controller", lambda: Info(arch))
        assert mk.gemm_row_chunk(64, 384) == want
        assert mk.gemm_row_chunk(64, 384) * 64 * 64 <= mk.SMALL_GEMM_MNK or want == 384
        assert mk.gemm_row_chunk(8, 384) == 384  # already small
    mk.gemm_row_chunk.cache_clear()


@pytest.mark.parametrize("r,d", [(3, 16), (64, 384)])
@pytest.mark.parametrize("scale", [1.0, 1e2, 1e4, 1e5])
def test_large_U_as_accurate_as_the_reference(rng, r, d, scale):
    """alpha |U|^2 / eps up to ~1e11 (an exploding field): R's diagonal is large, s = K^-1 U f must still be
    accurate (a back substitution that adds and then removes R_ii x_i loses it); v, logdet, dU, df within a few
    times the vectorised NumPy reference's float32 error against the float64 dense oracle."""
    U = (scale * rng.standard_normal((4, r, d)) / math.sqrt(d)).astype(np.float32)
    f = (scale * rng.standard_normal((4, d))).astype(np.float32)
    dv = rng.standard_normal((4, d)).astype(np.float32)
    dl = rng.standard_normal(4).astype(np.float32)
    v0, l0, c0 = dense_metric_forward(U.astype(np.float64), f.astype(np.float64), 0.1, 1.0)
    exact = (v0, l0) + dense_metric_backward(dv.astype(np.float64), dl.astype(np.float64), c0)
    errs = {}
    for backend in ("ref", "numba"):
        v, l, cache = metric_solve_forward(U, f, 0.1, 1.0, backend=backend)
        got = (v, l) + metric_solve_backward(dv, dl, cache)
        errs[backend] = [np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b) for a, b in zip(got, exact)]
    for name, e_nb, e_ref in zip(("v", "logdet", "dU", "df"), errs["numba"], errs["ref"]):
        assert e_nb <= 4 * max(e_ref, 1e-6), (name, e_nb, e_ref)
