"""Rodrigues rotation taking unit a to unit b, its backward, and the transport features built on it (spec 2.6).

N rows . d dimension (3 for S^2) . V vocab . K neighbours . M batch . n context length

Rotation (implementation form, no division by sin(theta), so small angles need no branch):
    c = a.b,  q = 1/(1 + c),  A = b a^T - a b^T,  R = I + A + q A^2      (R a = b for unit a, b)
    3-D: A x = (a x b) x x = w x x with w = a x b, A^2 x = w (w.x) - x (w.w):
        y = x + w x x + q [w (w.x) - x (w.w)]
    any d, with alpha = a.x, beta = b.x (never forming R):
        A x = alpha b - beta a,  gamma = a.(Ax) = alpha c - beta |a|^2,  delta = b.(Ax) = alpha |b|^2 - beta c
        y = x + (alpha + q gamma) b - (beta + q delta) a = x + P b - Q a
    Both are the same function of (x, a, b) in 3-D, for any (not only unit) a, b; normalisation is a separate op.
Antiparallel (1 + c < TAU = 1e-6): the main form loses accuracy like eps/(1 + c), so use the deterministic
pi-rotation in the plane (a, k), k = unit Gram-Schmidt of e_i (i = argmin |a_i|, first on ties) against a:
    y = x - 2 (a.x) a - 2 (k.x) k      (a normalised inside); its gradient w.r.t. a and b is taken as 0.
All rotations are computed in float64 and cast back to the input dtype.

Backward, cotangent dy (3-D, spec 2.6; checked by central differences):
    dx = R^T dy;  dw = x x dy + q [dy (w.x) + x (dy.w) - 2 (dy.x) w];  dc = -q^2 [(dy.w)(w.x) - (dy.x)(w.w)]
    da = b x dw + dc b;  db = dw x a + dc a
Backward, any d (our derivation from y = x + P b - Q a), with dP = dy.b, dQ = -dy.a:
    dalpha = dP (1 + q c) + dQ q |b|^2,        dbeta = -dP q |a|^2 + dQ (1 - q c)
    dq = dP gamma + dQ delta,                  dc = q (dP alpha - dQ beta) - q^2 dq
    dx = dy + dalpha a + dbeta b
    da = -Q dy + dalpha x + dc b - 2 q beta dP a
    db =  P dy + dbeta x + dc a + 2 q alpha dQ b
Transport (spec 2.6, 2.9 item 5): R_vu = R(x_u -> x_v);
    offsets_transported: o_v = sum_{u in N(v)} R_vu (x_u - x_v)   (frozen features; avoids the R x_u = x_v pitfall)
    transport_aggregate: h2_v = sum_{u in N(v)} R_vu h_u,  dh_u = sum_{v: u in N(v)} R_vu^T dh2_v
    frame_rotate: Q_t x_s with Q_t = R(x_t -> e_d) (e_3 in 3-D), differentiable in x_t and x_s.
Reference: geomstats hypersphere.py; the 1/(1 + c) form is the standard "rotation between two vectors" identity.
"""
import numpy as np

from ..core.errors import ConfigError

TAU = 1e-6


def _out_dtype(*arrs):
    dt = np.result_type(*[np.asarray(a).dtype for a in arrs])
    return dt if np.issubdtype(dt, np.floating) else np.dtype(np.float64)


def _sum_to(g, shape):
    """Sum a broadcast gradient g back to `shape`."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _dot(u, v):
    return np.einsum("...i,...i->...", u, v)  # [...,d],[...,d] -> [...]


def perpendicular(a):
    """Deterministic unit k perpendicular to a: Gram-Schmidt of e_i, i = argmin |a_i|. a [..., d] -> [..., d]."""
    a = np.asarray(a, np.float64)
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    i = np.argmin(np.abs(a), axis=-1)  # [...]
    e = np.zeros_like(a)
    np.put_along_axis(e, i[..., None], 1.0, axis=-1)
    ai = np.take_along_axis(a, i[..., None], axis=-1)  # [...,1]
    k = e - ai * a
    return k / np.linalg.norm(k, axis=-1, keepdims=True)


def _flip(x, a):
    """pi-rotation in the plane (a, k): x - 2 (a.x) a - 2 (k.x) k; symmetric, so also its own transpose."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    k = perpendicular(a)
    return x - 2.0 * _dot(a, x)[..., None] * a - 2.0 * _dot(k, x)[..., None] * k


def _prepare(x, a, b):
    x, a, b = (np.asarray(v, np.float64) for v in (x, a, b))
    d = x.shape[-1]
    if a.shape[-1] != d or b.shape[-1] != d:
        raise ConfigError(f"rotation needs x, a, b with the same last dimension, got {x.shape}, {a.shape}, {b.shape}")
    if d < 2:
        raise ConfigError(f"rotations need dimension >= 2, got {d}; use --dim 3 or more")
    x, a, b = np.broadcast_arrays(x, a, b)
    c = _dot(a, b)  # [...]
    anti = (1.0 + c) < TAU
    q = 1.0 / np.where(anti, 1.0, 1.0 + c)  # [...]
    return x, a, b, c, q, anti


def _rotate3(x, a, b, q):
    w = np.cross(a, b)  # [...,3]
    return x + np.cross(w, x) + (w * _dot(w, x)[..., None] - x * _dot(w, w)[..., None]) * q[..., None]


def _rotated(x, a, b, c, q):
    al, be = _dot(a, x), _dot(b, x)  # [...]
    ga = al * c - be * _dot(a, a)
    de = al * _dot(b, b) - be * c
    return x + (al + q * ga)[..., None] * b - (be + q * de)[..., None] * a


def rotate_forward(x, a, b):
    """y = R(a -> b) x. x, a, b [..., d] (broadcastable; a, b unit); d == 3 uses the cross-product form.

    Returns (y [broadcast shape] in the inputs' float dtype, cache).
    """
    shapes = (np.shape(x), np.shape(a), np.shape(b))
    dt = _out_dtype(x, a, b)
    x, a, b, c, q, anti = _prepare(x, a, b)
    y = _rotate3(x, a, b, q) if x.shape[-1] == 3 else _rotated(x, a, b, c, q)
    if anti.any():
        y[anti] = _flip(x[anti], a[anti])
    return y.astype(dt, copy=False), (x, a, b, c, q, anti, shapes, dt)


def _rotate3_backward(dy, x, a, b, c, q):
    w = np.cross(a, b)
    wx, ww, yw, yx = _dot(w, x), _dot(w, w), _dot(dy, w), _dot(dy, x)
    qq = q[..., None]
    dx = dy - np.cross(w, dy) + (w * yw[..., None] - dy * ww[..., None]) * qq  # R^T dy
    dw = np.cross(x, dy) + qq * (dy * wx[..., None] + x * yw[..., None] - 2.0 * yx[..., None] * w)
    dc = -(q * q) * (yw * wx - yx * ww)
    da = np.cross(b, dw) + dc[..., None] * b
    db = np.cross(dw, a) + dc[..., None] * a
    return dx, da, db


def _rotated_backward(dy, x, a, b, c, q):
    al, be, naa, nbb = _dot(a, x), _dot(b, x), _dot(a, a), _dot(b, b)
    ga, de = al * c - be * naa, al * nbb - be * c
    P, Q = al + q * ga, be + q * de
    dP, dQ = _dot(dy, b), -_dot(dy, a)
    dal = dP * (1.0 + q * c) + dQ * q * nbb
    dbe = -dP * q * naa + dQ * (1.0 - q * c)
    dq = dP * ga + dQ * de
    dc = q * (dP * al - dQ * be) - q * q * dq
    e = lambda s: s[..., None]  # noqa: E731  [...] -> [...,1]
    dx = dy + e(dal) * a + e(dbe) * b
    da = -e(Q) * dy + e(dal) * x + e(dc) * b - 2.0 * e(q * be * dP) * a
    db = e(P) * dy + e(dbe) * x + e(dc) * a + 2.0 * e(q * al * dQ) * b
    return dx, da, db


def rotate_backward(dy, cache):
    """-> (dx, da, db), each shaped like its forward input; da = db = 0 on antiparallel rows."""
    x, a, b, c, q, anti, shapes, dt = cache
    dy = np.broadcast_to(np.asarray(dy, np.float64), x.shape)
    # y = x + A x + q A^2 x
    f = _rotate3_backward if x.shape[-1] == 3 else _rotated_backward
    dx, da, db = f(dy, x, a, b, c, q)
    if anti.any():
        dx[anti] = _flip(dy[anti], a[anti])
        da[anti] = 0.0
        db[anti] = 0.0
    return tuple(_sum_to(g, s).astype(dt, copy=False) for g, s in zip((dx, da, db), shapes))


def rotate(x, a, b):
    """Forward only: R(a -> b) x."""
    return rotate_forward(x, a, b)[0]


def rotation_matrix(a, b):
    """Dense R(a -> b) [..., d, d] float64 from unit a, b [..., d] (tests and small problems)."""
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    d = a.shape[-1]
    c = _dot(a, b)
    anti = (1.0 + c) < TAU
    q = 1.0 / np.where(anti, 1.0, 1.0 + c)
    A = b[..., :, None] * a[..., None, :] - a[..., :, None] * b[..., None, :]  # [...,d,d]
    R = np.eye(d) + A + (A @ A) * q[..., None, None]
    if anti.any():
        an = a[anti] / np.linalg.norm(a[anti], axis=-1, keepdims=True)
        k = perpendicular(an)
        R[anti] = (np.eye(d) - 2.0 * an[:, :, None] * an[:, None, :] - 2.0 * k[:, :, None] * k[:, None, :])
    return R


def _gather(X, nbr):
    """-> x_v [V,K,d], x_u [V,K,d], valid [V,K] for neighbour lists nbr [V,K] (-1 padded)."""
    nbr = np.asarray(nbr)
    valid = nbr >= 0  # [V,K]
    xu = X[np.where(valid, nbr, 0)]  # [V,K,d]
    xv = np.broadcast_to(X[:, None, :], xu.shape)  # [V,1,d] -> [V,K,d]
    return xv, xu, valid


def offsets_transported(X, nbr):
    """o_v = sum_{u in N(v)} R(x_u -> x_v)(x_u - x_v). X [V, d] unit rows, nbr [V, K] -> [V, d] (X's dtype)."""
    X64 = np.asarray(X, np.float64)
    xv, xu, valid = _gather(X64, nbr)
    y = rotate(xu - xv, xu, xv)  # [V,K,d]
    y[~valid] = 0.0
    return y.sum(axis=1).astype(_out_dtype(X), copy=False)  # [V,K,d] -> [V,d]


def transport_aggregate_forward(h, X, nbr):
    """h2_v = sum_{u in N(v)} R(x_u -> x_v) h_u. h [V, d], X [V, d] (frozen), nbr [V, K] -> (h2 [V, d], cache)."""
    X64 = np.asarray(X, np.float64)
    xv, xu, valid = _gather(X64, nbr)
    hu = np.asarray(h, np.float64)[np.where(valid, nbr, 0)]  # [V,K,d]
    y = rotate(hu, xu, xv)  # [V,K,d]
    y[~valid] = 0.0
    return y.sum(axis=1).astype(_out_dtype(h), copy=False), (xu, xv, valid, np.asarray(nbr), np.shape(h),
                                                               _out_dtype(h))


def transport_aggregate_backward(dh2, cache):
    """-> dh [V, d]: dh_u = sum_{v: u in N(v)} R_vu^T dh2_v (X and nbr get no gradient)."""
    xu, xv, valid, nbr, hshape, dt = cache
    dy = np.broadcast_to(np.asarray(dh2, np.float64)[:, None, :], xu.shape)  # [V,d] -> [V,K,d]
    _, rc = rotate_forward(np.zeros(xu.shape), xu, xv)
    dhu = rotate_backward(dy, rc)[0]  # R^T dh2_v, [V,K,d]
    dh = np.zeros(hshape)
    np.add.at(dh, nbr[valid], dhu[valid])  # scatter-add to the neighbours u
    return dh.astype(dt, copy=False)


def pole(d):
    """The frame target e_d (last basis vector; e_3 in 3-D) as float64 [d]."""
    e = np.zeros(d)
    e[-1] = 1.0
    return e


def frame_rotate_forward(x_t, xs):
    """Rotated-frame features Q_t x_s, Q_t = R(x_t -> e_d). x_t [M, d] unit, xs [M, n, d] -> (y [M, n, d], cache)."""
    x_t = np.asarray(x_t)
    e = pole(x_t.shape[-1]).astype(_out_dtype(x_t, xs))  # keep float32 in -> float32 out
    y, rc = rotate_forward(xs, x_t[:, None, :], e)  # [M,n,d]
    return y, rc


def frame_rotate_backward(dy, cache):
    """-> (dx_t [M, d], dxs [M, n, d])."""
    dxs, da, _ = rotate_backward(dy, cache)
    return da[:, 0, :], dxs  # [M,1,d] -> [M,d]


def frame_rotate(x_t, xs):
    """Forward only: Q_t x_s, Q_t = R(x_t -> e_d). x_t [M, d], xs [M, n, d] -> [M, n, d]."""
    return frame_rotate_forward(x_t, xs)[0]


# names used in /work/notes/API.md
rotation_forward = rotate_forward
rotation_backward = rotate_backward
