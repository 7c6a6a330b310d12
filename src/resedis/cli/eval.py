"""``resedis eval``: score predictions (a JSONL file, or a search index) on a benchmark."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from resedis.cli._args import STORAGE_OPTION_HELP, add_split_option, storage_option
from resedis.errors import ResedisError
from resedis.eval_protocols.suite import PROTOCOLS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score predictions on a benchmark (metrics table, metrics.json, HTML report)",
        description=(
            "Score predictions against a benchmark with the metric suite of docs/metrics.md and print "
            "a metrics table. Predictions come from a JSONL file (--predictions) or are produced by "
            "searching an index for every query (--db). Prediction lines naming unknown queries or "
            "images are reported as warnings and excluded."
        ),
    )
    p.add_argument("--dataset", required=True, metavar="DIR", help="benchmark folder (ReSeDis, RefCOCO-family or gRefCOCO layout)")
    add_split_option(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", metavar="P", help="predictions: a JSONL file (one line per query) or a COCO "
                     "results JSON list [{image_id, category_id, bbox [x, y, w, h], score}] (see --category-map)")
    src.add_argument("--db", metavar="DB", help="search this index (a directory, or an s3:// / gs:// / az:// URI) "
                     "for every query of the dataset and score the results")
    p.add_argument("--storage-option", type=storage_option, action="append", default=[], metavar="KEY=VALUE",
                   help="with an object-store --db: " + STORAGE_OPTION_HELP)
    p.add_argument("--category-map", metavar="FILE", help="with COCO results: JSON object {category_id: query_id}; "
                   "without it the category id is the query id (D³: sent_id)")
    p.add_argument("--coco-out", metavar="FILE", help="also write the scored predictions as COCO results "
                   "(category_id = query id; a 'present' key keeps the decisions)")
    p.add_argument("--json", metavar="M", help="write the metrics (plus breakdown and warnings) to this JSON file")
    p.add_argument("--report", metavar="R", help="write a self-contained HTML report to this file")
    p.add_argument("--iou", choices=("box", "mask"), default="box", help="IoU used for matching (default: box)")
    p.add_argument("--protocol", choices=PROTOCOLS,
                   help="also score with a benchmark's own protocol: d3 (COCO mAP, description = category), "
                   "grec (gRefCOCO F1_score / N_acc / T_acc), reir (ir@k over unique images), saco (SAM 3 "
                   "IL_MCC / pmF1 / cgF1); default: the resedis suite only")
    p.add_argument(
        "--out-predictions",
        metavar="P",
        help="with --db: where to write the predictions that were scored (default: next to --json, "
        "else next to --report, as <name>.predictions.jsonl; required when neither is given)",
    )
    p.add_argument("--top-k", type=int, metavar="K", help="with --db: detections kept per query (default 20)")
    from resedis.cli.pipelines import add_calibration_split_option, add_pipeline_options

    add_pipeline_options(p, allow_all=True)  # with --db: which pipeline, masks, 'all' = ablation table
    add_calibration_split_option(p)
    p.add_argument(
        "--lenient",
        action="store_true",
        help="skip malformed dataset records (each skip is reported) instead of stopping at the first one",
    )
    p.set_defaults(func=run)


def _default_out_predictions(args: argparse.Namespace) -> Path:
    if args.out_predictions:
        return Path(args.out_predictions)
    anchor = args.json or args.report
    if anchor is None:
        raise ResedisError("--db needs --out-predictions (or --json / --report, next to which they are written)")
    anchor = Path(anchor)
    return anchor.with_name(anchor.stem + ".predictions.jsonl")


def run(args: argparse.Namespace) -> int:
    if args.top_k is not None and args.db is None:
        raise ResedisError("--top-k only applies with --db (a predictions file is scored as it is)")
    if args.out_predictions and args.db is None:
        raise ResedisError("--out-predictions only applies with --db")
    if args.top_k is not None and args.top_k < 1:
        raise ResedisError(f"--top-k must be ≥ 1, got {args.top_k}")
    if args.db is None and (args.pipeline or args.masks or args.calibration_split is not None):
        raise ResedisError("--pipeline, --masks and --calibration-split apply with --db (a predictions file is scored as it is)")

    from resedis.eval import evaluate_predictions, format_metrics_table
    from resedis.io import load_dataset, read_predictions, write_predictions

    dataset = load_dataset(args.dataset, strict=not args.lenient, split=args.split)
    for s in dataset.skipped:
        print(f"skipped: {s.source}: {s.reason}", file=sys.stderr)

    from resedis.index.fs import is_uri, storage_options_from_pairs

    if args.storage_option and (args.db is None or not is_uri(args.db)):
        raise ResedisError("--storage-option applies to an object-store --db (s3://, gs://, az://)")
    if args.db is not None and (args.pipeline or args.masks or args.calibration_split is not None):
        if args.protocol:
            raise ResedisError("--protocol scores one set of predictions: use it with --predictions, or with --db "
                               "without --pipeline/--masks/--calibration-split")
        from resedis.cli.pipelines import run_eval_pipelines

        return run_eval_pipelines(args, dataset, _default_out_predictions(args))

    if args.db is not None:
        out_preds = _default_out_predictions(args)
        if not is_uri(args.db) and not Path(args.db).exists():
            raise ResedisError(f"--db {args.db}: no index there (build one with `resedis index`)")
        from resedis.index import open_index
        from resedis.search import search_dataset

        index = open_index(args.db, storage_options=storage_options_from_pairs(args.storage_option))
        results = search_dataset(index, dataset, top_k=args.top_k or 20)
        write_predictions(out_preds, results)
        print(f"predictions written to {out_preds}", file=sys.stderr)
    else:
        if not Path(args.predictions).is_file():
            raise ResedisError(f"--predictions {args.predictions}: file not found")
        from resedis.io import is_coco_results_file, load_category_map, read_coco_results

        if is_coco_results_file(args.predictions):
            cmap = load_category_map(args.category_map) if args.category_map else None
            results = read_coco_results(args.predictions, category_map=cmap)
        else:
            if args.category_map:
                raise ResedisError("--category-map applies to COCO results (a JSON list), not to a predictions JSONL file")
            results = read_predictions(args.predictions)

    protocol = {"protocol": args.protocol} if args.protocol else {}
    ev = evaluate_predictions(dataset, results, iou=args.iou, **protocol)
    for w in ev.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"dataset {dataset.name} · IoU {args.iou}")
    print(format_metrics_table(ev.metrics))
    if ev.protocol_metrics:
        from resedis.eval_protocols.suite import format_protocol_table

        print(f"\nprotocol {ev.protocol}")
        print(format_protocol_table(ev.protocol, ev.protocol_metrics))

    if args.coco_out:
        from resedis.io import write_coco_results
        from resedis.types import QueryResult

        scored = [QueryResult(q.query_id, q.expression, ev.results[q.query_id])
                  for q in dataset.queries if q.query_id in ev.results]
        print(f"COCO results written to {write_coco_results(args.coco_out, scored)}", file=sys.stderr)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(ev.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"metrics written to {path}", file=sys.stderr)
    if args.report:
        from resedis.report import write_report

        out = write_report(args.report, dataset, results, ev)
        print(f"report written to {out}", file=sys.stderr)
    return 0
