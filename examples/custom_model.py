#!/usr/bin/env python
"""Add your own model: a context-average LM, gradient-checked by the shipped checker and trained by fit.

B batch . C context . D embedding width . F hidden . V vocab (output classes; PAD = V is an input-only id)

    h      = (1/C) sum_c E[x_c]         x [B,C] ids -> h [B,D]       E [V+1, D]: one row per id and for PAD
    logits = MLP(h)                     [B,D] -> [B,V]               linear -> GELU -> linear (geolm.ops.mlp)
    loss   = mean cross-entropy(logits, y)                           (geolm.ops.losses)

The model follows the contract in geolm/models/__init__.py: a frozen config, init_params -> (spec, theta), a
forward/backward pair whose backward is pure (it returns a gradient dict nested like the parameters),
loss_and_grads accumulating with geolm.core.params.accumulate, and eval_nll. Copy this file, change
forward/backward, keep the gradient check passing.

    python examples/custom_model.py --quick            # a few seconds
    python examples/custom_model.py                    # ../shared/data/tinystories if present, else built-in stories
    python examples/custom_model.py --data PATH --epochs 3 --output runs/custom
    python examples/custom_model.py --resume runs/custom     # the same flags; continues exactly
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geolm.core.config import ArgParser, positive
from geolm.core.errors import cli_main
from geolm.core.gradcheck import check_grads, check_grads_directional
from geolm.core.params import ParamSpec, accumulate, normal_
from geolm.data.batches import context_windows
from geolm.data.corpus import load_corpus
from geolm.data.tokenizer import get_tokenizer
from geolm.ops.embedding import embedding_backward, embedding_forward
from geolm.ops.losses import nll_sum, perplexity, xent_backward, xent_forward
from geolm.ops.mlp import mlp_backward, mlp_forward, mlp_init_, mlp_shapes
from geolm.training.train import Task, TrainConfig, fit

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories"


@dataclass(frozen=True)
class ContextAverageConfig:
    vocab_size: int  # V output classes (the tokenizer's V); PAD = V
    context: int = 8  # C previous tokens averaged
    dim: int = 64  # D
    hidden: int = 128  # F

    def __post_init__(self):
        positive(self, "vocab_size", "context", "dim", "hidden")  # ConfigError "--dim: must be > 0, got 0"


def init_params(cfg, rng, dtype=np.float32):
    """-> (spec, theta): E ~ N(0, 0.1^2); MLP Glorot weights, zero biases."""
    spec = ParamSpec({"emb": {"w": (cfg.vocab_size + 1, cfg.dim)},
                      "mlp": mlp_shapes(cfg.dim, cfg.hidden, cfg.vocab_size)})
    theta = spec.zeros(dtype)
    p = spec.views(theta)
    normal_(p["emb"]["w"], rng, 0.1)
    mlp_init_(p["mlp"], rng)
    return spec, theta


def forward(p, x, cfg):
    """x [B,C] int ids -> (logits [B,V], cache)."""
    e, c_emb = embedding_forward(x, p["emb"]["w"])  # [B,C] -> [B,C,D]
    h = e.mean(axis=1)  # [B,C,D] -> [B,D]
    logits, c_mlp = mlp_forward(h, p["mlp"])  # [B,D] -> [B,V]
    return logits, (c_emb, c_mlp, x.shape[1])


def backward(dlogits, cache):
    """dlogits [B,V] -> dp nested like p (new arrays only)."""
    c_emb, c_mlp, C = cache
    dh, dmlp = mlp_backward(dlogits, c_mlp)  # logits = MLP(h)
    de = np.repeat(dh[:, None, :] / C, C, axis=1)  # h = mean_c e[:, c]: [B,D] -> [B,C,D]
    return {"emb": {"w": embedding_backward(de, c_emb)}, "mlp": dmlp}  # e = E[x]: scatter-add


def loss_and_grads(theta, grad, batch, cfg, spec):
    """batch (x [B,C], y [B]) -> (mean loss, {"n": B}); zeroes grad, then accumulates dp into it."""
    x, y = batch
    logits, cache = forward(spec.views(theta), x, cfg)
    loss, c_xent = xent_forward(logits, y)
    grad[:] = 0.0
    accumulate(spec.views(grad), backward(xent_backward(1.0, c_xent), cache))
    return loss, {"n": len(y)}


def eval_nll(theta, batch, cfg, spec):
    """-> (summed float64 NLL, number of targets)."""
    logits, _ = forward(spec.views(theta), batch[0], cfg)
    return nll_sum(logits, batch[1])


def gradcheck(seed=0):
    """Float64 central differences: every parameter entry through forward/backward, then loss_and_grads along
    random directions. Raises AssertionError naming the wrong array; returns the two largest relative errors."""
    rng = np.random.default_rng(seed)
    cfg = ContextAverageConfig(vocab_size=7, context=3, dim=4, hidden=5)
    spec, theta = init_params(cfg, rng, np.float64)
    x = rng.integers(0, cfg.vocab_size + 1, size=(6, cfg.context))  # PAD = V included
    y = rng.integers(0, cfg.vocab_size, size=6)
    errs = check_grads(lambda p, x: forward(p, x, cfg), backward, {"p": spec.views(theta), "x": x}, rng=rng)

    def loss_grad(th):
        g = np.zeros_like(th)
        return loss_and_grads(th, g, (x, y), cfg, spec)[0], g

    dirs = check_grads_directional(lambda th: loss_grad(th)[0], lambda th: loss_grad(th)[1], theta, rng=rng)
    return max(errs.values()), max(dirs)


def _parser():
    ap = ArgParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--data", default=None, help="stories: file, directory, 'builtin' or hub name")
    ap.add_argument("--output", default="runs/custom_model", help="run directory (checkpoints, metrics.jsonl)")
    ap.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR (newest checkpoint)")
    ap.add_argument("--quick", action="store_true", help="200 stories, small vocabulary, 1 epoch")
    ap.add_argument("--epochs", type=int, default=2, help="passes over the training windows")
    ap.add_argument("--context", type=int, default=8, help="tokens averaged (C)")
    ap.add_argument("--dim", type=int, default=64, help="embedding width (D)")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (cosine schedule)")
    ap.add_argument("--seed", type=int, default=0, help="initialisation and batch-order seed")
    return ap


@cli_main
def main(argv=None):
    args = _parser().parse_args(argv)
    out = args.resume or args.output
    err, derr = gradcheck()
    print(f"gradcheck ok (float64): forward/backward max rel error {err:.1e}, loss_and_grads directional {derr:.1e}")
    data = args.data or (str(SHARED_DATA) if SHARED_DATA.is_dir() else "builtin")
    n_train, n_val = (200, 50) if args.quick else (2000, 1000)
    corpus = load_corpus(data, max_train=n_train, max_val=n_val)
    tok = get_tokenizer(corpus.train, 512 if args.quick else 4096, cache_dir=out)  # OUTPUT/tokenizers/
    cfg = ContextAverageConfig(vocab_size=tok.V, context=args.context, dim=args.dim, hidden=2 * args.dim)
    x_tr, y_tr = context_windows(tok.encode_stories(corpus.train), cfg.context, tok.pad_id)  # [M,C], [M]
    x_va, y_va = context_windows(tok.encode_stories(corpus.val), cfg.context, tok.pad_id)
    spec, theta = init_params(cfg, np.random.default_rng(args.seed))
    val = [(x_va[i:i + 1024], y_va[i:i + 1024]) for i in range(0, len(y_va), 1024)]
    task = Task(family="context_average", cfg=cfg, spec=spec, n_train=len(y_tr), tokenizer_hash=tok.hash,
                make_batch=lambda idx: (x_tr[idx], y_tr[idx]), val_batches=lambda: val,
                loss_and_grads=lambda th, g, b: loss_and_grads(th, g, b, cfg, spec),
                eval_nll=lambda th, b: eval_nll(th, b, cfg, spec))
    tcfg = TrainConfig(epochs=1 if args.quick else args.epochs, batch_size=128, lr=args.lr, seed=args.seed,
                       log_every=100)
    fit(task=task, theta=theta, tcfg=tcfg, run_dir=out, resume=args.resume is not None, progress=True)

    sums = [eval_nll(theta, b, cfg, spec) for b in val]  # the one perplexity: exp(sum nll / n)
    nll, n = sum(s for s, _ in sums), sum(k for _, k in sums)
    print(f"validation perplexity {perplexity(nll, n):.2f} on {n} targets ({spec.size:,} parameters, V={tok.V})")
    print(f"data: {corpus.source}")
    print(f"wrote {out}/: ckpt_*.npz, metrics.jsonl, tokenizers/")


if __name__ == "__main__":
    main()
