"""``resedis serve``: the HTTP API and web page over an index (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from resedis.cli.options import add_threads_option, field_default, given
from resedis.index.manifest import MANIFEST_NAME
from resedis.pipelines import PipelineConfig
from resedis.server.config import LOG_LEVELS, ServeConfig

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
    p.add_argument("--host", help=f"address to bind (default: {field_default(ServeConfig, 'host')}, loopback only)")
    p.add_argument("--port", type=int, help=f"TCP port (default: {field_default(ServeConfig, 'port')})")
    p.add_argument(
        "--api-key",
        help=f"require this key in header X-API-Key on every /api route (at least 8 characters; "
        f"default: ${API_KEY_ENV} when set, else no key)",
    )
    p.add_argument(
        "--allow-index-root",
        action="append",
        dest="allow_index_roots",
        type=Path,
        metavar="DIR",
        help="enable POST /api/index for folders under DIR (repeatable; disabled when absent)",
    )
    p.add_argument(
        "--model",
        dest="index_model",
        help="model spec for an index created via POST /api/index when --db does not exist yet",
    )
    p.add_argument(
        "--segmenter",
        help=f"model spec for masks=true (default: {field_default(PipelineConfig, 'segmenter')})",
    )
    p.add_argument(
        "--grounder",
        help=f"grounding model spec for pipeline=owl+rerank (default: {field_default(PipelineConfig, 'grounder')})",
    )
    p.add_argument("--device", help="device for the text encoder (cpu, cuda, cuda:1; default: auto)")
    add_threads_option(p)
    p.add_argument("--max-top-k", type=int,
                   help=f"largest top_k a search may ask for (default: {field_default(ServeConfig, 'max_top_k')})")
    p.add_argument("--max-query-chars", type=int,
                   help=f"longest query accepted (default: {field_default(ServeConfig, 'max_query_chars')})")
    p.add_argument("--log-level", choices=LOG_LEVELS,
                   help=f"uvicorn log level (default: {field_default(ServeConfig, 'log_level')})")
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
    from resedis.server import create_app
    from resedis.server.config import is_loopback

    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    options = ("host", "port", "allow_index_roots", "device", "index_model", "segmenter", "grounder", "max_top_k",
               "max_query_chars", "threads", "log_level")
    config = ServeConfig(db=args.db, api_key=api_key, **given(args, *options))  # checks the values
    if not config.indexing_enabled and not (args.db / MANIFEST_NAME).exists():
        raise ResedisError(f"{args.db}: not a resedis index; build one with: resedis index IMAGES_DIR --db {args.db}")
    app = create_app(config)  # applies config.threads process-wide before loading the models

    import uvicorn

    host, port = config.host, config.port
    shown = f"[{host}]" if ":" in host else host
    if is_loopback(host):
        print(f"resedis: serving {args.db} on http://{shown}:{port}/ (loopback only: "
              "reachable from this machine; use --host 0.0.0.0 to expose it)", file=sys.stderr)
    else:
        print(f"resedis: serving {args.db} on http://{shown}:{port}/ — reachable from other machines", file=sys.stderr)
        if not api_key:
            print("resedis: WARNING: listening beyond loopback WITHOUT an API key: anyone who can reach "
                  "this port can search and read the indexed images. Pass --api-key (or set "
                  f"{API_KEY_ENV}).", file=sys.stderr)
    if api_key:
        print("resedis: /api routes require header X-API-Key", file=sys.stderr)
    if config.indexing_enabled:
        roots = ", ".join(str(r) for r in config.allow_index_roots)
        print(f"resedis: POST /api/index enabled for folders under: {roots}", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level=config.log_level, access_log=config.log_level == "debug")
    return 0
