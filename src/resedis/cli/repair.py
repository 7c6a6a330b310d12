"""``resedis repair``: fix what ``resedis verify`` finds."""

from __future__ import annotations

import argparse
import json

from resedis.errors import EXIT_DAMAGED


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "repair",
        help="repair a damaged index: re-encode damaged images, rebuild lost tables and the manifest",
        description=(
            "Repair the index at DB so that `resedis verify` passes: the manifest is rebuilt from the tables "
            "(pass --model when it no longer names the model), tables with undecodable rows are rewritten from "
            "the rows that decode, damaged or lost images are re-encoded from their source files, images whose "
            "source file is gone are dropped (recorded in DB/repairs.jsonl), and old versions are removed. "
            f"Exit status: 0 repaired, {EXIT_DAMAGED} still damaged."
        ),
    )
    p.add_argument("--db", required=True, metavar="DB", help="local index directory")
    p.add_argument("--model", metavar="SPEC", help="the model the index was built with (needed only when the manifest is lost)")
    p.add_argument("--root", metavar="IMAGES_DIR", help="the indexed folder (needed only when neither the manifest nor the tables say it)")
    p.add_argument("--device", help="device for re-encoding (e.g. cpu, cuda)")
    p.add_argument("--deep", action="store_true", help="also re-encode images whose source file changed content (hashes every file)")
    p.add_argument("--json", action="store_true", help="print one JSON object (what was found, done, and verified after)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resedis.index.repair import repair_index

    report = repair_index(args.db, model=args.model, root=args.root, device=args.device, deep=args.deep,
                          progress=not args.quiet)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, allow_nan=False))
    else:
        print(report.text())
    return 0 if report.ok else EXIT_DAMAGED
