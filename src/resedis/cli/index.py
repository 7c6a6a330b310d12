"""``resedis index``: build or update a region index from a folder of images."""

from __future__ import annotations

import argparse
import json
import sys

from resedis.cli.options import (
    STORAGE_OPTION_HELP,
    field_default,
    float_in,
    given,
    param_default,
    positive_int,
    storage_option,
)
from resedis.distributed import index_with_ray
from resedis.index import IndexConfig
from resedis.index.config import DEFAULT_MAX_REGIONS, REGION_NMS_IOU
from resedis.index.crops import CropConfig
from resedis.quant import DEFAULT_STORAGE, STORAGE_FORMATS

NMS_IOU = float_in(0.0, 1.0, low_open=True, note=" (1 disables NMS)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "index",
        help="index a folder of images (incremental; resumable after a crash)",
        description=(
            "Walk IMAGES_DIR recursively (jpg, png, webp, bmp, gif, tiff), run the region encoder on "
            "every image and store, per kept box, its augmented vector, box and objectness in a LanceDB "
            "directory. Re-running adds new or changed files only; an interrupted run is resumed. "
            "Unreadable, truncated, non-image and over-large files are skipped and recorded, and so are "
            "symlinks leading outside IMAGES_DIR (unless --follow-symlinks) and second routes to one file."
        ),
    )
    p.add_argument("images_dir", metavar="IMAGES_DIR", help="folder of images (searched recursively; hidden entries ignored)")
    p.add_argument("--db", required=True, metavar="DB", help="index directory (created if missing), or an object-store "
                   "URI: s3://bucket/prefix, gs://bucket/prefix, az://container/prefix (see docs/object-store.md)")
    p.add_argument("--storage-option", type=storage_option, action="append", default=[], metavar="KEY=VALUE",
                   help=STORAGE_OPTION_HELP)
    p.add_argument(
        "--model",
        metavar="SPEC",
        help="region encoder, e.g. owlv2:google/owlv2-base-patch16-ensemble or owlv2:/local/dir "
        "(default: the index's model, or OWLv2 base for a new index); must match an existing index",
    )
    p.add_argument("--batch-size", type=positive_int, metavar="B",
                   help=f"images per encoder batch and per commit (default {field_default(IndexConfig, 'batch_size')})")
    p.add_argument("--max-regions", type=positive_int, metavar="N", help=f"boxes kept per image, by objectness after NMS (default: the index's setting; {DEFAULT_MAX_REGIONS} for "
                   "a new index)")
    p.add_argument("--nms-iou", type=NMS_IOU, metavar="F", help="IoU above which a lower-objectness box is dropped (default: the index's setting; "
                   f"{REGION_NMS_IOU} for a new index; 1 = no NMS)")
    p.add_argument("--device", metavar="DEVICE", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--prune", action="store_true", help="remove entries of files no longer present in IMAGES_DIR")
    p.add_argument("--retry-skipped", action="store_true",
                   help="read every recorded skip again, also files that were bad themselves (by default those wait "
                        "until the file changes; skips whose cause may pass, e.g. the model failed, are always retried)")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="also index symlinked files and folders whose target lies outside IMAGES_DIR (default: record "
                   "them as skipped; symlinks inside it are always indexed, each file once). Each run applies its own "
                   "choice: a later run without it turns such images back into skips")
    p.add_argument("--report", action="store_true", help="print every skipped file with its reason")
    p.add_argument("--storage", "--vector-dtype", dest="vector_dtype", choices=STORAGE_FORMATS,
                   help=f"storage format of region vectors for a new index (default {DEFAULT_STORAGE}): float16/float32 "
                   "store the vector; int8/int4 store per-row scaled codes + the exact bias, logits within a tested "
                   "bound (docs/benchmarks.md, 'Compact storage'); an existing index keeps its own")
    p.add_argument("--max-pixels", type=positive_int, metavar="PX",
                   help=f"skip images with more pixels (decompression-bomb guard; default {field_default(IndexConfig, 'max_pixels')})")
    p.add_argument("--crop-model", metavar="SPEC", help="also embed crops for the clip-crops pipeline with this "
                   "clip:/siglip: model, from the same decoded images (kept in sync on later runs)")
    p.add_argument("--crop-proposals", metavar="SRC", help="with --crop-model: crop boxes from 'owl' "
                   "(the index's boxes, top by objectness; the default) or 'yolo[:WEIGHTS.pt]' (extra [yolo])")
    p.add_argument("--max-crops", type=positive_int, metavar="N",
                   help=f"with --crop-model: crops per image (default {field_default(CropConfig, 'max_crops')})")
    p.add_argument("--json", action="store_true", help="print the run report as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--optimize",
        action="store_true",
        help="after indexing, (re)build the ANN index over all region vectors (retrains its partitions; "
        "use after large additions); searches re-score ANN candidates exactly",
    )
    p.add_argument(
        "--ann-min-rows",
        type=positive_int,
        metavar="N",
        help=f"build the ANN index automatically once the index holds N regions (default {field_default(IndexConfig, 'ann_min_rows')})",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="decode + encode on a Ray cluster (extra [ray]): ADDRESS of the cluster ('auto', "
        "'ray://head:10001'), or no value for a local one; images must be readable at the same path on every node",
    )
    p.add_argument("--ray-workers", type=positive_int, metavar="N", dest="num_workers",
                   help=f"with --ray: actors, one model each (default {param_default(index_with_ray, 'num_workers')})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resedis.index import build_index
    from resedis.index.fs import as_location, storage_options_from_pairs

    storage_options = storage_options_from_pairs(args.storage_option)

    config = IndexConfig(**given(args, "model", "batch_size", "max_regions", "nms_iou", "device", "prune", "retry_skipped",
                                 "vector_dtype", "follow_symlinks", "max_pixels", "ann_min_rows"))
    if args.crop_model:
        config.crops = CropConfig(model=args.crop_model, **given(args, "max_crops"),
                                  **({"proposals": args.crop_proposals} if args.crop_proposals is not None else {}))
    if args.ray is not None:
        address = None if args.ray == "local" else args.ray
        report = index_with_ray(args.images_dir, args.db, config, address=address, progress=not args.quiet,
                                storage_options=storage_options, **given(args, "num_workers"))
    else:
        report = build_index(args.images_dir, args.db, config=config, progress=not args.quiet, storage_options=storage_options)
    if args.optimize:
        from resedis.index import open_index
        from resedis.index.ann import AnnConfig
        from resedis.index.commit import Lock

        location = as_location(report.db, storage_options)
        with Lock(location):  # one writer at a time, as for indexing
            built = open_index(location).rebuild_ann(AnnConfig(min_rows=config.ann_min_rows))
        if built is not None and not args.json:
            print(f"ANN index: {built.index_type} ({built.metric}) over {built.rows} regions in {built.seconds:.1f} s", file=sys.stderr)
    if as_location(report.db, storage_options).is_local:
        from resedis.search_oneoff import refresh_sidecar

        refresh_sidecar(report.db)  # so the next one-off `resedis search` reads no LanceDB
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(f"{report.db}: {report.summary()}")
        if report.skipped and not args.report:
            print(f"{len(report.skipped)} file(s) skipped; list them with --report or `resedis stats --db {args.db}`", file=sys.stderr)
    if args.report and not args.json:
        for s in report.skipped:
            print(f"skipped: {s.source}: {s.reason}")
    return 0
