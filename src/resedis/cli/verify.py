"""``resedis verify``: check an index for damage (like ``git fsck``)."""

from __future__ import annotations

import argparse
import json

from resedis.errors import EXIT_DAMAGED
from resedis.cli.options import STORAGE_OPTION_HELP, storage_option



def register(subparsers) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check an index for damage: missing or broken data files, bad rows, checksums, manifest",
        description=(
            "Check an index the way git fsck checks a repository: missing or unreadable data files, rows "
            "that fail to decode, non-finite vectors or boxes, boxes outside their image, image/region "
            "count mismatches and orphans, manifest fields of the wrong type or range, and per-image "
            "checksums of the stored rows (bit rot). Each problem is printed with its fix. Exit status: "
            f"0 sound (warnings allowed), {EXIT_DAMAGED} damaged (then run: resedis repair --db DB)."
        ),
    )
    p.add_argument("--db", required=True, metavar="DB", help="index directory built by `resedis index`, or its URI")
    p.add_argument("--deep", action="store_true",
                   help="also hash every indexed source file and compare it with the stored sha256 (reads every image)")
    p.add_argument("--json", action="store_true", help="print one JSON object (ok, errors, warnings, counts, problems)")
    p.add_argument("--storage-option", type=storage_option, action="append", default=[], metavar="KEY=VALUE",
                   help=STORAGE_OPTION_HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resedis.index.fs import storage_options_from_pairs
    from resedis.index.verify import verify_index

    report = verify_index(args.db, deep=args.deep, storage_options=storage_options_from_pairs(args.storage_option))
    if args.json:
        print(json.dumps(report.to_json(), indent=2, allow_nan=False))
    else:
        print(report.text())
    return 0 if report.ok else EXIT_DAMAGED
