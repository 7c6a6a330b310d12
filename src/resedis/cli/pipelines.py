"""``resedis pipelines``: list the named search pipelines with their cost.

Also the shared ``--pipeline`` options of ``search``, ``eval`` and ``calibrate``
(:func:`add_pipeline_options`, :func:`pipeline_config`). Only argparse here: the
pipelines themselves are imported inside the command functions.
"""

from __future__ import annotations

import argparse
import json

PIPELINE_NAMES = ("owl", "owl+rerank", "clip-crops")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_pipeline_options(p: argparse.ArgumentParser, *, allow_all: bool = False, masks: bool = True) -> None:
    """Add ``--pipeline --rerank-k --grounder --proposals --crop-model [--masks --segmenter]``."""
    choices = PIPELINE_NAMES + (("all",) if allow_all else ())
    p.add_argument(
        "--pipeline",
        choices=choices,
        default=None,
        help="search pipeline (default owl; see `resedis pipelines`)" + ("; 'all' compares every pipeline" if allow_all else ""),
    )
    p.add_argument("--rerank-k", type=_positive_int, default=10, metavar="K",
                   help="owl+rerank: images re-scored by the grounding model per query (default 10)")
    p.add_argument("--grounder", metavar="SPEC", default=None,
                   help="owl+rerank: grounding model spec (default gdino:IDEA-Research/grounding-dino-tiny)")
    p.add_argument("--proposals", choices=("index", "gt"), default="index",
                   help="clip-crops: candidate boxes from the index's crops (default) or the dataset's ground truth (oracle)")
    p.add_argument("--crop-model", metavar="SPEC", default=None,
                   help="clip-crops: crop encoder (clip:/siglip:) for --proposals gt when the index has no crops")
    if masks:
        p.add_argument("--masks", action="store_true",
                       help="attach SAM masks to the returned hits (box-prompted; cached in the index)")
        p.add_argument("--segmenter", metavar="SPEC", default=None,
                       help="mask model spec (default sam:facebook/sam-vit-base)")


def pipeline_config(args: argparse.Namespace, *, top_k: int | None = None, threshold: float | None = None):
    """-> resedis.pipelines.PipelineConfig from the options of :func:`add_pipeline_options`."""
    from resedis.pipelines import DEFAULT_GROUNDER, PipelineConfig

    return PipelineConfig(
        top_k=top_k or 20,
        threshold=threshold,
        device=getattr(args, "device", None),
        rerank_k=args.rerank_k,
        grounder=args.grounder or DEFAULT_GROUNDER,
        proposals=args.proposals,
        crop_model=args.crop_model,
        progress=True,
    )


def add_calibration_split_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--calibration-split",
        metavar="S",
        default=None,
        help="how presence is calibrated without fitting on reported queries: 'stored' (default: the "
        "index's calibration, flagged if fitted on these very queries), 'none' (pipeline defaults), a "
        "fraction F in (0,1) (fit on a seeded share F of the queries, report the others), or kfold:K "
        "(each query scored with parameters fitted on the other folds)",
    )


def open_db(args: argparse.Namespace):
    """The index ``--db`` names (a local directory or an s3:// / gs:// / az:// / file:// URI),
    opened with the ``--storage-option`` pairs of ``args`` (when the command has them)."""
    from resedis.index import open_index
    from resedis.index.fs import storage_options_from_pairs

    return open_index(args.db, storage_options=storage_options_from_pairs(getattr(args, "storage_option", None)))


def run_eval_pipelines(args: argparse.Namespace, dataset, out_preds) -> int:
    """``resedis eval --db`` with ``--pipeline`` / ``--masks`` / ``--calibration-split``."""
    import sys
    from pathlib import Path

    from resedis.eval import evaluate_predictions, format_metrics_table
    from resedis.io import write_predictions
    from resedis.pipelines import DEFAULT_SEGMENTER, Models

    from resedis.calibrate import parse_split

    parse_split(args.calibration_split)  # a bad value fails before any model is loaded
    index = open_db(args)  # a local directory or an object-store URI, before any model is loaded
    config = pipeline_config(args, top_k=args.top_k)
    models = Models(config.device)
    segmenter = args.segmenter or DEFAULT_SEGMENTER
    if args.pipeline == "all":
        from resedis.ablation import format_table, run_ablation, write_ablation

        rows = run_ablation(dataset, index.location, config=config, models=models, split=args.calibration_split,
                            iou=args.iou, masks=args.masks, segmenter=segmenter)
        print(f"dataset {dataset.name} · IoU {args.iou} · presence: {args.calibration_split or 'stored'}")
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
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"dataset": dataset.name, "iou": args.iou,
                                                   "pipelines": [r.to_json() for r in rows]}, indent=2) + "\n")
        if args.report:
            print(f"report written to {write_ablation(args.report, dataset, rows)}", file=sys.stderr)
        return 0

    from resedis.calibrate import evaluate_with_calibration
    from resedis.pipelines import get_pipeline

    pipeline = get_pipeline(args.pipeline or "owl", index, config, models)
    results, reported, split = evaluate_with_calibration(pipeline, dataset, args.calibration_split, iou=args.iou)
    if args.masks:
        from resedis.index.masks import attach_masks

        results = attach_masks(results, pipeline.index, models.get(segmenter), progress=True)
    write_predictions(out_preds, results)
    print(f"predictions written to {out_preds}", file=sys.stderr)
    ev = evaluate_predictions(reported, results, iou=args.iou)
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
    print(f"dataset {dataset.name} · pipeline {pipeline.name} · IoU {args.iou} · presence: {held}"
          f" (threshold {split.get('threshold', 'per fold')})")
    print(format_metrics_table(ev.metrics))
    if args.json:
        out = ev.to_json()
        out["pipeline"] = pipeline.name
        out["calibration"] = split
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
        print(f"metrics written to {args.json}", file=sys.stderr)
    if args.report:
        from resedis.report import write_report

        out = write_report(args.report, reported, results, ev, title=f"{dataset.name} · {pipeline.name}")
        print(f"report written to {out}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pipelines",
        help="list the search pipelines (--pipeline NAME) and what each costs",
        description="List the named search pipelines usable with --pipeline in search, eval and calibrate, "
        "with a one-line description and their cost per query and per image.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per pipeline instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resedis.pipelines import DEFAULT_PIPELINE, list_pipelines

    entries = list_pipelines()
    if args.json:
        for e in entries:
            print(json.dumps({"name": e.name, "description": e.description, "cost": e.cost,
                              "default": e.name == DEFAULT_PIPELINE}))
        return 0
    width = max(len(e.name) for e in entries) + 2
    for e in entries:
        name = e.name + (" *" if e.name == DEFAULT_PIPELINE else "")
        print(f"{name.ljust(width)}{e.description}")
        print(f"{'':{width}}cost: {e.cost}")
    print(f"\n* default pipeline ({DEFAULT_PIPELINE}).")
    return 0
