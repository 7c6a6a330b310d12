"""``resedis parse``: show how an expression is parsed (subject, positions, relations, negation)."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "parse",
        help="show the parse of a referring expression (subject, positions, superlatives, relations, negation)",
        description="Parse a referring expression with the query parser (resedis.expressions) and print the "
        "subject phrase, its absolute positions, size superlatives, relations with their anchor phrases and "
        "negated phrases, as a tree or as JSON.",
    )
    p.add_argument("expression", metavar="EXPRESSION", help='the expression, e.g. "the dog left of the red car"')
    p.add_argument("--json", action="store_true", help="print one JSON object (subject, positions, superlatives, "
                   "relations with parsed anchors, negations, fallback)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resedis.expressions import parse
    from resedis.expressions.tree import format_tree

    parsed = parse(args.expression)
    print(json.dumps(parsed.to_json(), indent=2) if args.json else format_tree(parsed))
    return 0
