"""``resedis search``: find a described object across an indexed image collection."""

from __future__ import annotations

import argparse
import json

from resedis.cli._args import STORAGE_OPTION_HELP, add_threads_option, positive_int, storage_option, unit_float


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "search",
        help="search an index for a described object",
        description=(
            "Encode TEXT with the index's model, score every stored region (exact inner product = the "
            "detector's logit), suppress overlapping boxes per image and print the best hits with "
            "score = sigmoid(logit) and present = score >= threshold."
        ),
    )
    p.add_argument("text", metavar="TEXT", help="description of the object, e.g. \"a small red circle\"")
    p.add_argument("--db", required=True, metavar="DB", help="index directory built by `resedis index`, or its s3:// / gs:// / az:// URI")
    p.add_argument("--storage-option", type=storage_option, action="append", default=[], metavar="KEY=VALUE",
                   help=STORAGE_OPTION_HELP)
    p.add_argument("--top-k", type=positive_int, default=20, metavar="K", help="number of hits (default 20)")
    p.add_argument(
        "--threshold",
        type=unit_float,
        metavar="T",
        help="presence threshold on the score (default: the calibrated one stored in the index, else the "
        "model checkpoint's presence_threshold (a finetune output, demo), else 0.1; see resedis stats)",
    )
    p.add_argument("--json", action="store_true", help="print JSON lines, one hit each (the shared hit schema)")
    p.add_argument("--device", metavar="DEVICE", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--model", metavar="SPEC", help="refuse to search unless the index was built with this model")
    p.add_argument("--nms-iou", type=unit_float, default=0.5, metavar="F", help="per-image NMS IoU for hits (default 0.5; 1 = none)")
    add_threads_option(p)
    from resedis.cli.pipelines import add_pipeline_options

    add_pipeline_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resedis.errors import ResedisError
    from resedis.index import open_index
    from resedis.search import Searcher
    from resedis.threads import set_threads

    if not args.text.strip():
        raise ResedisError("empty query: describe the object to search for")
    if args.nms_iou <= 0:
        raise ResedisError("--nms-iou must be > 0")
    set_threads(args.threads)  # before any model runs (every pipeline below)
    from resedis.index.fs import storage_options_from_pairs

    index = open_index(args.db, model=args.model, storage_options=storage_options_from_pairs(args.storage_option))
    if args.pipeline not in (None, "owl"):
        from resedis.cli.pipelines import pipeline_config
        from resedis.pipelines import as_queries, get_pipeline

        pipeline = get_pipeline(args.pipeline, index, pipeline_config(args, top_k=args.top_k, threshold=args.threshold))
        result = pipeline.run(as_queries([args.text]))[0]
        threshold = pipeline.resolved()[1]
    else:
        # One query: converting the matrix to float32 once costs what one "stored" query
        # converts anyway, plus twice the memory.
        searcher = Searcher(index, device=args.device, nms_iou=args.nms_iou, matrix_dtype="stored")
        result = searcher.search(args.text, top_k=args.top_k, threshold=args.threshold)
        threshold = searcher.threshold if args.threshold is None else args.threshold
    if args.masks:
        from resedis.index.masks import attach_masks
        from resedis.models import load_model
        from resedis.pipelines import DEFAULT_SEGMENTER

        result = attach_masks([result], index, load_model(args.segmenter or DEFAULT_SEGMENTER, args.device))[0]
    if args.json:
        for hit in result.hits:
            print(json.dumps(hit.to_json()))
        return 0
    print(f"{len(result.hits)} hits for {result.expression!r} (threshold {threshold:.3g}; * = present)")
    if result.hits:
        width = max(len(str(h.image_id)) for h in result.hits)
        print(f"{'rank':>4}  {'score':>6}    {'image':<{width}}  box [x0, y0, x1, y1]")
        for rank, h in enumerate(result.hits, 1):
            box = ", ".join(f"{v:.1f}" for v in h.box)
            mark = "*" if h.present else " "
            print(f"{rank:>4}  {h.score:6.4f} {mark}  {str(h.image_id):<{width}}  [{box}]")
    return 0
