"""Train the Riemannian neural-ODE language model (spec section 1; issue 4).

    python examples/train_riemann.py --data /work/shared/data/tinystories/train.txt.gz --output runs/riemann
    python examples/train_riemann.py --metric identity ...      # g = I control (Euclidean neural ODE)
    python examples/train_riemann.py --no-ode ...               # plain-Transformer control
    python examples/train_riemann.py --resume runs/riemann      # continue exactly from the newest checkpoint
    python examples/train_riemann.py --config examples/configs/riemann_third.toml --data ... --output runs/third
    python examples/train_riemann.py --resume runs/third --rank 21 --steps 1025   # grow the metric rank, continue

Token + position embeddings -> causal pre-LN Transformer -> z0 per position -> dz/dt = g(z)^-1 f(z), RK4 on
[0, 1] with the discrete adjoint -> LayerNorm -> tied head -> cross-entropy (+ field and log-det penalties).
Writes DIR/metrics.jsonl, summary.json, curves.png, telemetry.png, semantic_map.png, story.txt and checkpoints.
A setting not given as a flag comes from --config FILE, else (with --resume) from the run, else its default
(geolm.apps.riemann_settings). All the work happens in geolm.apps.riemann_run; run with --help for every flag.
"""
import argparse
import dataclasses
import sys

from geolm.core.config import ArgParser, add_args
from geolm.core.errors import ConfigError, cli_main
from geolm.apps.riemann_run import run
from geolm.apps.riemann_settings import SECTIONS, TRAIN_DEFAULTS, resolve_configs
from geolm.training.distributed import get_comm
from geolm.models.riemann_config import ODE_FIELDS

_UNSET = object()


def build_parser(prog="train_riemann.py"):
    p = ArgParser(prog=prog, description="Train the Riemannian neural-ODE language model (spec section 1).",
                  allow_abbrev=False)
    p.add_argument("--config", metavar="FILE", help="TOML or JSON file of settings in sections [model], [train], "
                   "[run] (keys = flag names with _); flags given here override it (see examples/configs/)")
    g = p.add_argument_group("model")
    add_args(g, SECTIONS["model"], skip=("metric", "no_ode"))
    g.add_argument("--metric", default="lowrank", choices=("lowrank", "identity"),
                   help="lowrank metric g = eps I + alpha U^T U, or the g = I control (default: lowrank)")
    # store_true by hand: BooleanOptionalAction would read "--no-ode" as the negation of "--ode"
    g.add_argument("--no-ode", action="store_true", help="skip the ODE (z_T = z0): the plain-Transformer control")
    add_args(p.add_argument_group("training"), SECTIONS["train"])
    add_args(p.add_argument_group("run"), SECTIONS["run"])
    p.set_defaults(**TRAIN_DEFAULTS)
    return p


def explicit_flags(parser, argv):
    """{name: value} of the settings (and "config") given on the command line (argparse fills only the names it
    sees into a namespace whose attributes already exist)."""
    names = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)] + ["config"]
    ns = parser.parse_args(argv, namespace=argparse.Namespace(**{n: _UNSET for n in names}))
    return {n: getattr(ns, n) for n in names if getattr(ns, n) is not _UNSET}


def parse(argv, prog="train_riemann.py"):
    """Command line -> (RiemannConfig, TrainConfig, RunConfig, config file or None); --no-ode with an ODE/metric
    flag is a ConfigError."""
    given = explicit_flags(build_parser(prog), argv)
    config_file = given.pop("config", None)
    if given.get("no_ode"):
        clash = sorted(set(given) & set(ODE_FIELDS))
        if clash:
            flags = " ".join("--" + c.replace("_", "-") for c in clash)
            raise ConfigError(f"--no-ode contradicts {flags}: the plain Transformer has no ODE or metric; "
                              f"drop --no-ode or those flags")
    return resolve_configs(given, config_file=config_file, resume=given.get("resume")) + (config_file,)


@cli_main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg, tcfg, rc, config_file = parse(argv)
    s = run(cfg, tcfg, rc, config_file=config_file)  # Ctrl-C / SIGTERM: exit 130 / 143 after a checkpoint
    if get_comm().rank != 0:
        return
    print(f"validation perplexity {s['val_ppl']:.2f} on {s['val_tokens']} tokens after {s['steps']} steps "
          f"({s['s_per_step'] or float('nan'):.2f} s/step; {s['wall_s_per_step']:.2f} with evaluations)")
    print(f"data: {s['data']}")
    out = s["run"]["resume"] or s["run"]["output"]
    print(f"outputs in {out}: summary.json, metrics.jsonl, curves.png, telemetry.png"
          f"{', semantic_map.png' if s['semantic'] else ''}, story.txt, {s['checkpoint']}")


if __name__ == "__main__":
    main()
