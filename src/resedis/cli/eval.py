"""``resedis eval``: score predictions (a JSONL file, or a search index) on a benchmark."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from resedis.cli.options import (
    STORAGE_OPTION_HELP,
    add_split_option,
    field_default,
    given,
    param_default,
    positive_int,
    storage_option,
)
from resedis.cli.pipelines import (
    add_calibration_split_option,
    add_pipeline_options,
    engine_config,
)
from resedis.errors import ResedisError
from resedis.eval import evaluate_predictions
from resedis.eval_protocols.suite import PROTOCOLS
from resedis.metrics import IOU_MODES
from resedis.pipelines import PipelineConfig


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
    p.add_argument("--iou", choices=IOU_MODES,
                   help=f"IoU used for matching (default: {param_default(evaluate_predictions, 'iou')})")
    p.add_argument("--protocol", choices=PROTOCOLS,
                   help="with --predictions: also score with a benchmark's own protocol: d3 (COCO mAP, description = "
                   "category), grec (gRefCOCO F1_score / N_acc / T_acc), reir (ir@k over unique images), saco (SAM 3 "
                   "IL_MCC / pmF1 / cgF1); default: the resedis suite only")
    p.add_argument(
        "--out-predictions",
        metavar="P",
        help="with --db: where to write the predictions that were scored (default: next to --json, "
        "else next to --report, as <name>.predictions.jsonl; required when neither is given)",
    )
    p.add_argument("--top-k", type=positive_int, metavar="K",
                   help=f"with --db: detections kept per query (default {field_default(PipelineConfig, 'top_k')})")
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
    if args.db is not None and args.protocol:
        raise ResedisError("--protocol scores a predictions file: write them with `resedis eval --db DB "
                           "--out-predictions P ...`, then score them with `resedis eval --predictions P --protocol ...`")
    if args.category_map and args.db is not None:
        raise ResedisError("--category-map applies to COCO results given with --predictions")
    if args.db is None and (args.pipeline or args.masks or args.calibration_split is not None):
        raise ResedisError("--pipeline, --masks and --calibration-split apply with --db (a predictions file is scored as it is)")

    from resedis.calibrate import parse_split
    from resedis.eval import format_metrics_table
    from resedis.index.fs import is_uri
    from resedis.io import load_dataset, read_predictions

    if args.storage_option and (args.db is None or not is_uri(args.db)):
        raise ResedisError("--storage-option applies to an object-store --db (s3://, gs://, az://)")
    if args.db is not None:
        out_preds = _default_out_predictions(args)
        parse_split(args.calibration_split)  # a bad value fails before any model is loaded
        if not is_uri(args.db) and not Path(args.db).exists():
            raise ResedisError(f"--db {args.db}: no index there (build one with `resedis index`)")
    elif not Path(args.predictions).is_file():
        raise ResedisError(f"--predictions {args.predictions}: file not found")

    dataset = load_dataset(args.dataset, strict=not args.lenient, split=args.split)
    for s in dataset.skipped:
        print(f"skipped: {s.source}: {s.reason}", file=sys.stderr)
    if args.db is not None:
        return _run_index(args, dataset, out_preds)

    from resedis.io import is_coco_results_file, load_category_map, read_coco_results

    if is_coco_results_file(args.predictions):
        cmap = load_category_map(args.category_map) if args.category_map else None
        results = read_coco_results(args.predictions, category_map=cmap)
    else:
        if args.category_map:
            raise ResedisError("--category-map applies to COCO results (a JSON list), not to a predictions JSONL file")
        results = read_predictions(args.predictions)
    ev = evaluate_predictions(dataset, results, **given(args, "iou", "protocol"))
    for w in ev.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"dataset {dataset.name} · IoU {ev.iou}")
    print(format_metrics_table(ev.metrics))
    if ev.protocol_metrics:
        from resedis.eval_protocols.suite import format_protocol_table

        print(f"\nprotocol {ev.protocol}")
        print(format_protocol_table(ev.protocol, ev.protocol_metrics))
    if args.coco_out:
        _write_coco(args.coco_out, dataset, ev.results)
    if args.json:
        _write_json(args.json, ev.to_json())
    if args.report:
        from resedis.report import write_report

        print(f"report written to {write_report(args.report, dataset, results, ev)}", file=sys.stderr)
    return 0


def _write_json(path: str, data: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    print(f"metrics written to {out}", file=sys.stderr)


def _write_coco(path: str, dataset, scored: dict) -> None:
    """The scored detections of every query as COCO results (``category_id`` = query id)."""
    from resedis.io import write_coco_results
    from resedis.types import QueryResult

    results = [QueryResult(q.query_id, q.expression, scored[q.query_id]) for q in dataset.queries if q.query_id in scored]
    print(f"COCO results written to {write_coco_results(path, results)}", file=sys.stderr)


def _run_index(args: argparse.Namespace, dataset, out_preds: Path) -> int:
    """``--db``: every query through the library's query engine, scored (one pipeline), or
    every pipeline side by side (``--pipeline all``)."""
    from resedis.ablation import evaluate_pipeline
    from resedis.cli.pipelines import open_db
    from resedis.eval import format_metrics_table
    from resedis.io import write_predictions
    from resedis.query import QueryEngine

    engine = QueryEngine(open_db(args), engine_config(args, progress=True))
    options = dict(top_k=args.top_k, split=args.calibration_split, masks=args.masks, **given(args, "iou"))
    if args.pipeline == "all":
        return _run_ablation(args, dataset, engine, options, out_preds)
    row = evaluate_pipeline(engine, dataset, args.pipeline, **options)
    ev, split = row.eval_result, row.split
    write_predictions(out_preds, row.results)
    print(f"predictions written to {out_preds}", file=sys.stderr)
    if args.coco_out:
        _write_coco(args.coco_out, dataset, ev.results)
    for w in ev.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if split.get("warning"):
        print(f"warning: {split['warning']}", file=sys.stderr)
    if split.get("note"):
        print(f"note: {split['note']}", file=sys.stderr)
    held = (f"fitted on {split['calibration_queries']} held-out queries, reporting the other {split['evaluated_queries']}"
            if split["mode"] == "holdout" else f"{split['mode']}")
    if split["mode"] == "holdout":
        ids = [str(i) for i in split["calibration_query_ids"]]
        shown = ", ".join(ids[:20]) + (f", … ({len(ids)} in all; every id in --json)" if len(ids) > 20 else "")
        print(f"calibration queries (fitted on, not reported): {shown}", file=sys.stderr)
    print(f"dataset {dataset.name} · pipeline {row.pipeline} · IoU {ev.iou} · presence: {held}"
          f" (threshold {split.get('threshold', 'per fold')})")
    print(format_metrics_table(ev.metrics))
    if args.json:
        _write_json(args.json, {**ev.to_json(), "pipeline": row.pipeline, "calibration": split})
    if args.report:
        from resedis.report import write_report

        out = write_report(args.report, row.reported, row.results, ev, title=f"{dataset.name} · {row.pipeline}")
        print(f"report written to {out}", file=sys.stderr)
    return 0


def _run_ablation(args: argparse.Namespace, dataset, engine, options: dict, out_preds: Path) -> int:
    from resedis.ablation import format_table, run_ablation, write_ablation
    from resedis.io import write_predictions

    rows = run_ablation(dataset, engine, **options)
    iou = next((r.eval_result.iou for r in rows if r.eval_result is not None), param_default(evaluate_predictions, "iou"))
    print(f"dataset {dataset.name} · IoU {iou} · presence: {args.calibration_split or 'stored'}")
    print(format_table(rows))
    for r in rows:
        if r.status == "ok":
            path = out_preds.with_name(f"{out_preds.stem}.{r.pipeline.replace('+', '-')}{out_preds.suffix}")
            write_predictions(path, r.results)
            print(f"{r.pipeline}: predictions written to {path}", file=sys.stderr)
        if r.split.get("warning"):
            print(f"warning: {r.pipeline}: {r.split['warning']}", file=sys.stderr)
        if r.split.get("note"):
            print(f"note: {r.pipeline}: {r.split['note']}", file=sys.stderr)
    if args.json:
        _write_json(args.json, {"dataset": dataset.name, "iou": iou, "pipelines": [r.to_json() for r in rows]})
    if args.report:
        print(f"report written to {write_ablation(args.report, dataset, rows)}", file=sys.stderr)
    return 0
