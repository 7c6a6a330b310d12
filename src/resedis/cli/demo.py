"""``resedis demo``: offline end-to-end run of the bundled model on a fresh synthetic corpus."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="offline demo: synthetic corpus -> index with the bundled model -> search -> HTML page",
        description=(
            "Render a fresh synthetic corpus (a seed never used in training), index it with the bundled "
            "from-scratch OWLv2 demo model, run every query, and write OUT/index.html (example queries of "
            "each type with their hits drawn over the images, and the metrics) plus OUT/report.html. "
            "With --serve, start the web service on the index instead of stopping there."
        ),
    )
    p.add_argument("--out", default="resedis-demo", metavar="DIR", help="output directory (default: ./resedis-demo)")
    p.add_argument("--seed", type=int, default=2024, help="corpus seed (default: 2024; training used 1000-1119, validation 101)")
    p.add_argument("--images", type=int, default=200, help="images in the corpus (default: 200)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--serve", action="store_true",
                   help="then serve the index with `resedis serve` (web page + API; presence threshold = the demo model's)")
    p.add_argument("--host", default="127.0.0.1", help="address for --serve (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port for --serve (default: 8000)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resedis.demo import DemoConfig, run_demo
    from resedis.errors import ResedisError

    if args.images < 10:
        raise ResedisError(f"--images must be >= 10, got {args.images}")
    if args.serve:  # fail before the minutes of indexing, not after
        if not 1 <= args.port <= 65535:
            raise ResedisError(f"--port must be in [1, 65535], got {args.port}")
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ModuleNotFoundError as exc:
            from resedis.errors import MissingExtraError

            raise MissingExtraError(exc.name or "fastapi", "serve") from None
    queries = max(10, round(0.75 * args.images))
    config = DemoConfig(seed=args.seed, images=args.images, queries=queries, absent=max(2, queries // 8),
                        device=args.device, progress=not args.no_progress)
    result = run_demo(args.out, config=config)
    for ex in result.examples:
        print(f"  “{ex['expression']}” ({ex['type']}): {ex['summary']}")
    print(f"times (s): {result.seconds}")
    m = result.by_type
    print(f"metrics on {args.images} images, seed {args.seed}, presence threshold {result.threshold:.3f} "
          f"({result.threshold_source}); each type row includes the absent queries:")
    for name in ("all", "attribute", "position", "relation"):
        row = m[name]
        n_acc = "n/a" if row["N_acc"] is None else f"{row['N_acc']:.3f}"
        print(f"  {name:10s} BR@1@0.5 {row['BR@1@0.5']:.3f}  IR@1 {row['IR@1']:.3f}  mAP50 {row['mAP50']:.3f}  "
              f"F1 {row['F1']:.3f}  N_acc {n_acc}")
    print(f"report: {result.report}\npage:   {result.page}")
    if args.serve:
        from resedis.cli import main as cli_main

        return cli_main(["serve", "--db", str(result.db), "--host", args.host, "--port", str(args.port)])
    return 0
