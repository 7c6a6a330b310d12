"""``resedis synth``: render a synthetic benchmark in the ReSeDis format."""

from __future__ import annotations

import argparse
import json

from resedis.cli._args import non_negative_int, positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="render a synthetic benchmark (images, COCO instances, ReSeDis expressions)",
        description=(
            "Render coloured shapes on textured backgrounds with exact masks, and write referring "
            "expressions whose targets are every object of the corpus that satisfies them. "
            "Output: OUT_DIR/images/*.jpg, OUT_DIR/instances.json, OUT_DIR/expressions/*.json."
        ),
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="output directory (must be empty or absent unless --overwrite)")
    p.add_argument("--images", type=positive_int, default=200, help="number of images to render (default: 200)")
    p.add_argument("--queries", type=positive_int, default=150, help="number of queries, absent ones included (default: 150)")
    p.add_argument("--absent", type=non_negative_int, default=20, help="how many of the queries are absent: satisfied nowhere (default: 20)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed; the same seed gives byte-identical files (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it is not empty")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resedis.errors import ResedisError
    from resedis.synth import generate

    if args.absent > args.queries:
        raise ResedisError(f"--absent ({args.absent}) cannot exceed --queries ({args.queries})")
    summary = generate(
        args.out_dir,
        images=args.images,
        queries=args.queries,
        absent=args.absent,
        seed=args.seed,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    print(json.dumps(summary, indent=2))
    return 0
