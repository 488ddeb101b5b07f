"""The Riemannian write-up's two-phase experiment as one command (issue 16): per seed, phase 1 at the configuration's
metric rank, growth to --grow-to, phase 2; then DIR/protocol.png (telemetry against step beside the write-up's
values) and DIR/protocol.json with the claim-by-claim table, which is printed at the end.

    python examples/riemann_protocol.py --config examples/configs/riemann_third.toml \
        --data ../shared/data/tinystories/train.txt.gz --phase1-steps 250 --phase2-steps 775 --grow-to 21 \
        --seeds 0,1,2 --lambda-metric 1e-5 --output runs/protocol_third
    python examples/riemann_protocol.py --quick --output /tmp/protocol       # tiny smoke test, seconds

Rerunning the same command skips finished phases and resumes unfinished ones (DIR/seed<k>/phase1, phase2). Every
train_riemann.py flag is accepted as a setting of both phases, except --steps, --seed, --resume, --no-ode and
--metric (the protocol's own flags replace them). All the work happens in geolm.apps.riemann_protocol.
"""
import sys

from geolm.apps.riemann_protocol import DEFAULT_OUTPUT, ProtocolConfig, format_claims, plan_protocol, run_protocol
from geolm.core.config import add_args, from_args
from geolm.core.errors import cli_main
from train_riemann import build_parser, explicit_flags  # the sibling example: the same flags


def parser():
    p = build_parser("riemann_protocol.py")
    p.description = "The Riemannian write-up's two-phase experiment: phase 1, rank growth, phase 2, per seed."
    add_args(p.add_argument_group("protocol"), ProtocolConfig)
    p.set_defaults(output=DEFAULT_OUTPUT)
    return p


@cli_main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    proto = from_args(ProtocolConfig, p.parse_args(argv))
    given = explicit_flags(p, argv)
    config_file = given.pop("config", None)
    plan = plan_protocol(given, proto, config_file, given.get("output", DEFAULT_OUTPUT))
    result = run_protocol(plan)
    print(format_claims(result["claims"]))
    print(f"outputs in {plan.output}: protocol.json, protocol.png, seed*/phase1, seed*/phase2")


if __name__ == "__main__":
    main()
