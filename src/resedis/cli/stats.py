"""``resedis stats``: what an index holds."""

from __future__ import annotations

import argparse
import json

from resedis.cli._args import STORAGE_OPTION_HELP, storage_option


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "stats",
        help="show what an index holds (images, regions, skipped files, model, size)",
        description="Print the contents of an index: counts, model, schema version, size on disk and skipped files.",
    )
    p.add_argument("--db", required=True, metavar="DB", help="index directory built by `resedis index`, or its s3:// / gs:// / az:// URI")
    p.add_argument("--storage-option", type=storage_option, action="append", default=[], metavar="KEY=VALUE",
                   help=STORAGE_OPTION_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object (keys: images, regions, skipped, model, ...)")
    p.set_defaults(func=run)


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def run(args: argparse.Namespace) -> int:
    from resedis.index import open_index
    from resedis.index.fs import storage_options_from_pairs
    from resedis.thresholds import index_threshold

    index = open_index(args.db, storage_options=storage_options_from_pairs(args.storage_option))
    stats = index.stats()
    skipped = index.skipped()
    if args.json:
        stats["skipped_files"] = [{"path": s.source, "reason": s.reason} for s in skipped]
        stats["calibration"] = index.manifest.calibration
        stats.update(index_threshold(index.manifest).to_json())
        print(json.dumps(stats, indent=2))
        return 0
    print(f"index          {index.path}")
    print(f"images root    {stats['root']}")
    print(f"model          {stats['model']}")
    print(f"schema         {stats['schema_version']}")
    print(f"images         {stats['images']}")
    print(f"regions        {stats['regions']} ({stats['vector_dim']}-d {stats['vector_dtype']} vectors)")
    if stats["orphan_regions"]:
        print(f"orphans        {stats['orphan_regions']} regions of an interrupted batch (removed by the next `resedis index`)")
    print(f"on disk        {_human_bytes(stats['bytes'])}")
    print(f"threshold      {index_threshold(index.manifest).describe()}")
    print(f"updated        {stats['updated']}")
    print(f"skipped        {stats['skipped']}")
    for s in skipped:
        print(f"  {s.source}: {s.reason}")
    return 0
