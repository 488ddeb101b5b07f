import numpy as np
import pytest

from geolm.geometry import rotation as rot
from geolm.core.errors import ConfigError
from geolm.core.gradcheck import check_grads
from geolm.geometry.rotation import (frame_rotate_backward, frame_rotate_forward, offsets_transported, perpendicular,
                            rotate, rotate_backward, rotate_forward, rotation_matrix, transport_aggregate_backward,
                            transport_aggregate_forward)
from naive_geometry import rotation_matrix_naive


def unit(rng, *shape):
    v = rng.standard_normal(shape)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def away_from_antiparallel(rng, n, d, min_gap=0.3):
    a, b = unit(rng, n, d), unit(rng, n, d)
    flip = np.sum(a * b, -1) < -1 + min_gap
    b[flip] = -b[flip]
    return a, b


@pytest.mark.parametrize("d", [2, 3, 4, 7])
def test_rotation_matrix_properties(rng, d):
    a, b = unit(rng, 6, d), unit(rng, 6, d)
    R = rotation_matrix(a, b)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", R, a), b, atol=1e-12)
    np.testing.assert_allclose(np.einsum("nji,njk->nik", R, R), np.broadcast_to(np.eye(d), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    for i in range(6):
        np.testing.assert_allclose(R[i], rotation_matrix_naive(a[i], b[i]), atol=1e-11)


@pytest.mark.parametrize("d", [2, 3, 5])
def test_rotate_matches_matrix(rng, d):
    a, b, x = unit(rng, 9, d), unit(rng, 9, d), rng.standard_normal((9, d))
    y = rotate(x, a, b)
    np.testing.assert_allclose(y, np.einsum("nij,nj->ni", rotation_matrix(a, b), x), atol=1e-12)
    np.testing.assert_allclose(rotate(a, a, b), b, atol=1e-12)


def test_3d_form_equals_general_form(rng):
    # both forms are the same function of (x, a, b), also off the sphere
    x, a, b = rng.standard_normal((3, 8, 3))
    X, A, B, c, q, _ = rot._prepare(x, a, b)
    np.testing.assert_allclose(rot._rotate3(X, A, B, q), rot._rotated(X, A, B, c, q), atol=1e-12)
    dy = rng.standard_normal((8, 3))
    for g3, gd in zip(rot._rotate3_backward(dy, X, A, B, c, q), rot._rotated_backward(dy, X, A, B, c, q)):
        np.testing.assert_allclose(g3, gd, atol=1e-11)


@pytest.mark.parametrize("d", [3, 4])
def test_small_angle_continuous(rng, d):
    a = unit(rng, d)
    x = rng.standard_normal(d)
    prev = None
    for eps in [1e-4, 1e-6, 1e-8, 1e-10, 0.0]:
        p = a + eps * unit(rng, d)
        b = p / np.linalg.norm(p)
        y = rotate(x, a, b)
        assert np.isfinite(y).all()
        np.testing.assert_allclose(y, x, atol=5 * eps + 1e-15)
        if prev is not None:
            assert np.abs(y - prev).max() < 1e-3
        prev = y
    _, cache = rotate_forward(x, a, a)
    dx, da, db = rotate_backward(np.ones(d), cache)
    assert all(np.isfinite(g).all() for g in (dx, da, db))


@pytest.mark.parametrize("d", [2, 3, 6])
def test_antiparallel_exact(rng, d):
    a = unit(rng, 5, d)
    x = rng.standard_normal((5, d))
    y = rotate(x, a, -a)
    R = rotation_matrix(a, -a)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", R, a), -a, atol=1e-14)
    np.testing.assert_allclose(np.einsum("nji,njk->nik", R, R), np.broadcast_to(np.eye(d), R.shape), atol=1e-13)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    np.testing.assert_allclose(y, np.einsum("nij,nj->ni", R, x), atol=1e-13)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), atol=1e-13)
    # deterministic k: Gram-Schmidt of the e_i with smallest |a_i|
    k = perpendicular(np.array([0.6, 0.0, 0.8]))
    np.testing.assert_allclose(k, [0.0, 1.0, 0.0])
    _, cache = rotate_forward(x, a, -a)
    dx, da, db = rotate_backward(np.ones_like(x), cache)
    assert not da.any() and not db.any()
    np.testing.assert_allclose(dx, np.einsum("nji,nj->ni", R, np.ones_like(x)), atol=1e-13)


def test_near_pi_accuracy(rng):
    # theta close to pi but outside the branch: still a rotation taking a to b
    a = unit(rng, 3)
    for gap in [1e-1, 1e-2, 3e-3]:  # 1 + c ~ gap^2 / 2 stays above TAU
        p = -a + gap * unit(rng, 3)
        b = p / np.linalg.norm(p)
        assert 1 + a @ b > rot.TAU
        R = rotation_matrix(a, b)
        np.testing.assert_allclose(R @ a, b, atol=1e-8)
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-8)
        np.testing.assert_allclose(rotate(a, a, b), b, atol=1e-8)


@pytest.mark.parametrize("N,d", [(1, 3), (4, 3), (1, 2), (3, 5), (2, 8)])
def test_rotate_gradcheck(rng, strict_float, N, d):
    a, b = away_from_antiparallel(rng, N, d)
    check_grads(rotate_forward, rotate_backward, {"x": rng.standard_normal((N, d)), "a": a, "b": b}, rng=rng)


def test_rotate_gradcheck_broadcast(rng, strict_float):
    a, b = away_from_antiparallel(rng, 3, 3)
    check_grads(rotate_forward, rotate_backward,
                {"x": rng.standard_normal((3, 4, 3)), "a": a[:, None, :], "b": b[0]}, rng=rng)


@pytest.mark.parametrize("M,n,d", [(1, 1, 3), (3, 8, 3), (2, 2, 4)])
def test_frame_rotate(rng, strict_float, M, n, d):
    xt = unit(rng, M, d)
    xt[xt[:, -1] < -0.7] *= -1  # away from the antiparallel pole
    xs = unit(rng, M, n, d)
    y, _ = frame_rotate_forward(xt, xs)
    e = np.zeros(d)
    e[-1] = 1.0
    for m in range(M):
        np.testing.assert_allclose(y[m], xs[m] @ rotation_matrix(xt[m], e).T, atol=1e-12)
    np.testing.assert_allclose(frame_rotate_forward(xt, xt[:, None, :])[0][:, 0], np.broadcast_to(e, (M, d)),
                               atol=1e-12)
    check_grads(frame_rotate_forward, frame_rotate_backward, {"x_t": xt, "xs": xs}, rng=rng)


def _graph(rng, V, K, d):
    X = unit(rng, V, d)
    nbr = rng.integers(0, V, (V, K))
    nbr[rng.random((V, K)) < 0.25] = -1
    return X, nbr


def test_offsets_transported(rng):
    X, nbr = _graph(rng, 7, 3, 3)
    o = offsets_transported(X, nbr)
    want = np.zeros_like(X)
    for v in range(7):
        for u in nbr[v]:
            if u >= 0:
                want[v] += rotation_matrix_naive(X[u], X[v]) @ (X[u] - X[v])
    np.testing.assert_allclose(o, want, atol=1e-12)
    assert offsets_transported(X.astype(np.float32), nbr).dtype == np.float32


def test_transport_aggregate(rng, strict_float):
    V, K, d = 6, 3, 3
    X, nbr = _graph(rng, V, K, d)
    h = rng.standard_normal((V, d))
    h2, _ = transport_aggregate_forward(h, X, nbr)
    want = np.zeros_like(h)
    for v in range(V):
        for u in nbr[v]:
            if u >= 0:
                want[v] += rotation_matrix_naive(X[u], X[v]) @ h[u]
    np.testing.assert_allclose(h2, want, atol=1e-12)
    check_grads(transport_aggregate_forward, transport_aggregate_backward, {"h": h, "X": X, "nbr": nbr},
                rng=rng, nondiff=("X",))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(rng, dtype):
    a, b = away_from_antiparallel(rng, 4, 3)
    x = rng.standard_normal((4, 3))
    y, cache = rotate_forward(x.astype(dtype), a.astype(dtype), b.astype(dtype))
    assert y.dtype == dtype and all(g.dtype == dtype for g in rotate_backward(y, cache))
    y, cache = frame_rotate_forward(a.astype(dtype), x[:, None, :].astype(dtype))
    assert y.dtype == dtype and all(g.dtype == dtype for g in frame_rotate_backward(y, cache))


def test_errors(rng):
    with pytest.raises(ConfigError, match="dimension"):
        rotate(np.ones((2, 1)), np.ones((2, 1)), np.ones((2, 1)))
    with pytest.raises(ConfigError, match="last dimension"):
        rotate(np.ones((2, 3)), np.ones((2, 4)), np.ones((2, 3)))
