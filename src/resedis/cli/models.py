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
    p.add_argument(
        "--bench",
        metavar="FILE",
        help="a `resedis bench` JSON report whose measured indexing rates (images/s) to show beside each "
        "family's GFLOP per image (default: ./bench.json when it exists)",
    )
    p.set_defaults(func=run)


def load_rates(path: str | None) -> tuple[dict, str | None]:
    """(family -> measured rate, the report used) from ``path`` or ./bench.json; ({}, None) when none."""
    from pathlib import Path

    from resedis.bench.indexing import measured_rates
    from resedis.errors import ResedisError

    file = Path(path) if path else Path("bench.json")
    if not file.is_file():
        if path:
            raise ResedisError(f"--bench {path}: no such file; write one with: resedis bench --quick --out {path}")
        return {}, None
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResedisError(f"--bench {file}: not a readable JSON bench report ({exc})") from None
    if not isinstance(report, dict) or not str(report.get("schema", "")).startswith("resedis-bench/"):
        raise ResedisError(f"{file}: not a `resedis bench` report (no resedis-bench schema)")
    return measured_rates(report), str(file)


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

    from resedis.models.cost import COST_FAMILIES, checkpoint_gflops, default_gflops

    entries = list_models()
    rates, rates_from = load_rates(args.bench)
    if args.json:
        for e in entries:
            record = {
                "family": e.name,
                "kind": e.kind,
                "default_source": e.default_source,
                "default_spec": f"{e.name}:{e.default_source}",
                "description": e.description,
                "default": f"{e.name}:{e.default_source}" == DEFAULT_MODEL,
                "gflops_per_image": None if default_gflops(e.name) is None else round(default_gflops(e.name), 1),
                "bench_images_per_s": rates.get(e.name, {}).get("images_per_s"),
                "bench_report": rates_from if e.name in rates else None,
            }
            print(json.dumps(record))
        kinds = {e.name: e.kind for e in entries}
        for name, target in list_aliases().items():
            family, source = target.split(":", 1)
            print(json.dumps({"family": family, "kind": kinds.get(family), "default_source": source,
                              "default_spec": name, "description": f"alias {name} = {target}",
                              "default": False, "alias": name, "spec": target}))
        return 0
    rows = [("FAMILY", "KIND", "DEFAULT SOURCE", "GFLOP/IMG", "IMG/S", "DESCRIPTION")]
    for e in entries:
        star = " *" if f"{e.name}:{e.default_source}" == DEFAULT_MODEL else ""
        gflops = default_gflops(e.name)
        rate = rates.get(e.name)
        rows.append((e.name + star, e.kind, e.default_source, "-" if gflops is None else f"{gflops:.1f}",
                     "-" if rate is None else f"{rate['images_per_s']:.3g}", e.description))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5])
    print(f"\n* default model ({DEFAULT_MODEL}). Spec: family:hub-id or family:/local/dir.", file=sys.stdout)
    print("GFLOP/IMG: compute to index one image with the family's default weights (multiply-add = 2). "
          + (f"IMG/S: indexing rate measured by resedis bench ({rates_from}, best batch, "
             f"{next(iter(rates.values()))['threads'] or 'default'} torch thread(s))." if rates else
             "IMG/S: run `resedis bench --quick` here (or pass --bench FILE) to show measured rates."))
    for name, target in list_aliases().items():
        family, source = target.split(":", 1)
        gflops = checkpoint_gflops(family, source) if family in COST_FAMILIES else None
        print(f"alias {name}: {target}" + (f" ({gflops:.2f} GFLOP/img)" if gflops is not None else ""))
    return 0
