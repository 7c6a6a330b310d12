"""``resedis serve``: the HTTP API and web page over an index (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from resedis.cli._args import add_threads_option

API_KEY_ENV = "RESEDIS_API_KEY"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve the search API and web page over an index",
        description=(
            "Serve an index over HTTP: a web page at / (search box, hits with their boxes, "
            "threshold slider), a JSON API under /api (OpenAPI at /docs) and /healthz. "
            "Binds to loopback (127.0.0.1) by default. Needs the [serve] extra."
        ),
    )
    p.add_argument("--db", required=True, type=_local_db, help="index directory (built with `resedis index`; "
                   "a local directory only: serving an s3:// / gs:// / az:// index is not supported)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument(
        "--api-key",
        default=None,
        help=f"require this key in header X-API-Key on every /api route (at least 8 characters; "
        f"default: ${API_KEY_ENV} when set, else no key)",
    )
    p.add_argument(
        "--allow-index-root",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="enable POST /api/index for folders under DIR (repeatable; disabled when absent)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model spec for an index created via POST /api/index when --db does not exist yet",
    )
    p.add_argument(
        "--segmenter",
        default=None,
        help="model spec for masks=true (default: the pipelines' SAM default, sam:facebook/sam-vit-base)",
    )
    p.add_argument(
        "--grounder",
        default=None,
        help="grounding model spec for pipeline=owl+rerank (default: gdino:IDEA-Research/grounding-dino-tiny)",
    )
    p.add_argument("--device", default=None, help="device for the text encoder (cpu, cuda, cuda:1; default: auto)")
    add_threads_option(p)
    p.add_argument("--max-top-k", type=int, default=200, help="largest top_k a search may ask for (default: 200)")
    p.add_argument("--max-query-chars", type=int, default=500, help="longest query accepted (default: 500)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level (default: info)")
    p.set_defaults(func=run)


def _local_db(text: str) -> Path:
    from resedis.index.fs import is_uri

    if is_uri(text) and not text.lower().startswith("file://"):
        raise argparse.ArgumentTypeError(
            f"{text}: resedis serve reads a local index only, not an object-store URI; "
            "search it with `resedis search --db URI`, or serve a local copy"
        )
    return Path(text[len("file://"):]) if text.lower().startswith("file://") else Path(text)


def run(args: argparse.Namespace) -> int:
    from resedis.errors import ResedisError
    from resedis.server import ServeConfig, create_app
    from resedis.server.config import is_loopback

    if not 1 <= args.port <= 65535:
        raise ResedisError(f"--port must be in [1, 65535], got {args.port}")
    if args.max_top_k < 1:
        raise ResedisError(f"--max-top-k must be >= 1, got {args.max_top_k}")
    if args.max_query_chars < 1:
        raise ResedisError(f"--max-query-chars must be >= 1, got {args.max_query_chars}")
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if not args.allow_index_root and not (args.db / "resedis.json").exists():
        raise ResedisError(f"{args.db}: not a resedis index; build one with: resedis index IMAGES_DIR --db {args.db}")
    config = ServeConfig(
        db=args.db,
        host=args.host,
        port=args.port,
        api_key=api_key,
        allow_index_roots=args.allow_index_root,
        device=args.device,
        index_model=args.model,
        segmenter=args.segmenter,
        grounder=args.grounder,
        max_top_k=args.max_top_k,
        default_top_k=min(20, args.max_top_k),
        max_query_chars=args.max_query_chars,
        threads=args.threads,
    )
    app = create_app(config)  # applies config.threads process-wide before loading the models

    import uvicorn

    shown = f"[{args.host}]" if ":" in args.host else args.host
    if is_loopback(args.host):
        print(f"resedis: serving {args.db} on http://{shown}:{args.port}/ (loopback only: "
              "reachable from this machine; use --host 0.0.0.0 to expose it)", file=sys.stderr)
    else:
        print(f"resedis: serving {args.db} on http://{shown}:{args.port}/ — reachable from other machines", file=sys.stderr)
        if not api_key:
            print("resedis: WARNING: listening beyond loopback WITHOUT an API key: anyone who can reach "
                  "this port can search and read the indexed images. Pass --api-key (or set "
                  f"{API_KEY_ENV}).", file=sys.stderr)
    if api_key:
        print("resedis: /api routes require header X-API-Key", file=sys.stderr)
    if config.indexing_enabled:
        roots = ", ".join(str(r) for r in config.allow_index_roots)
        print(f"resedis: POST /api/index enabled for folders under: {roots}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.log_level == "debug")
    return 0
