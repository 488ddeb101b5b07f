#!/usr/bin/env python
"""The Riemannian run table over seeds with its controls, and the rank x eps sweep of the learned metric (issue 16).

    python examples/riemann_controls.py --data ../shared/data/tinystories/train.txt.gz --seeds 0,1,2 \
        --output runs/controls
    python examples/riemann_controls.py --quick --output /tmp/controls          # tiny smoke test, seconds

Per seed: the learned low-rank metric (the configuration as given), lambda_metric 0, g = I, g = eps I (alpha 0) and
the plain Transformer (--controls picks some); then the learned metric at rank {1, 4, 16, 64} x eps {0.1, 1} (first
seed, scored on held-out training stories, never on validation; --no-sweep skips it) and the best cell at every seed.
Prints mean +- sd per run and whether each differs from alpha = 0 beyond seed noise; writes DIR/controls.json.
Every train_riemann.py flag is accepted for all runs except --seed, --resume, --metric, --no-ode and --alpha.
Rerunning the same command skips finished runs and resumes started ones. Work: geolm.apps.riemann_controls.
"""
import argparse
import sys

from geolm.apps.riemann_controls import CONTROLS, format_result, plan, run_all
from geolm.core.errors import cli_main
from train_riemann import build_parser, explicit_flags  # the sibling example: the same flags

QUICK = dict(data="builtin", max_train_stories=120, max_val_stories=20, dim=16, layers=1, heads=2, seq_len=16,
             vocab_size=300, rank=2, hidden=8, field_hidden=16, ode_steps=2, batch_size=4, warmup=2, val_batches=2,
             tel_batch=4, eval_every=3, log_every=1, steps=4, threads=1)


def parser():
    p = build_parser("riemann_controls.py")
    p.description = __doc__.split("\n")[0]
    g = p.add_argument_group("controls")
    g.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    g.add_argument("--controls", default=",".join(CONTROLS), help="comma-separated runs (default: %(default)s)")
    g.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True,
                   help="run the rank x eps sweep and the best cell (default: on)")
    g.add_argument("--quick", action="store_true", help="tiny shapes, built-in stories, 4 steps: a smoke test")
    p.set_defaults(output="runs/controls")
    return p


@cli_main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    ns = p.parse_args(argv)
    given = explicit_flags(p, argv)
    config_file = given.pop("config", None)
    output = given.get("output", ns.output)
    if ns.quick:
        given = dict(QUICK, **given)
    controls = tuple(c.strip() for c in ns.controls.split(",") if c.strip())
    table, cells, base = plan(given, ns.seeds, controls, ns.sweep, config_file, output)
    if ns.quick:
        cells = [c for c in cells if c.overrides["rank"] <= 4]
    result = run_all(table, cells, base, output, config_file)
    print(format_result(result))
    print(f"wrote {output}/controls.json")


if __name__ == "__main__":
    main()
