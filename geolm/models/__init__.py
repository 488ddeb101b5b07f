"""Floor 4: model families, all behind one contract.

A model family is a module here exposing

    Config                  frozen dataclass; __post_init__ raises ConfigError naming the flag and the fix
    init_params(cfg, rng, dtype=np.float32) -> (spec, theta)
                            spec: geolm.core.params.ParamSpec; theta: flat 1-D buffer; p = spec.views(theta)
    forward(p, inputs, cfg, ...) -> (logits, cache)
    backward(dlogits, cache) -> dp
                            pure: returns a gradient dict nested like p (or a sub-tree of it); never writes into
                            caller buffers, so a network run several times per step needs no special code;
                            a family may add keywords (geometric: xent=(r, y), the implicit cross-entropy factors;
                            riemann: daux, the cotangents of the field's per-stage outputs)
    loss_and_grads(theta, grad, batch, cfg, spec, ...) -> (loss, stats)
                            zeroes grad, runs forward + backward and adds every dp into grad with
                            geolm.core.params.accumulate, the one place gradients are summed (tied or shared
                            weights are just two additions); stats["n"] = number of targets
    eval_nll(theta, batch, cfg, spec, ...) -> (nll_sum, n)
                            summed float64 negative log-likelihood over the batch's n targets

Families: `geometric` (MLP heads over frozen token coordinates and one-hot ids, graph attention; extra argument:
the frozen geometry tables), `riemann` (Transformer -> metric ODE -> tied head), `ngram` (count baselines, no
parameters). geolm.training.train.fit trains any of them through a Task that binds cfg, spec and data; a worked
example of a new family is examples/custom_model.py.
"""
