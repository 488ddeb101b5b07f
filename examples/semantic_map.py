"""Semantic map of a trained Riemannian ODE LM: trajectories, endpoint tokens by word class, log det g backdrop.

    python examples/semantic_map.py --checkpoint runs/riemann [--control-checkpoint runs/identity] \
        [--n 200 --label-by predicted|target --output semantic_map.png --data PATH --val-data PATH]

Prints, in the full dimension (never on the 2-D picture), for z_T and z_0 of the model and, with
--control-checkpoint (a --metric identity run on the same data), of the g = I control: per word class (noun, verb,
end, other) the count, log det g (mean +- sd; for the control its own constant metric) and the isolation of the
class centroid (distance to the nearest other class centroid / the class's RMS spread, with its chance level),
and the silhouette and k-NN purity (with chance). --json FILE writes all of it. See geolm/apps/semantic.py.
"""
import argparse
import sys

from geolm.core.config import ArgParser
from geolm.core.errors import CheckpointError, ConfigError, cli_main
from geolm.core.io import write_json
from geolm.apps import semantic
from geolm.apps.riemann_load import load_model
from geolm.apps.trajectories import validation_stories


def _parser():
    ap = ArgParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="run directory or ckpt_*.npz of a Riemannian model")
    ap.add_argument("--control-checkpoint", default=None, help="the --metric identity control run (optional)")
    ap.add_argument("--n", type=int, default=200, help="number of trajectories")
    ap.add_argument("--output", default="semantic_map.png", help="PNG path")
    ap.add_argument("--json", default=None, help="also write the statistics to this JSON file")
    ap.add_argument("--data", default=None, help="data of the run (default: as recorded in the checkpoint)")
    ap.add_argument("--val-data", default=None, help="validation stories; default: from checkpoint / --data")
    ap.add_argument("--max-train-stories", dest="max_train", type=int, default=None,
                    help="training stories read from --data (default: recorded)")
    ap.add_argument("--max-val-stories", dest="max_val", type=int, default=None, help="validation stories to sample from")
    ap.add_argument("--max-train", dest="max_train", type=int, help=argparse.SUPPRESS)  # older spellings
    ap.add_argument("--max-val", dest="max_val", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--lexicon", default=None, help="word<TAB>noun|verb file (default: shipped lexicon)")
    ap.add_argument("--label-by", choices=semantic.LABEL_BY, default="predicted",
                    help="class each point by the token the model predicts at z_T (default) or by the true next "
                         "token (the same classes for the model and the control)")
    ap.add_argument("--k", type=int, default=10, help="neighbours for k-NN purity")
    ap.add_argument("--dpi", type=int, default=220, help="PNG resolution")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    return ap


@cli_main
def main(argv=None):
    args = _parser().parse_args(argv)
    if args.n < 2 or args.k < 1 or args.dpi < 50:
        raise ConfigError("need --n >= 2, --k >= 1 and --dpi >= 50; e.g. --n 200 --k 10 --dpi 220")
    theta, cfg, spec, tok, ck = load_model(args.checkpoint)
    control = None
    if args.control_checkpoint:
        c_theta, c_cfg, c_spec, c_tok, _ = load_model(args.control_checkpoint)
        if c_tok.hash != tok.hash:
            raise CheckpointError("the control checkpoint uses another tokenizer; train it on the same --data "
                                  "and --vocab-size")
        control = (c_theta, c_cfg, c_spec)
    stories, source = validation_stories(ck, tok, args.data, args.val_data, args.max_train, args.max_val)
    lex = semantic.load_lexicon(args.lexicon)
    res = semantic.semantic_map(theta, cfg, spec, tok, stories, path=args.output, n=args.n, seed=args.seed,
                                lexicon=lex, control=control, k=args.k, dpi=args.dpi, label_by=args.label_by)
    for name, meas in res["classes"].items():
        print(semantic.format_classes(meas, title=name) + "\n")
    print(semantic.format_stats(res["stats"]))
    print(f"wrote {res['png']}; data: {source}")
    if args.json:
        keys = ("n", "label_by", "counts", "control_counts", "classes", "stats")
        write_json(args.json, dict({k: res[k] for k in keys if k in res}, checkpoint=str(ck.path), data=source,
                                   control_checkpoint=args.control_checkpoint, seed=args.seed, k=args.k), indent=1)
        print(f"wrote {args.json}")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
