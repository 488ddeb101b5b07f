#!/usr/bin/env python
"""Data scaling of the geometric models: validation perplexity against training stories, beside the write-up's 20k.

    python examples/data_scaling.py --data ../shared/data/tinystories --tuning runs/geo_tuned/tuning.json \
        --extra-data ../shared/data/tinystories/train_extra_gpt4.txt.gz --output runs/scaling
    python examples/data_scaling.py --quick --output /tmp/scaling            (built-in stories, seconds)

Trains bigram, trigram, hybrid, geo_abs, geo_attention and geo_successor (--models) on the first 250, 500, 1,000,
2,000 and 3,000 training stories (--sizes), and with --extra-data on the largest size plus that file's stories (the
shared GPT-4-only stories are a different generator version: the point is drawn hollow and labelled). One tokenizer
and vocabulary for every size (the first --tokenizer-stories stories, default 2,000), the same validation stories,
15 epochs, learning rates per model from --tuning (examples/tune_geometric.py's tuning.json) or --model-lr.
Same flags as train_geometric.py. Writes OUTPUT/scaling.json, OUTPUT/scaling.png and one run per size
(OUTPUT/n<size>/results.json); the same command plus --resume continues. With internet the write-up's own 20k
setting runs directly:
    python examples/train_geometric.py --dataset roneneldan/TinyStories --max-train-stories 20000 --epochs 15
"""
import json
import sys

from geolm.apps.data_scaling import MODELS, SIZES, format_table, scaling
from geolm.apps.geometric_config import GeoRunConfig
from geolm.core.config import ArgParser, add_args, from_args
from geolm.core.errors import ConfigError, cli_main
from geolm.training.distributed import get_comm

QUICK = dict(data="builtin", max_val_stories=10, vocab_size=256, epochs=2, tokenizer_stories=40,
             models="bigram,trigram,geo_abs")


def _tuned(path):
    """--model-lr string from a tuning.json (examples/tune_geometric.py)."""
    try:
        return json.loads(open(path).read())["model_lr"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"--tuning: {path} is not a tuning.json written by examples/tune_geometric.py; "
                          "pass that file or --model-lr") from None


def parse(argv=None):
    ap = ArgParser(description=__doc__.split("\n")[0])
    add_args(ap, GeoRunConfig, skip=("max_train_stories", "kappa_holdout", "eval_on", "seeds"))
    ap.set_defaults(epochs=15, models=MODELS, output="runs/scaling")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)),
                    help="comma-separated numbers of training stories (default: %(default)s)")
    ap.add_argument("--tuning", default=None, help="tuning.json whose chosen per-model rates to use (--model-lr)")
    ap.add_argument("--quick", action="store_true", help="built-in stories 10,20,40, 2 epochs: a smoke run")
    ns = ap.parse_args(argv)
    try:
        sizes = [int(x) for x in ns.sizes.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--sizes: needs integers separated by commas, e.g. 250,500,1000; got {ns.sizes!r}") from None
    over = dict(QUICK) if ns.quick else {}
    if ns.quick:
        sizes = [10, 20, 40]
    if ns.tuning:
        over["model_lr"] = _tuned(ns.tuning)
    return from_args(GeoRunConfig, ns, **over), sizes


@cli_main
def main(argv=None):
    cfg, sizes = parse(argv)
    result = scaling(cfg, sizes, extra_data=cfg.extra_data)
    if get_comm().rank != 0:
        return 0
    print(format_table(result))
    if result["extra"]:
        print(f"extra point: {result['extra']}")
    print(f"wrote {cfg.output}/scaling.json and {cfg.output}/scaling.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
