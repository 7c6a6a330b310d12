"""``resedis demo``: offline end-to-end run of the bundled model on a fresh synthetic corpus."""

from __future__ import annotations

import argparse

from resedis.cli import serve as serve_command
from resedis.cli.options import field_default, given
from resedis.demo import DEFAULT_OUT, MIN_IMAGES, DemoConfig
from resedis.server.config import ServeConfig


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
    p.add_argument("--out", metavar="DIR", help=f"output directory (default: ./{DEFAULT_OUT})")
    p.add_argument("--seed", type=int, help=f"corpus seed (default: {field_default(DemoConfig, 'seed')}; "
                   "training used 1000-1119, validation 101)")
    p.add_argument("--images", type=int, help=f"images in the corpus, >= {MIN_IMAGES} "
                   f"(default: {field_default(DemoConfig, 'images')})")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--serve", action="store_true",
                   help="then serve the index with `resedis serve` (web page + API; presence threshold = the demo model's)")
    p.add_argument("--host", help=f"address for --serve (default: {field_default(ServeConfig, 'host')}, this machine only)")
    p.add_argument("--port", type=int, help=f"port for --serve (default: {field_default(ServeConfig, 'port')})")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resedis.demo import run_demo
    from resedis.errors import ResedisError

    if args.images is not None and args.images < MIN_IMAGES:
        raise ResedisError(f"--images must be >= {MIN_IMAGES}, got {args.images}")
    serve = []
    if args.serve:  # fail before the minutes of indexing, not after
        if args.port is not None and not 1 <= args.port <= 65535:
            raise ResedisError(f"--port must be in [1, 65535], got {args.port}")
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ModuleNotFoundError as exc:
            from resedis.errors import MissingExtraError

            raise MissingExtraError(exc.name or "fastapi", "serve") from None
        serve = [x for name in ("host", "port") if getattr(args, name) is not None for x in (f"--{name}", str(getattr(args, name)))]
    config = DemoConfig(progress=not args.no_progress, **given(args, "seed", "images", "device"))
    result = run_demo(args.out or DEFAULT_OUT, config=config)
    for ex in result.examples:
        print(f"  “{ex['expression']}” ({ex['type']}): {ex['summary']}")
    print(f"times (s): {result.seconds}")
    m = result.by_type
    print(f"metrics on {config.images} images, seed {config.seed}, presence threshold {result.threshold:.3f} "
          f"({result.threshold_source}); each type row includes the absent queries:")
    for name in ("all", "attribute", "position", "relation"):
        row = m[name]
        n_acc = "n/a" if row["N_acc"] is None else f"{row['N_acc']:.3f}"
        print(f"  {name:10s} BR@1@0.5 {row['BR@1@0.5']:.3f}  IR@1 {row['IR@1']:.3f}  mAP50 {row['mAP50']:.3f}  "
              f"F1 {row['F1']:.3f}  N_acc {n_acc}")
    print(f"report: {result.report}\npage:   {result.page}")
    if args.serve:
        return _serve(["--db", str(result.db), *serve])
    return 0


def _serve(argv: list[str]) -> int:
    """``resedis serve ARGV`` (its own parser: the same options, checks and defaults)."""
    parser = argparse.ArgumentParser(prog="resedis")
    serve_command.register(parser.add_subparsers())
    args = parser.parse_args(["serve", *argv])
    return args.func(args)
