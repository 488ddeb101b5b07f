#!/usr/bin/env python
"""Geometric token-coordinate language models (spec 2.9): the published 2k-story table and successor geometry.

    python examples/train_geometric.py --dataset roneneldan/TinyStories --vocab-size 4096 --dim 64 --epochs 5 \
        --lr 1e-4 --max-train-stories 2000 --max-val-stories 1000          (the write-up's command)
    python examples/train_geometric.py --data ../shared/data/tinystories --epochs 5 --output runs/geo
    python examples/train_geometric.py --models bigram,trigram,geo_abs --epochs 1 --seeds 0,1,2
    mpiexec -n 2 python examples/train_geometric.py ...        (data-parallel; same flags)

Writes OUTPUT/results.json and OUTPUT/curves.png; prints the table (beside the write-up's figures when the
setting matches one of them) and which data it used.
"""
import sys

from geolm.core.config import ArgParser, add_args, from_args
from geolm.core.errors import cli_main
from geolm.apps.geometric_config import GeoRunConfig
from geolm.apps.geometric_report import table
from geolm.apps.geometric_run import run
from geolm.training.distributed import get_comm


def parse(argv=None):
    ap = ArgParser(description=__doc__.split("\n")[0])
    add_args(ap, GeoRunConfig)
    return from_args(GeoRunConfig, ap.parse_args(argv))


def _seeds(summary):
    if "seeds" in summary:
        return f"seeds {','.join(map(str, summary['seeds']))} (data and geometry: seed {summary['config']['seed']})"
    return f"seed {summary['config']['seed']}"


@cli_main
def main(argv=None):
    cfg = parse(argv)
    summary = run(cfg)
    if get_comm().rank != 0:
        return 0
    d = summary["data"]
    print(table(summary))
    print(f"data: {d['source']}")
    print(f"      {d['train_stories']} train / {d['val_stories']} val stories, V={d['vocab_size']} "
          f"(incl. UNK, EOS), {d['val_tokens']} val targets, val UNK rate {d['unk_rate']:.4f}; "
          f"kappa fitted on {d['heldout_source']}")
    g = d["geometry"]
    print(f"      {g['coord_dim']}-D coordinates keep {g['spectrum_kept']:.2%} of the PPMI spectrum; "
          f"{_seeds(summary)}; total {summary['seconds_total']:.1f} s on {summary['threads']} threads")
    print(f"wrote {cfg.output}/results.json and {cfg.output}/curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
