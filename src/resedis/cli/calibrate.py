"""``resedis calibrate``: fit a pipeline's presence threshold (+ fusion parameters) on labelled
queries and store them in the index manifest."""

from __future__ import annotations

import argparse
import json
import math
import sys

from resedis.calibrate import calibrate_pipeline
from resedis.cli.options import (
    STORAGE_OPTION_HELP,
    add_split_option,
    field_default,
    given,
    param_default,
    positive_int,
    storage_option,
)
from resedis.cli.pipelines import add_pipeline_options, engine_config, open_db
from resedis.metrics import IOU_MODES
from resedis.pipelines import PipelineConfig


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="fit the presence threshold (and fusion parameters) of a pipeline on labelled queries",
        description=(
            "Run a pipeline on the queries of a labelled dataset, choose the presence threshold (and, for "
            "owl+rerank / clip-crops, the fusion / relation weight) that maximises discovery F1, print the "
            "fitted values with the F1 and N-acc they give, and store them in the index manifest for that "
            "pipeline; search and eval then use them. Calibrate on a split you will not report: "
            "`resedis eval --calibration-split` fits on a held-out share instead."
        ),
    )
    p.add_argument("--dataset", required=True, metavar="DIR", help="labelled benchmark (ReSeDis or RefCOCO layout)")
    add_split_option(p)
    p.add_argument("--db", required=True, metavar="DB", help="the index to calibrate, a directory or an s3:// / gs:// "
                   "/ az:// URI (its manifest stores the result)")
    p.add_argument("--storage-option", type=storage_option, action="append", default=[], metavar="KEY=VALUE",
                   help="with an object-store --db: " + STORAGE_OPTION_HELP)
    add_pipeline_options(p, masks=False)
    p.add_argument("--top-k", type=positive_int, metavar="K",
                   help=f"detections kept per query (default {field_default(PipelineConfig, 'top_k')})")
    p.add_argument("--iou", choices=IOU_MODES,
                   help=f"IoU for matching (default {param_default(calibrate_pipeline, 'iou')})")
    p.add_argument("--fraction", type=_fraction, metavar="F",
                   help="fit on only this seeded share of the queries (default: all of them)")
    p.add_argument("--seed", type=int,
                   help=f"seed of the --fraction split (default {param_default(calibrate_pipeline, 'seed')})")
    p.add_argument("--dry-run", action="store_true", help="report the fitted values without storing them")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--device", metavar="DEVICE", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resedis.io import load_dataset
    from resedis.query import QueryEngine

    index = open_db(args)  # before the dataset and any model: a wrong --db fails fast
    dataset = load_dataset(args.dataset, split=args.split)
    pipeline = QueryEngine(index, engine_config(args, progress=True)).pipeline(args.pipeline, top_k=args.top_k)
    result, stored, dataset = calibrate_pipeline(pipeline, dataset, store=not args.dry_run,
                                                 **given(args, "iou", "fraction", "seed"))
    if args.json:
        print(json.dumps({"pipeline": result.pipeline, **result.to_json(), "grid": result.grid, "stored": stored is not None}))
        return 0
    t = "none kept (above every score)" if not math.isfinite(result.threshold) else f"{result.threshold:.6g}"
    n_acc = result.metrics.get("N_acc")
    print(f"pipeline {result.pipeline} · {result.queries} queries of {dataset.name}")
    print(f"threshold  {t}")
    for k, v in result.params.items():
        print(f"{k:<10} {v}")
    print(f"F1 {result.metrics['F1']:.4f} · precision {result.metrics['precision']:.4f} · recall {result.metrics['recall']:.4f}"
          f" · N_acc {'n/a' if n_acc is None else f'{n_acc:.4f}'} · FA/query {result.metrics['FA_per_query']:.3f}")
    print("stored in " + str(pipeline.index.path) if stored is not None else "(dry run: not stored)", file=sys.stderr)
    return 0
