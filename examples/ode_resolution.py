"""Is the trained flow resolved? Re-run a Riemannian run at S, 2S and 4S RK4 steps (S = its trained --ode-steps).

    python examples/ode_resolution.py --checkpoint runs/riemann [--json resolution.json] [--float64]
    python examples/ode_resolution.py --checkpoint runs/riemann --quick        # 1 validation batch of 2 chunks

Prints, per step count n: the change of z_T on the run's fixed telemetry batch relative to the flow's
displacement (against the finest n and against S), the fraction of unchanged head argmaxes, the validation
perplexity on the first --val-batches batches, and the mean |f| and |g^-1 f| (speed) along the trajectory;
then the observed RK4 order. The parameters are the run's; only the step count changes. See
geolm/apps/ode_resolution.py for the definitions.
"""
import sys

from geolm.apps.ode_resolution import format_resolution, run_resolution
from geolm.core.config import ArgParser
from geolm.core.errors import ConfigError, cli_main
from geolm.core.io import write_json


def _parser():
    ap = ArgParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--checkpoint", required=True, help="run directory (newest checkpoint) or ckpt_*.npz")
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4], help="step counts as multiples of S")
    ap.add_argument("--val-batches", type=int, default=None, help="validation batches for the perplexity "
                    "(0 = all; default: the run's --val-batches)")
    ap.add_argument("--batch-size", type=int, default=None, help="chunks per validation batch (default: the run's)")
    ap.add_argument("--tel-batch", type=int, default=None, help="chunks in the fixed z_T batch (default: the run's)")
    ap.add_argument("--float64", action="store_true", help="re-run in float64 (no float32 round-off floor)")
    ap.add_argument("--quick", action="store_true", help="1 validation batch of 2 chunks, a 2-chunk z_T batch")
    ap.add_argument("--data", default=None, help="data of the run (default: as recorded in the checkpoint)")
    ap.add_argument("--val-data", default=None, help="validation stories (default: as recorded)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    return ap


@cli_main
def main(argv=None):
    args = _parser().parse_args(argv)
    if args.quick:
        if args.val_batches is not None or args.batch_size is not None or args.tel_batch is not None:
            raise ConfigError("--quick sets --val-batches, --batch-size and --tel-batch; drop one or the other")
        args.val_batches, args.batch_size, args.tel_batch = 1, 2, 2
    res = run_resolution(args.checkpoint, factors=args.factors, val_batches=args.val_batches,
                         batch_size=args.batch_size, tel_batch=args.tel_batch, float64=args.float64,
                         data=args.data, val_data=args.val_data)
    m = res["model"]
    print(f"# {res['checkpoint']} (step {res['step']}), metric {m['metric']}, r={m['rank']}, eps={m['eps']}, "
          f"trained with S = {res['trained_steps']} RK4 steps; z_T batch {res['tel_batch']} chunks, validation "
          f"{res['val_batches'] or 'all'} batches of {res['batch_size']}")
    print(format_resolution(res))
    print(f"data: {res['data']}")
    if args.json:
        write_json(args.json, res, indent=1)
        print(f"wrote {args.json}")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
