"""``resedis bench``: indexing throughput, query cost vs corpus size, ANN recall, naive vs index."""

from __future__ import annotations

import argparse
from pathlib import Path

from resedis.bench import DEFAULT_REPORT, BenchPlan, full_plan
from resedis.cli.options import field_default, param_default, positive_int
from resedis.errors import ResedisError


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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resedis.bench import quick_plan, run_bench

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
