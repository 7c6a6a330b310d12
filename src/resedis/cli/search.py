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
    int_at_least,
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
    p.add_argument("text", metavar="TEXT", nargs="?",
                   help="description of the object, e.g. \"a small red circle\" (or query by example: --like / --like-image)")
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
    p.add_argument("--not", dest="negative", action="append", default=[], metavar="TEXT",
                   help="exclude regions that match TEXT (repeatable; colour/size words alone take the subject's "
                   "noun: --not large on 'a red circle' excludes 'large circle'); pipeline owl+compose, see docs/queries.md")
    p.add_argument("--explain", action="store_true",
                   help="show each hit's subject logit and every cue's contribution (pipeline owl+compose)")
    add_threads_option(p)
    add_pipeline_options(p)
    ex = p.add_argument_group("query by example (instead of TEXT; docs/queries.md)")
    ex.add_argument("--like", metavar="IMAGE_ID", help="find regions like a region of this indexed image (an image id "
                    "as the hits show it); the region: the stored box best matching --box, else the most object-like")
    ex.add_argument("--like-image", metavar="PATH", help="find regions like a region of this image file (need not be "
                    "indexed): encoded with the index's model; without --box, OWL's own query-box rule")
    ex.add_argument("--box", metavar="X0,Y0,X1,Y1", help="the example region, in pixels of the example image")
    flt = p.add_argument_group("filters on image metadata (applied before the top-k is cut)")
    flt.add_argument("--folder", metavar="PREFIX", help="only images in this folder (relative to the indexed folder, as in image ids) or below")
    for name, what in (("min-width", "width >="), ("max-width", "width <="), ("min-height", "height >="),
                       ("max-height", "height <=")):
        flt.add_argument(f"--{name}", type=int_at_least(0), metavar="PX", help=f"only images with {what} PX pixels")
    flt.add_argument("--modified-after", metavar="DATE", help="only files modified at or after this ISO date/time (UTC unless a zone is given)")
    flt.add_argument("--modified-before", metavar="DATE", help="only files modified before this ISO date/time")
    flt.add_argument("--image-id", action="append", metavar="ID", help="only this image (repeatable)")
    flt.add_argument("--ids-file", metavar="FILE", help="only the image ids listed in FILE, one a line")
    p.add_argument("--group-by", choices=("hit", "image"),
                   help="hit: one line per box (when not given); image: one line per image with all its boxes "
                   "(JSON: {image_id, path, score (best), present (any), hits})")
    p.set_defaults(func=run)


def request_filters(args: argparse.Namespace):
    """The filter options as a :class:`resedis.filters.Filters` (None when none is given)."""
    from resedis.filters import filters_from, read_ids_file

    ids = list(args.image_id or [])
    if args.ids_file:
        ids.extend(read_ids_file(args.ids_file))
    values = {k: getattr(args, k) for k in ("folder", "min_width", "max_width", "min_height", "max_height",
                                           "modified_after", "modified_before")}
    values["image_ids"] = tuple(ids) if ids else None
    return filters_from(values)


def request_example(args: argparse.Namespace):
    """--like / --like-image / --box as a :class:`resedis.by_example.ByExample` (None: a text query)."""
    from resedis.by_example import ByExample, parse_box
    from resedis.errors import ResedisError

    if args.like is None and args.like_image is None:
        if args.box is not None:
            raise ResedisError("--box goes with --like IMAGE_ID or --like-image PATH")
        if not args.text:
            raise ResedisError("give TEXT (a description) or an example region: --like IMAGE_ID / --like-image PATH")
        return None
    if args.like is not None and args.like_image is not None:
        raise ResedisError("give --like IMAGE_ID or --like-image PATH, not both")
    if args.text:
        raise ResedisError(f"give TEXT or an example region, not both (TEXT {args.text!r} with --like)")
    box = None if args.box is None else parse_box(args.box, "--box")
    return ByExample(image_id=args.like, image=args.like_image, box=box)


def run(args: argparse.Namespace) -> int:
    import sys

    from resedis.index.fs import storage_options_from_pairs
    from resedis.query import QueryRequest, group_by_image
    from resedis.search_oneoff import search_once
    from resedis.threads import set_threads

    example = request_example(args)
    filters = request_filters(args)
    set_threads(args.threads)  # before any model runs
    # One query per process: the one-off path (query cache, light text encoder, region
    # sidecar where they give the engine's answer), the region matrix kept as stored.
    request = QueryRequest(args.text or "", like=example, filters=filters,
                           **given(args, "pipeline", "top_k", "threshold", "masks"),
                           negative=tuple(args.negative), explain=args.explain)
    answer = search_once(args.db, request, engine_config(args, matrix_dtype="stored"), model=args.model,
                         storage_options=storage_options_from_pairs(args.storage_option))
    result = answer.result
    for note in answer.notes:
        print(f"note: {note}", file=sys.stderr if args.json else sys.stdout)
    if answer.example is not None and not args.json:
        box = ", ".join(f"{v:.1f}" for v in answer.example.box)
        print(f"example region: [{box}] ({'stored region' if answer.example.source == 'index' else 'encoded image'})")
    if args.group_by == "image":
        groups = group_by_image(result.hits)
        if args.json:
            for group in groups:
                print(json.dumps(group.to_json()))
            return 0
        print(f"{len(groups)} images, {len(result.hits)} hits for {result.expression!r} "
              f"(threshold {answer.threshold.value:.3g}; * = present)")
        for rank, g in enumerate(groups, 1):
            boxes = "  ".join(f"[{', '.join(f'{v:.1f}' for v in h.box)}] {h.score:.4f}{'*' if h.present else ''}"
                              for h in g.hits)
            print(f"{rank:>4}  {g.score:6.4f} {'*' if g.present else ' '}  {g.image_id}  {len(g.hits)} box"
                  f"{'es' if len(g.hits) != 1 else ''}: {boxes}")
        return 0
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
            if h.explain:
                print("      " + "  ".join(f"{k} {v:+.3f}" for k, v in h.explain.items()))
    return 0
