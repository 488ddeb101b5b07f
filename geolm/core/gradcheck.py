"""Central-difference gradient checks, shipped so users can check the ops they add.

check_grads: every entry of every float input, scalar L = sum_i <out_i, dout_i> with a random dout
per output (an all-ones upstream lets errors cancel). Error per array:
    max|a - n| / max(max|a|, max|n|, 1e-12)
so big tensors cannot mask small ones. Failure raises AssertionError naming the array and worst index.

check_grads_directional: whole models, <grad L(theta), v> against (L(theta + h v) - L(theta - h v)) / 2h
along random unit directions.
"""
import numpy as np

TOL = {np.dtype(np.float64): 1e-6, np.dtype(np.float32): 2e-2}


def _is_float_array(x):
    return isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating)


def _leaves(tree, prefix):
    """[(name, array)] of the float ndarray leaves of an array or nested dict."""
    if isinstance(tree, dict):
        out = []
        for k in tree:
            out += _leaves(tree[k], f"{prefix}.{k}")
        return out
    return [(prefix, tree)] if _is_float_array(tree) else []


def _to64(tree):
    if isinstance(tree, dict):
        return {k: _to64(v) for k, v in tree.items()}
    if _is_float_array(tree):
        return np.array(tree, dtype=np.float64)
    return tree


def rel_error(a, n):
    a = np.asarray(a, np.float64)
    n = np.asarray(n, np.float64)
    scale = max(np.abs(a).max(initial=0.0), np.abs(n).max(initial=0.0), 1e-12)
    return np.abs(a - n).max(initial=0.0) / scale


def check_grads(forward, backward, inputs, *, rng, nondiff=(), h=1e-6, tol=None):
    """Check backward against central differences of forward, in float64.

    forward(**inputs) -> (out, cache), out an array or tuple of arrays.
    backward(dout, cache) -> grads, one per differentiable input (a tuple; or a bare value if only one),
    in the order of `inputs`; an input is differentiable if it is a float array (or a dict with float
    leaves) and its name is not in `nondiff`. Returns {array name: relative error}.
    """
    inputs = {k: _to64(v) for k, v in inputs.items()}
    diff = [k for k in inputs if k not in nondiff and _leaves(inputs[k], k)]
    tol = TOL[np.dtype(np.float64)] if tol is None else tol

    out, cache = forward(**inputs)
    outs = out if isinstance(out, tuple) else (out,)
    douts = tuple(rng.standard_normal(np.shape(o)) if np.ndim(o) else float(rng.standard_normal())
                  for o in outs)
    grads = backward(douts if isinstance(out, tuple) else douts[0], cache)
    if len(diff) == 1 and not isinstance(grads, tuple):
        grads = (grads,)
    if not isinstance(grads, tuple) or len(grads) != len(diff):
        raise AssertionError(f"backward returned {type(grads).__name__} of length "
                             f"{len(grads) if isinstance(grads, tuple) else 1}, expected grads for {diff}")

    def scalar():
        o, _ = forward(**inputs)
        os = o if isinstance(o, tuple) else (o,)
        return sum(float(np.sum(np.asarray(a, np.float64) * b)) for a, b in zip(os, douts))

    errors = {}
    for k, g in zip(diff, grads):
        for (name, x), (_, gx) in zip(_leaves(inputs[k], k), _leaves(g, k) if isinstance(g, dict)
                                      else [(k, g)]):
            if gx is None or np.shape(gx) != x.shape:
                raise AssertionError(f"grad of {name} has shape {np.shape(gx)}, input has {x.shape}")
            num = np.zeros(x.shape)
            flat, nflat = x.reshape(-1), num.reshape(-1)
            for i in range(flat.size):
                old = flat[i]
                flat[i] = old + h
                fp = scalar()
                flat[i] = old - h
                fm = scalar()
                flat[i] = old
                nflat[i] = (fp - fm) / (2 * h)
            err = rel_error(gx, num)
            errors[name] = err
            if not err <= tol:
                worst = np.unravel_index(np.argmax(np.abs(np.asarray(gx, np.float64) - num)), x.shape)
                raise AssertionError(f"gradient of {name} wrong: rel error {err:.3e} > {tol:.0e}; worst at "
                                     f"{tuple(int(i) for i in worst)}: analytic "
                                     f"{np.asarray(gx)[worst]:.6e} vs numeric {num[worst]:.6e}")
    return errors


def check_grads_directional(loss_fn, grad_fn, theta, *, rng, n_dirs=3, h=1e-6, tol=None):
    """Check <grad_fn(theta), v> against central differences of loss_fn along random unit v (float64)."""
    theta = np.array(theta, dtype=np.float64)
    tol = TOL[np.dtype(np.float64)] if tol is None else tol
    g = np.asarray(grad_fn(theta.copy()), np.float64)
    errs = []
    for j in range(n_dirs):
        v = rng.standard_normal(theta.shape)
        v /= np.linalg.norm(v)
        num = (loss_fn(theta + h * v) - loss_fn(theta - h * v)) / (2 * h)
        ana = float(g @ v)
        err = abs(ana - num) / max(abs(ana), abs(num), 1e-12)
        errs.append(err)
        if not err <= tol:
            raise AssertionError(f"directional derivative {j} wrong: analytic {ana:.8e} vs numeric "
                                 f"{num:.8e} (rel error {err:.3e} > {tol:.0e})")
    return errs
