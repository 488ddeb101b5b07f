"""Train the Riemannian neural-ODE language model (spec section 1; issue 4).

    python examples/train_riemann.py --data /work/shared/data/tinystories/train.txt.gz --output runs/riemann
    python examples/train_riemann.py --metric identity ...      # g = I control (Euclidean neural ODE)
    python examples/train_riemann.py --no-ode ...               # plain-Transformer control
    python examples/train_riemann.py --resume runs/riemann      # continue exactly from the newest checkpoint

Token + position embeddings -> causal pre-LN Transformer -> z0 per position -> dz/dt = g(z)^-1 f(z), RK4 on
[0, 1] with the discrete adjoint -> LayerNorm -> tied head -> cross-entropy (+ field and log-det penalties).
Writes DIR/metrics.jsonl, summary.json, curves.png, telemetry.png, semantic_map.png, story.txt and checkpoints.
All the work happens in geolm.apps.riemann_run; run with --help for every flag.
"""
import sys

from geolm.core.errors import cli_main
from geolm.apps.riemann_run import parse, run


@cli_main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    summary = run(parse(argv))  # TrainingInterrupted (Ctrl-C / SIGTERM) exits 130 / 143 after a checkpoint
    s = summary
    print(f"validation perplexity {s['val_ppl']:.2f} on {s['val_tokens']} tokens after {s['steps']} steps "
          f"({s['s_per_step'] or float('nan'):.2f} s/step; {s['wall_s_per_step']:.2f} with evaluations)")
    print(f"data: {s['data']}")
    out = s["run"]["resume"] or s["run"]["output"]
    print(f"outputs in {out}: summary.json, metrics.jsonl, curves.png, telemetry.png"
          f"{', semantic_map.png' if s['semantic'] else ''}, story.txt, {s['checkpoint']}")


if __name__ == "__main__":
    main()
