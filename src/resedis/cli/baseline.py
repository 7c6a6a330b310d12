"""``resedis baseline oracle|random``: reference predictions without a model."""

from __future__ import annotations

import argparse
import sys

from resedis.baselines import random_predictions
from resedis.cli.options import add_split_option, given, non_negative_int, param_default
from resedis.io import FORMATS, load_dataset


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "baseline",
        help="write reference predictions (oracle = ground truth, random = seeded chance)",
        description="Write a predictions JSONL file from the dataset alone: 'oracle' copies the ground "
        "truth (scores 1.0 where it should, no false alarms); 'random' guesses images and boxes at random.",
    )
    p.add_argument("kind", choices=["oracle", "random"], help="which baseline to write")
    p.add_argument("--dataset", required=True, help="dataset folder (ReSeDis layout or RefCOCO refs folder)")
    add_split_option(p)
    p.add_argument("--out", required=True, help="predictions JSONL file to write (atomically)")
    p.add_argument("--seed", type=non_negative_int,
                   help=f"random seed for 'random', >= 0 (default {param_default(random_predictions, 'seed')})")
    p.add_argument("--detections", type=non_negative_int, dest="detections_per_query",
                   help=f"detections per query for 'random' (default {param_default(random_predictions, 'detections_per_query')})")
    p.add_argument("--format", choices=FORMATS,
                   help=f"dataset format (default: {param_default(load_dataset, 'format')}, detect it)")
    p.add_argument("--lenient", action="store_true",
                   help="skip malformed annotation records (each skip is reported) instead of failing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resedis.baselines import oracle_predictions
    from resedis.io import write_predictions

    dataset = load_dataset(args.dataset, strict=not args.lenient, split=args.split, **given(args, "format"))
    for s in dataset.skipped:
        print(f"skipped {s.source}: {s.reason}", file=sys.stderr)
    if args.kind == "oracle":
        results = oracle_predictions(dataset)
    else:
        results = random_predictions(dataset, **given(args, "seed", "detections_per_query"))
    path = write_predictions(args.out, results)
    n_det = sum(len(r.hits) for r in results)
    print(f"wrote {len(results)} queries, {n_det} detections ({args.kind}) to {path}")
    return 0
