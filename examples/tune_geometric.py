#!/usr/bin/env python
"""The geometric table with a learning rate tuned per model on held-out training stories, over seeds.

    python examples/tune_geometric.py --data ../shared/data/tinystories --output runs/geo_tuned
    python examples/tune_geometric.py --quick --output /tmp/geo_tuned        (built-in stories, seconds)

Step 1 trains every trained model (permutation controls take their model's rate) once per --lrs rate, seed --seed,
scored after every epoch on the --kappa-holdout training stories after the first --max-train-stories (by default
stories 2,000-2,999), never on validation; each model keeps the rate with the lowest held-out perplexity at the final
epoch. Step 2 trains the whole table at those rates for --seeds and scores validation. Same flags as
train_geometric.py (defaults here: 15 epochs, seeds 0,1,2). Writes OUTPUT/tuning.json, OUTPUT/select/lr<lr>/ and
OUTPUT/table/{results.json,curves.png,losses.png}; the same command plus --resume continues an
interrupted run.
"""
import sys

from geolm.apps.geometric_config import GeoRunConfig
from geolm.apps.geometric_report import table
from geolm.apps.geometric_tuning import LRS, select_lrs, selection_table, tuned_table
from geolm.core.config import ArgParser, add_args, from_args
from geolm.core.errors import ConfigError, cli_main
from geolm.training.distributed import get_comm

QUICK = dict(data="builtin", max_train_stories=40, max_val_stories=10, vocab_size=256, kappa_holdout=20, epochs=2,
             seeds="0,1", models="bigram,trigram,geo_abs,geo_shuffled")


def parse(argv=None):
    ap = ArgParser(description=__doc__.split("\n")[0])
    add_args(ap, GeoRunConfig, skip=("lr", "model_lr", "eval_on"))
    ap.set_defaults(epochs=15, seeds="0,1,2", output="runs/geo_tuned")
    ap.add_argument("--lrs", default=",".join(f"{x:g}" for x in LRS),
                    help="comma-separated learning rates to choose from (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="40 built-in stories, 2 epochs, 4 models: a smoke run")
    ns = ap.parse_args(argv)
    try:
        lrs = [float(x) for x in ns.lrs.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--lrs: needs numbers separated by commas, e.g. 3e-4,1e-3,3e-3; got {ns.lrs!r}") from None
    return from_args(GeoRunConfig, ns, **(QUICK if ns.quick else {})), lrs


@cli_main
def main(argv=None):
    cfg, lrs = parse(argv)
    tuning = select_lrs(cfg, lrs)
    summary = tuned_table(cfg, tuning)
    if get_comm().rank != 0:
        return 0
    print(selection_table(tuning))
    print()
    print(table(summary))
    print(f"data: {summary['data']['source']}")
    print(f"wrote {cfg.output}/tuning.json and {cfg.output}/table/{{results.json,curves.png,losses.png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
