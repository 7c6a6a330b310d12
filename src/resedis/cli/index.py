"""``resedis index``: build or update a region index from a folder of images."""

from __future__ import annotations

import argparse
import json
import sys

from resedis.cli._args import STORAGE_OPTION_HELP, float_in, positive_int, storage_option
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
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="B", help="images per encoder batch and per commit (default 8)")
    p.add_argument("--max-regions", type=positive_int, metavar="N", help="boxes kept per image, by objectness after NMS (default: the index's setting; 100 for a new index)")
    p.add_argument("--nms-iou", type=NMS_IOU, metavar="F", help="IoU above which a lower-objectness box is dropped (default: the index's setting; 0.5 for a new index; 1 = no NMS)")
    p.add_argument("--device", metavar="DEVICE", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--prune", action="store_true", help="remove entries of files no longer present in IMAGES_DIR")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="also index symlinked files and folders whose target lies outside IMAGES_DIR (default: record "
                   "them as skipped; symlinks inside it are always indexed, each file once). Each run applies its own "
                   "choice: a later run without it turns such images back into skips")
    p.add_argument("--report", action="store_true", help="print every skipped file with its reason")
    p.add_argument("--storage", "--vector-dtype", dest="vector_dtype", choices=STORAGE_FORMATS,
                   help=f"storage format of region vectors for a new index (default {DEFAULT_STORAGE}): float16/float32 "
                   "store the vector; int8/int4 store per-row scaled codes + the exact bias, logits within a tested "
                   "bound (docs/benchmarks.md, 'Compact storage'); an existing index keeps its own")
    p.add_argument("--max-pixels", type=positive_int, metavar="PX", help="skip images with more pixels (decompression-bomb guard; default 89478485)")
    p.add_argument("--crop-model", metavar="SPEC", help="also embed crops for the clip-crops pipeline with this "
                   "clip:/siglip: model, from the same decoded images (kept in sync on later runs)")
    p.add_argument("--crop-proposals", default="owl", metavar="SRC", help="with --crop-model: crop boxes from 'owl' "
                   "(the index's boxes, top by objectness; default) or 'yolo[:WEIGHTS.pt]' (extra [yolo])")
    p.add_argument("--max-crops", type=positive_int, default=20, metavar="N", help="with --crop-model: crops per image (default 20)")
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
        help="build the ANN index automatically once the index holds N regions (default 200000)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="decode + encode on a Ray cluster (extra [ray]): ADDRESS of the cluster ('auto', "
        "'ray://head:10001'), or no value for a local one; images must be readable at the same path on every node",
    )
    p.add_argument("--ray-workers", type=positive_int, default=2, metavar="N", help="with --ray: actors, one model each (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resedis.index import IndexConfig, build_index
    from resedis.index.fs import storage_options_from_pairs

    storage_options = storage_options_from_pairs(args.storage_option)

    config = IndexConfig(
        model=args.model,
        batch_size=args.batch_size,
        max_regions=args.max_regions,
        nms_iou=args.nms_iou,
        device=args.device,
        prune=args.prune,
        vector_dtype=args.vector_dtype,
        follow_symlinks=args.follow_symlinks,
    )
    if args.max_pixels is not None:
        config.max_pixels = args.max_pixels
    if args.crop_model:
        from resedis.pipelines.crops import CropConfig

        config.crops = CropConfig(model=args.crop_model, proposals=args.crop_proposals, max_crops=args.max_crops)
    if args.ann_min_rows is not None:
        config.ann_min_rows = args.ann_min_rows
    if args.ray is not None:
        from resedis.distributed import index_with_ray

        address = None if args.ray == "local" else args.ray
        report = index_with_ray(args.images_dir, args.db, config, address=address, num_workers=args.ray_workers,
                                progress=not args.quiet, storage_options=storage_options)
    else:
        report = build_index(args.images_dir, args.db, config=config, progress=not args.quiet, storage_options=storage_options)
    if args.optimize:
        from resedis.index import open_index
        from resedis.index.ann import AnnConfig, optimize_ann
        from resedis.index.commit import Lock
        from resedis.index.fs import as_location

        location = as_location(report.db, storage_options)
        with Lock(location):  # one writer at a time, as for indexing
            built = optimize_ann(open_index(location).regions_table, AnnConfig(min_rows=config.ann_min_rows), rebuild=True)
        if built is not None and not args.json:
            print(f"ANN index: {built.index_type} ({built.metric}) over {built.rows} regions in {built.seconds:.1f} s", file=sys.stderr)
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
