"""Classical fixed-step RK4 for an autonomous field, and its discrete adjoint.

N flattened tokens . D model width . S ODE steps

Solver (classical RK4, Butcher tableau c = (0, 1/2, 1/2, 1), weights b = (1/6, 1/3, 1/3, 1/6); NOT
Kutta's 3/8 rule that torchdiffeq's 'rk4' uses), h = (t1 - t0)/S, autonomous field F:
    k1 = F(y1), y1 = z      k2 = F(y2), y2 = z + h/2 k1      k3 = F(y3), y3 = z + h/2 k2      k4 = F(y4), y4 = z + h k3
    z' = z + h (k1/6 + k2/3 + k3/3 + k4/6)
Field protocol: field_forward(z [N,D], p) -> (dz [N,D], aux {name: [N]}, cache);
                field_backward(ddz [N,D], daux {name: [N]}, cache) -> (dz [N,D], dp like p).
daux holds only the names that receive a cotangent (a field may skip work for the others).

Memory: the forward keeps z at the S+1 step boundaries (traj) and each step's stage inputs y2, y3, y4 (stages
[S,3,N,D]), no field caches. The backward walks the steps in reverse and, within a step, the stages 4, 3, 2, 1:
it recomputes stage i's field cache from its stored input y_i right before stage i's VJP and drops it after
(discretise-then-optimise, the exact gradient of the steps taken; diffrax's RecursiveCheckpointAdjoint with
every stage input checkpointed). Peak: (4 S + 1) N D states, the aux [S,4,N], and ONE field cache (one stage),
whatever S; the field caches, usually the large part, do not grow with S. A field whose caches live in
reusable buffers (a workspace) needs one set of them: a cache is dead before the next field_forward call.
Per step, with zbar the cotangent of z':
    kbar_i = h b_i zbar;  stage 4: (a4, dp) = VJP(kbar_4) at y4 -> zbar += a4, kbar_3 += h a4
                          stage 3: at y3                     -> zbar += a3, kbar_2 += h/2 a3
                          stage 2: at y2                     -> zbar += a2, kbar_1 += h/2 a2
                          stage 1: at y1 = z                 -> zbar += a1
Cotangents of the stage aux (daux [S,4,N]) enter at their stage's VJP; cotangents of the boundary
states (dtraj [S+1,N,D]) are added to zbar as the sweep passes each boundary. dp sums over all
4 S stages with p's nesting. References: diffrax _adjoint.py, torchdiffeq _impl/adjoint.py.
"""
import numpy as np

from ..core.errors import ConfigError

B_WEIGHTS = (1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0)  # classical RK4 weights
C_NODES = (0.0, 0.5, 0.5, 1.0)  # stage i evaluates F at z + h*C_NODES[i]*k_{i-1}


def tree_add(acc, g):
    """acc + g over nested dicts (None leaves/missing keys are zero); returns the sum, copying g on first use."""
    if g is None:
        return acc
    if isinstance(g, dict):
        acc = {} if acc is None else acc
        for k, v in g.items():
            acc[k] = tree_add(acc.get(k), v)
        return acc
    if acc is None:
        return np.array(g, copy=True)
    acc += g
    return acc


def _step_size(t0, t1, n_steps):
    if not (isinstance(n_steps, (int, np.integer)) and n_steps >= 1):
        raise ConfigError(f"ODE n_steps must be an integer >= 1, got {n_steps!r}; set --ode-steps to e.g. 4")
    t0, t1 = float(t0), float(t1)
    if not (np.isfinite(t0) and np.isfinite(t1)):
        raise ConfigError(f"ODE interval [{t0}, {t1}] must be finite; use e.g. t0=0, t1=1")
    return (t1 - t0) / int(n_steps)


def _step(field, z, p, h, ys):
    """One RK4 step from z, the stage inputs y2, y3, y4 written to ys [3,N,D]: -> (z_next, [aux_i] i = 1..4).
    field(z, p) -> (dz, aux, anything): its third output is dropped."""
    k1, a1, _ = field(z, p)
    np.add(z, (0.5 * h) * k1, out=ys[0])  # y2
    k2, a2, _ = field(ys[0], p)
    np.add(z, (0.5 * h) * k2, out=ys[1])  # y3
    k3, a3, _ = field(ys[1], p)
    np.add(z, h * k3, out=ys[2])  # y4
    k4, a4, _ = field(ys[2], p)
    z_next = z + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return z_next, (a1, a2, a3, a4)


def _step_backward(zbar, daux_s, ys, p, field_forward, field_backward, h):
    """VJP of one RK4 step: zbar = cotangent of z' -> (cotangent of z, dp of this step).

    ys: the stage inputs (y1, y2, y3, y4); daux_s: list of 4 dicts {name: [N]} (stage aux cotangents).
    Each stage's field cache is recomputed from y_i right before its VJP and dropped after it."""
    dp = None
    dz = zbar.copy()
    # z' = z + h (k1/6 + k2/3 + k3/3 + k4/6); stage i (k_i = F(y_i)) feeds y_{i+1} = z + h c_{i+1} k_i
    a = None
    for i in (3, 2, 1, 0):
        kbar = (h * B_WEIGHTS[i]) * zbar
        if a is not None:
            kbar = kbar + (h * C_NODES[i + 1]) * a
        _, _, cache = field_forward(ys[i], p)  # stage i's cache, live only for its VJP
        a, g = field_backward(kbar, daux_s[i], cache)
        del cache
        dp = tree_add(dp, g)
        dz += a
    return dz, dp


def rk4_forward(field_forward, z0, p, t0, t1, n_steps, field_eval=None):
    """Integrate dz/dt = F(z) on [t0, t1] with n_steps classical RK4 steps.

    z0 [N,D] -> (zT [N,D], traj [S+1,N,D] boundary states, aux {name: [S,4,N]}, cache).
    field_eval(z, p) -> (dz, aux), optional: the same field without building a cache (the forward sweep drops
    the caches anyway; the adjoint recomputes them with field_forward).
    """
    field = field_forward
    if field_eval is not None:
        def field(z, p):  # the cache-free forward sweep
            dz, aux = field_eval(z, p)
            return dz, aux, None
    h = _step_size(t0, t1, n_steps)
    S = int(n_steps)
    traj = np.empty((S + 1,) + z0.shape, dtype=z0.dtype)  # [S+1,N,D]
    stages = np.empty((S, 3) + z0.shape, dtype=z0.dtype)  # [S,3,N,D]: y2, y3, y4 of each step
    traj[0] = z0
    aux = {}
    z = z0
    for s in range(S):
        z, auxs = _step(field, z, p, h, stages[s])  # caches dropped: recomputed in the backward
        traj[s + 1] = z
        for i, a in enumerate(auxs):
            for name, val in a.items():
                if name not in aux:
                    aux[name] = np.empty((S, 4) + np.shape(val), dtype=np.asarray(val).dtype)  # [S,4,N]
                aux[name][s, i] = val
    return traj[S].copy(), traj, aux, (traj, stages, p, h, S)


def rk4_backward(dzT, dtraj, daux, cache, field_forward, field_backward):
    """Discrete adjoint of rk4_forward.

    dzT [N,D] (or None), dtraj [S+1,N,D] or None, daux {name: [S,4,N]} or None ->
    (dz0 [N,D], dp nested like p). Recomputes each stage's field cache from its stored input, one at a time.
    """
    traj, stages, p, h, S = cache
    zbar = np.zeros_like(traj[0]) if dzT is None else np.array(dzT, dtype=traj.dtype, copy=True)
    if dtraj is not None:
        zbar += dtraj[S]
    daux = daux or {}
    dp = None
    for s in range(S - 1, -1, -1):
        daux_s = [{name: d[s, i] for name, d in daux.items() if d is not None} for i in range(4)]
        ys = (traj[s], stages[s, 0], stages[s, 1], stages[s, 2])
        zbar, dps = _step_backward(zbar, daux_s, ys, p, field_forward, field_backward, h)
        dp = dps if dp is None else tree_add(dp, dps)
        if dtraj is not None:
            zbar += dtraj[s]
    return zbar, dp
