"""Dense float64 loop oracle for the low-rank metric (spec 1.2): form g [d,d] per token, np.linalg.solve + slogdet.

g = eps*I + alpha*U^T U;  v = g^-1 f;  logdet = log det g.
Backward through the dense inverse: y = g^-1 dv, df = y, dg = -y v^T + dl g^-1 (g symmetric),
dU = alpha*U (dg + dg^T).  Slow on purpose: a test oracle only.
"""
import numpy as np


def dense_metric_forward(U, f, eps, alpha):
    """U [N,r,d], f [N,d] -> (v [N,d], logdet [N]) in float64."""
    U = np.asarray(U, np.float64)
    f = np.asarray(f, np.float64)
    N, r, d = U.shape
    v = np.empty((N, d))
    logdet = np.empty(N)
    for n in range(N):
        g = eps * np.eye(d) + alpha * U[n].T @ U[n]  # [d,r] @ [r,d] -> [d,d]
        v[n] = np.linalg.solve(g, f[n])
        sign, logdet[n] = np.linalg.slogdet(g)
        assert sign > 0
    return v, logdet


def dense_metric_backward(dv, dlogdet, U, f, eps, alpha):
    """(dv [N,d], dlogdet [N] or None) -> (dU [N,r,d], df [N,d]) in float64."""
    U = np.asarray(U, np.float64)
    N, r, d = U.shape
    dU = np.empty((N, r, d))
    df = np.empty((N, d))
    for n in range(N):
        g = eps * np.eye(d) + alpha * U[n].T @ U[n]
        gi = np.linalg.inv(g)
        v = gi @ f[n]
        y = gi @ dv[n]
        dg = -np.outer(y, v)
        if dlogdet is not None:
            dg = dg + dlogdet[n] * gi
        dU[n] = alpha * U[n] @ (dg + dg.T)  # g = eps I + alpha U^T U
        df[n] = y
    return dU, df
