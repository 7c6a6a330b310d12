"""``resedis pipelines``: list the named search pipelines with their cost.

Also the shared ``--pipeline`` options of ``search``, ``eval`` and ``calibrate``
(:func:`add_pipeline_options`) and the engine configuration they give
(:func:`engine_config`: only the options the user set; the rest keep the defaults of
:class:`resedis.pipelines.PipelineConfig`).
"""

from __future__ import annotations

import argparse
import json

from resedis.cli.options import field_default, given, positive_int
from resedis.pipelines import (
    DEFAULT_PIPELINE,
    PIPELINES,
    PROPOSALS,
    PipelineConfig,
    list_pipelines,
)

#: the engine options of PipelineConfig that the shared flags set (argparse dest = field name)
ENGINE_OPTIONS = ("device", "nms_iou", "rerank_k", "grounder", "proposals", "crop_model", "segmenter")


def add_pipeline_options(p: argparse.ArgumentParser, *, allow_all: bool = False, masks: bool = True) -> None:
    """Add ``--pipeline --rerank-k --grounder --proposals --crop-model [--masks --segmenter]``."""
    choices = tuple(PIPELINES) + (("all",) if allow_all else ())
    p.add_argument(
        "--pipeline",
        choices=choices,
        help=f"search pipeline (default {DEFAULT_PIPELINE}; see `resedis pipelines`)"
        + ("; 'all' compares every pipeline" if allow_all else ""),
    )
    p.add_argument("--rerank-k", type=positive_int, metavar="K",
                   help="owl+rerank: images re-scored by the grounding model per query "
                   f"(default {field_default(PipelineConfig, 'rerank_k')})")
    p.add_argument("--grounder", metavar="SPEC",
                   help=f"owl+rerank: grounding model spec (default {field_default(PipelineConfig, 'grounder')})")
    p.add_argument("--proposals", choices=PROPOSALS,
                   help="clip-crops: candidate boxes from the index's crops (index) or the dataset's ground truth "
                   f"(gt, an oracle; default {field_default(PipelineConfig, 'proposals')})")
    p.add_argument("--crop-model", metavar="SPEC",
                   help="clip-crops: crop encoder (clip:/siglip:) for --proposals gt when the index has no crops")
    if masks:
        p.add_argument("--masks", action="store_true",
                       help="attach SAM masks to the returned hits (box-prompted; cached in the index)")
        p.add_argument("--segmenter", metavar="SPEC",
                       help=f"mask model spec (default {field_default(PipelineConfig, 'segmenter')})")


def engine_config(args: argparse.Namespace, **fixed) -> PipelineConfig:
    """The :class:`~resedis.pipelines.PipelineConfig` of the options the user set (see
    :func:`add_pipeline_options`; ``--device``, ``--nms-iou`` where the command has them),
    plus ``fixed`` (choices the command makes, e.g. progress bars)."""
    return PipelineConfig(**given(args, *ENGINE_OPTIONS), **fixed)


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
