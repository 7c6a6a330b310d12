"""``resedis models``: list the supported model families (and, optionally, find weights)."""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="list supported model families and their default weights",
        description=(
            "List the model families resedis can load, with their kind, default weights source and a "
            "one-line description. A model is named by a spec 'family:source', where source is a "
            "Hugging Face hub id or a local directory, e.g. owlv2:google/owlv2-base-patch16-ensemble "
            "or owlv2:/path/to/dir; a bare family uses its default source. Weights are looked up in the "
            "local directory, then the Hugging Face cache (HF_HOME), then downloaded unless HF_HUB_OFFLINE=1."
        ),
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per family instead of a table")
    p.add_argument(
        "--where",
        metavar="SPEC",
        help="resolve SPEC's weights offline-first and print the directory they are in (error if not found)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from resedis.models import (
        DEFAULT_MODEL,
        list_aliases,
        list_models,
        parse_spec,
        resolve_weights,
    )

    if args.where:
        spec = parse_spec(args.where)
        path = resolve_weights(spec)
        if args.json:
            print(json.dumps({"spec": str(spec), "path": str(path)}))
        else:
            print(f"{spec}\t{path}")
        return 0

    entries = list_models()
    if args.json:
        for e in entries:
            record = {
                "family": e.name,
                "kind": e.kind,
                "default_source": e.default_source,
                "default_spec": f"{e.name}:{e.default_source}",
                "description": e.description,
                "default": f"{e.name}:{e.default_source}" == DEFAULT_MODEL,
            }
            print(json.dumps(record))
        kinds = {e.name: e.kind for e in entries}
        for name, target in list_aliases().items():
            family, source = target.split(":", 1)
            print(json.dumps({"family": family, "kind": kinds.get(family), "default_source": source,
                              "default_spec": name, "description": f"alias {name} = {target}",
                              "default": False, "alias": name, "spec": target}))
        return 0
    rows = [("FAMILY", "KIND", "DEFAULT SOURCE", "DESCRIPTION")]
    for e in entries:
        star = " *" if f"{e.name}:{e.default_source}" == DEFAULT_MODEL else ""
        rows.append((e.name + star, e.kind, e.default_source, e.description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
    print(f"\n* default model ({DEFAULT_MODEL}). Spec: family:hub-id or family:/local/dir.", file=sys.stdout)
    for name, target in list_aliases().items():
        print(f"alias {name}: {target}")
    return 0
