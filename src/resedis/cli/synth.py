"""``resedis synth``: render a synthetic benchmark in the ReSeDis format."""

from __future__ import annotations

import argparse
import json

from resedis.cli.options import given, non_negative_int, param_default, positive_int
from resedis.synth import generate


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
    p.add_argument("--images", type=positive_int,
                   help=f"number of images to render (default: {param_default(generate, 'images')})")
    p.add_argument("--queries", type=positive_int,
                   help=f"number of queries, absent ones included (default: {param_default(generate, 'queries')})")
    p.add_argument("--absent", type=non_negative_int,
                   help=f"how many of the queries are absent: satisfied nowhere (default: {param_default(generate, 'absent')})")
    p.add_argument("--seed", type=non_negative_int,
                   help=f"random seed; the same seed gives byte-identical files (default: {param_default(generate, 'seed')})")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it is not empty")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    summary = generate(args.out_dir, progress=not args.no_progress, overwrite=args.overwrite,
                       **given(args, "images", "queries", "absent", "seed"))
    print(json.dumps(summary, indent=2))
    return 0
