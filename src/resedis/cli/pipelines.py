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
