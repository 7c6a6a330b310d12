"""``resedis stats``: what an index holds."""

from __future__ import annotations

import argparse
import json

from resedis.cli.options import STORAGE_OPTION_HELP, storage_option


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


def _weights_line(manifest) -> tuple[str, str | None]:
    """-> (the ``weights`` line, the fingerprint of the weights the model spec resolves to
    now or None when they are not found here). Never downloads."""
    from resedis.errors import ResedisError
    from resedis.models.fingerprint import fingerprint_matches, short_fingerprint, spec_weights_dir, weights_fingerprint

    stored = manifest.weights_fingerprint
    try:
        where = spec_weights_dir(manifest.model, allow_download=False)
        current = weights_fingerprint(where)
    except ResedisError:
        return f"{stored or 'unknown'} (the model's weights are not found here)", None
    if stored is None:
        return f"unknown (index built before fingerprints were recorded; weights at {where} are {short_fingerprint(current)})", current
    if fingerprint_matches(stored, where)[0]:  # a v1 (weights only) or v2 (+ processor) fingerprint
        return f"{stored} (matches the weights at {where})", current
    return (f"{stored} (the weights at {where} are now {short_fingerprint(current)}: "
            "search refuses this index; rebuild it into a new --db)"), current


def _crops_entry(manifest) -> dict | None:
    """The manifest's clip-crops entry (crop model spec, its weights fingerprint, ...), if any."""
    entry = (manifest.extra or {}).get("crops")
    return entry if isinstance(entry, dict) else None


def run(args: argparse.Namespace) -> int:
    from resedis.index import open_index
    from resedis.index.fs import storage_options_from_pairs
    from resedis.thresholds import index_threshold

    index = open_index(args.db, storage_options=storage_options_from_pairs(args.storage_option))
    stats = index.stats()
    skipped = index.skipped()
    weights_line, stats["weights_fingerprint_current"] = _weights_line(index.manifest)
    if args.json:
        stats["skipped_files"] = [{"path": s.source, "reason": s.reason} for s in skipped]
        stats["calibration"] = index.manifest.calibration
        stats["crops"] = _crops_entry(index.manifest)
        stats.update(index_threshold(index.manifest).to_json())
        print(json.dumps(stats, indent=2))
        return 0
    print(f"index          {index.path}")
    print(f"images root    {stats['root']}")
    print(f"model          {stats['model']}")
    print(f"weights        {weights_line}")
    crops = _crops_entry(index.manifest)
    if crops:
        print(f"crop model     {crops.get('model')} (weights {crops.get('weights_fingerprint') or 'unknown'})")
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
