"""The ``resedis`` command line: a thin shell over the library.

Each subcommand lives in its own module ``resedis.cli.<name>`` exposing
``register(subparsers)``, which adds the parser and sets ``func`` (called with the
parsed args, returns an exit code). Options default to None (unset): a command passes
only what the user gave, so every default lives once, in the library (help texts read
it from there). Imports of torch-heavy modules happen inside ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from resedis.errors import FormatError, ResedisError

# Order is the order shown in --help. A module missing here is simply not offered.
COMMANDS = [
    "synth",
    "baseline",
    "eval",
    "models",
    "index",
    "search",
    "parse",
    "stats",
    "calibrate",
    "pipelines",
    "serve",
    "bench",
    "finetune",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    from resedis.version import __version__

    parser = argparse.ArgumentParser(
        prog="resedis",
        description="Referring search and discovery: find every image that contains a described object.",
    )
    parser.add_argument("--version", action="version", version=f"resedis {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"resedis.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"resedis.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ResedisError, FormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `resedis ... | head`: the reader left; stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the exit-time flush does not complain
        return 141
    except OSError as exc:  # unwritable output, a file where a folder is needed, disk full...
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
