"""``resedis bench``: indexing throughput, query cost vs corpus size, ANN recall, naive vs index."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from resedis.bench import DEFAULT_REPORT, BenchPlan, full_plan
from resedis.bench.http import run_http_bench
from resedis.cli.options import field_default, param_default, positive_int
from resedis.errors import ResedisError
from resedis.index.manifest import MANIFEST_NAME


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure indexing throughput, query latency/recall vs corpus size, and index vs naive detection",
        description=(
            "Run the benchmark on this machine and write every figure of one run to a JSON report "
            "(and a short table to stdout): dense matmul GFLOP/s; region-encoder throughput at real "
            "sizes (random weights) and its share of the matmul FLOP/s; exact vs ANN search latency, "
            "recall and bytes per region on synthetic corpora; the index against running the detector "
            "on every image; peak RSS of indexing and search. No download is needed."
        ),
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="the short mode (about two minutes on a quiet 2-core machine): 10k/100k rows, one image for the big models",
    )
    p.add_argument("--out", metavar="FILE", help=f"JSON report path (default: {DEFAULT_REPORT})")
    p.add_argument(
        "--max-rows",
        type=positive_int,
        metavar="N",
        help="full mode: largest synthetic corpus in region rows, from 10k/100k/1M/10M "
        f"(default {param_default(full_plan, 'max_rows')})",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="T",
        help=f"torch CPU threads for every measurement, matmul included (default {field_default(BenchPlan, 'threads')}; "
        "0 = torch's default). "
        "On a shared machine one thread avoids stalls when other processes hold the cores",
    )
    p.add_argument("--workdir", metavar="DIR", help="keep scratch data here (default: a temporary directory, removed)")
    p.add_argument(
        "--startup-only",
        action="store_true",
        help="run only the one-off search startup step: `resedis search` (new and repeated query) timed as a "
        "ratio to `python -c \"import torch\"`",
    )
    p.add_argument("--startup-db", metavar="DB", help="with --startup-only: time searches of a copy of this local "
                   "index (default: a demo-model index of 200 synthetic images built in the workdir)")
    p.add_argument("--http-db", metavar="DB", help="run only the HTTP step: serve this local index with `resedis "
                   "serve` and measure /api/search latency for one client, then for --http-clients concurrent "
                   "clients (distinct grammar queries, so the result cache never answers)")
    p.add_argument("--http-clients", type=positive_int, metavar="N",
                   help=f"with --http-db: concurrent clients (default {param_default(run_http_bench, 'clients')})")
    p.add_argument("--http-requests", type=positive_int, metavar="N", help="with --http-db: requests per client, "
                   f"sent back to back (default {param_default(run_http_bench, 'requests')})")
    p.add_argument(
        "--index-memory",
        type=sizes_list,
        metavar="N,N,...",
        help="measure only the peak RSS of indexing N tiny (1x1) images from scratch, each size in its own "
        "process (e.g. 5000,15000,50000): does indexing memory stay bounded as the corpus grows?",
    )
    p.set_defaults(func=run)


def sizes_list(text: str) -> list[int]:
    """``5000,15000`` -> [5000, 15000] (each >= 1)."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated image counts, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"image counts must be >= 1, got {text!r}")
    return sizes


def run(args: argparse.Namespace) -> int:
    from resedis.bench import quick_plan, run_bench, run_startup_bench

    if args.startup_db and not args.startup_only:
        raise ResedisError("--startup-db applies with --startup-only")
    if args.startup_only:
        out = Path(args.out or DEFAULT_REPORT)
        if out.exists() and out.is_dir():
            raise ResedisError(f"--out {out}: is a directory; give a file path")
        run_startup_bench(out, db=args.startup_db, workdir=args.workdir)
        print(f"wrote {out}")
        return 0

    if args.http_db is not None:
        from resedis.bench.http import grammar_texts, http_line

        out = Path(args.out or DEFAULT_REPORT)
        if out.exists() and out.is_dir():
            raise ResedisError(f"--out {out}: is a directory; give a file path")
        if not (Path(args.http_db) / MANIFEST_NAME).is_file():
            raise ResedisError(f"--http-db {args.http_db}: not an index (no {MANIFEST_NAME}); build one with `resedis index`")
        clients = args.http_clients or param_default(run_http_bench, "clients")
        requests = args.http_requests or param_default(run_http_bench, "requests")
        report = run_http_bench(args.http_db, grammar_texts(requests * (clients + 1) + 1)[1:],
                                clients=clients, requests=requests)
        out.write_text(json.dumps({"http": report}, indent=2) + "\n")
        print(http_line(report))
        print(f"wrote {out}")
        return 0
    if args.index_memory is not None:
        from resedis.bench.memory import run_index_memory

        out = Path(args.out or DEFAULT_REPORT)
        report = run_index_memory(args.index_memory, out, workdir=args.workdir)
        for r in report["runs"]:
            print(f"{r['images']:>8} images: peak RSS {r['peak_rss_mb']:.0f} MiB, {r['disk_mb']:.1f} MB on disk, {r['seconds']:.0f} s")
        print(f"growth (peak at {report['runs'][-1]['images']} / at {report['runs'][0]['images']}): {report['growth']:.3f}")
        print(f"wrote {out}")
        return 0
    if args.threads is not None and args.threads < 0:
        raise ResedisError(f"--threads must be >= 0, got {args.threads}")
    if args.quick and args.max_rows is not None:
        raise ResedisError("--max-rows applies to the full mode; --quick always uses 10k and 100k rows")
    plan = quick_plan() if args.quick else full_plan(*([args.max_rows] if args.max_rows is not None else []))
    if not plan.query.sizes:
        raise ResedisError(f"--max-rows {args.max_rows} is below the smallest corpus size (10000)")
    if args.threads is not None:
        plan.threads = args.threads or None
    out = Path(args.out or DEFAULT_REPORT)
    if out.exists() and out.is_dir():
        raise ResedisError(f"--out {out}: is a directory; give a file path")
    run_bench(quick=args.quick, out=out, plan=plan, workdir=args.workdir)
    print(f"wrote {out}")
    return 0
