"""``resedis search``: find a described object across an indexed image collection."""

from __future__ import annotations

import argparse
import json

from resedis.cli.options import (
    STORAGE_OPTION_HELP,
    add_threads_option,
    field_default,
    float_in,
    given,
    positive_int,
    storage_option,
    unit_float,
)
from resedis.cli.pipelines import add_pipeline_options, engine_config
from resedis.pipelines import PipelineConfig


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
    p.add_argument("--top-k", type=positive_int, metavar="K",
                   help=f"number of hits (default {field_default(PipelineConfig, 'top_k')})")
    p.add_argument(
        "--threshold",
        type=unit_float,
        metavar="T",
        help="presence threshold on the score (default: the calibrated one stored in the index, else the "
        "model checkpoint's presence_threshold (a finetune output, demo), else the pipeline's default; "
        "see resedis stats)",
    )
    p.add_argument("--json", action="store_true", help="print JSON lines, one hit each (the shared hit schema)")
    p.add_argument("--device", metavar="DEVICE", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--model", metavar="SPEC", help="refuse to search unless the index was built with this model")
    p.add_argument("--nms-iou", type=float_in(0.0, 1.0, low_open=True), metavar="F",
                   help=f"per-image NMS IoU for hits (default {field_default(PipelineConfig, 'nms_iou')}; 1 = none)")
    add_threads_option(p)
    add_pipeline_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resedis.index import open_index
    from resedis.index.fs import storage_options_from_pairs
    from resedis.query import QueryEngine, QueryRequest
    from resedis.threads import set_threads

    set_threads(args.threads)  # before any model runs
    index = open_index(args.db, model=args.model, storage_options=storage_options_from_pairs(args.storage_option))
    # One query per process: converting the region matrix to float32 would cost what one
    # query in the stored dtype converts anyway, plus twice the memory.
    engine = QueryEngine(index, engine_config(args, matrix_dtype="stored"))
    request = QueryRequest(args.text, **given(args, "pipeline", "top_k", "threshold", "masks"))
    answer = engine.run(request)
    result = answer.result
    if args.json:
        for hit in result.hits:
            print(json.dumps(hit.to_json()))
        return 0
    print(f"{len(result.hits)} hits for {result.expression!r} (threshold {answer.threshold.value:.3g}; * = present)")
    if result.hits:
        width = max(len(str(h.image_id)) for h in result.hits)
        print(f"{'rank':>4}  {'score':>6}    {'image':<{width}}  box [x0, y0, x1, y1]")
        for rank, h in enumerate(result.hits, 1):
            box = ", ".join(f"{v:.1f}" for v in h.box)
            mark = "*" if h.present else " "
            print(f"{rank:>4}  {h.score:6.4f} {mark}  {str(h.image_id):<{width}}  [{box}]")
    return 0
