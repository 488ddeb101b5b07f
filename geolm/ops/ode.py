"""Classical fixed-step RK4 for an autonomous field, and its discrete adjoint.

N flattened tokens . D model width . S ODE steps

Solver (classical RK4, Butcher tableau c = (0, 1/2, 1/2, 1), weights b = (1/6, 1/3, 1/3, 1/6); NOT
Kutta's 3/8 rule that torchdiffeq's 'rk4' uses), h = (t1 - t0)/S, autonomous field F:
    k1 = F(z)           k2 = F(z + h/2 k1)      k3 = F(z + h/2 k2)      k4 = F(z + h k3)
    z' = z + h (k1/6 + k2/3 + k3/3 + k4/6)
Field protocol: field_forward(z [N,D], p) -> (dz [N,D], aux {name: [N]}, cache);
                field_backward(ddz [N,D], daux {name: [N]}, cache) -> (dz [N,D], dp like p).
daux holds only the names that receive a cotangent (a field may skip work for the others).
field_forward may also be a tuple of four such functions, stage i calling the i-th: the same field bound to
per-stage resources (a field whose caches live in reusable buffers keeps one set per stage, since the adjoint
holds a step's four stage caches at once).

Memory: the forward keeps z at the S+1 step boundaries (traj) only; the backward recomputes one
step's four stages from its boundary, then runs their VJPs in reverse (discretise-then-optimise, the
exact gradient of the steps taken; diffrax's RecursiveCheckpointAdjoint with one checkpoint per step):
O(S N D) plus one step's field caches. Per step, with zbar the cotangent of z':
    kbar_i = h b_i zbar;  stage 4: (a4, dp) = VJP(kbar_4) at z + h k3   -> zbar += a4, kbar_3 += h a4
                          stage 3: at z + h/2 k2 -> zbar += a3, kbar_2 += h/2 a3
                          stage 2: at z + h/2 k1 -> zbar += a2, kbar_1 += h/2 a2
                          stage 1: at z          -> zbar += a1
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


def _per_stage(field):
    """(F1, F2, F3, F4) from one field function or a tuple of four."""
    if isinstance(field, (tuple, list)):
        if len(field) != 4:
            raise ConfigError(f"an RK4 field must be one function or a tuple of 4 (one per stage), got {len(field)}")
        return tuple(field)
    return (field,) * 4


def _stages(field_forward, z, p, h):
    """One RK4 step from z: -> (z_next, [aux_i], [cache_i]) for stages i = 1..4."""
    f1, f2, f3, f4 = _per_stage(field_forward)
    k1, a1, c1 = f1(z, p)
    k2, a2, c2 = f2(z + (0.5 * h) * k1, p)
    k3, a3, c3 = f3(z + (0.5 * h) * k2, p)
    k4, a4, c4 = f4(z + h * k3, p)
    z_next = z + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return z_next, (a1, a2, a3, a4), (c1, c2, c3, c4)


def _step_backward(zbar, daux_s, caches, field_backward, h):
    """VJP of one RK4 step: zbar = cotangent of z' -> (cotangent of z, dp of this step).

    daux_s: list of 4 dicts {name: [N]} (stage aux cotangents)."""
    dp = None
    dz = zbar.copy()
    # z' = z + h (k1/6 + k2/3 + k3/3 + k4/6)
    kbar = [(h * b) * zbar for b in B_WEIGHTS]
    # k4 = F(z + h k3)
    a, g = field_backward(kbar[3], daux_s[3], caches[3])
    dp = tree_add(dp, g)
    dz += a
    kbar[2] = kbar[2] + h * a
    # k3 = F(z + h/2 k2)
    a, g = field_backward(kbar[2], daux_s[2], caches[2])
    dp = tree_add(dp, g)
    dz += a
    kbar[1] = kbar[1] + (0.5 * h) * a
    # k2 = F(z + h/2 k1)
    a, g = field_backward(kbar[1], daux_s[1], caches[1])
    dp = tree_add(dp, g)
    dz += a
    kbar[0] = kbar[0] + (0.5 * h) * a
    # k1 = F(z)
    a, g = field_backward(kbar[0], daux_s[0], caches[0])
    dp = tree_add(dp, g)
    dz += a
    return dz, dp


def rk4_forward(field_forward, z0, p, t0, t1, n_steps, field_eval=None):
    """Integrate dz/dt = F(z) on [t0, t1] with n_steps classical RK4 steps.

    z0 [N,D] -> (zT [N,D], traj [S+1,N,D] boundary states, aux {name: [S,4,N]}, cache).
    field_eval(z, p) -> (dz, aux), optional (one function or four): the same field without building a cache (the
    forward sweep drops the caches anyway; the adjoint recomputes them with field_forward).
    """
    if field_eval is not None:
        def nocache(ev):
            def field(z, p):  # the cache-free forward sweep
                dz, aux = ev(z, p)
                return dz, aux, None
            return field
        field_forward = tuple(nocache(ev) for ev in _per_stage(field_eval))
    h = _step_size(t0, t1, n_steps)
    S = int(n_steps)
    traj = np.empty((S + 1,) + z0.shape, dtype=z0.dtype)  # [S+1,N,D]
    traj[0] = z0
    aux = {}
    z = z0
    for s in range(S):
        z, auxs, _ = _stages(field_forward, z, p, h)  # caches dropped: recomputed in the backward
        traj[s + 1] = z
        for i, a in enumerate(auxs):
            for name, val in a.items():
                if name not in aux:
                    aux[name] = np.empty((S, 4) + np.shape(val), dtype=np.asarray(val).dtype)  # [S,4,N]
                aux[name][s, i] = val
    return traj[S].copy(), traj, aux, (traj, p, h, S)


def rk4_backward(dzT, dtraj, daux, cache, field_forward, field_backward):
    """Discrete adjoint of rk4_forward.

    dzT [N,D] (or None), dtraj [S+1,N,D] or None, daux {name: [S,4,N]} or None ->
    (dz0 [N,D], dp nested like p). Recomputes each step's stages from its stored boundary.
    """
    traj, p, h, S = cache
    zbar = np.zeros_like(traj[0]) if dzT is None else np.array(dzT, dtype=traj.dtype, copy=True)
    if dtraj is not None:
        zbar += dtraj[S]
    daux = daux or {}
    dp = None
    for s in range(S - 1, -1, -1):
        _, _, caches = _stages(field_forward, traj[s], p, h)  # recompute this step's four stages
        daux_s = [{name: d[s, i] for name, d in daux.items() if d is not None} for i in range(4)]
        zbar, dps = _step_backward(zbar, daux_s, caches, field_backward, h)
        del caches  # free this step's field caches before the next step recomputes its own
        dp = dps if dp is None else tree_add(dp, dps)
        if dtraj is not None:
            zbar += dtraj[s]
    return zbar, dp
