"""Sample a story from a trained Riemannian ODE LM checkpoint (temperature / top-k).

    python examples/generate.py --checkpoint runs/riemann --prompt "Once upon a time" --temperature 0.8 --top-k 40
"""
from geolm.apps.generate import generate_text  # geolm first: it sets OPENBLAS_THREAD_TIMEOUT before NumPy loads
from geolm.apps.riemann_load import load_model
from geolm.core.config import ArgParser
from geolm.core.errors import cli_main
from geolm.models import riemann
import numpy as np  # noqa: E402


def _parser():
    ap = ArgParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--checkpoint", required=True, help="run directory (newest checkpoint) or a ckpt_*.npz file")
    ap.add_argument("--prompt", default="Once upon a time", help="text to continue")
    ap.add_argument("--tokens", type=int, default=200, help="maximum new tokens (stops at the end of the story)")
    ap.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0 = greedy)")
    ap.add_argument("--top-k", type=int, default=40, help="sample from the k most likely tokens (0 = all)")
    ap.add_argument("--samples", type=int, default=1, help="number of stories")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    return ap


@cli_main
def main(argv=None):
    args = _parser().parse_args(argv)
    theta, cfg, spec, tok, ck = load_model(args.checkpoint)
    p = spec.views(theta)
    rng = np.random.default_rng(args.seed)
    print(f"# {ck.path} (step {ck.step}, {'no ODE' if cfg.no_ode else 'metric ' + cfg.metric}); "
          f"temperature {args.temperature}, top-k {args.top_k}")
    for i in range(max(1, args.samples)):
        text, _ = generate_text(lambda ids: riemann.logits_last(p, ids, cfg), tok, args.prompt, args.tokens, rng,
                                args.temperature, args.top_k, max_context=cfg.seq_len)
        print(("\n" if i else "") + text)


if __name__ == "__main__":
    main()
