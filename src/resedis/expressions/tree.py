"""A readable, indented tree of a :class:`~resedis.expressions.parser.ParsedQuery`.

>>> from resedis.expressions import parse
>>> print(format_tree(parse("the red circle left of the largest blue square")))
subject      the red circle  [head: circle; attributes: red]
relation     left_of  ("left of")
  subject    the blue square  [head: square; attributes: blue]
  superlative largest  ("largest")
"""

from __future__ import annotations

from resedis.expressions.query import ParsedQuery, Phrase


def _phrase(p: Phrase) -> str:
    parts = [f"head: {p.head}"]
    if p.attributes:
        parts.append("attributes: " + ", ".join(p.attributes))
    if p.modifier:
        parts.append(f"modifier: {p.modifier}")
    return f"{p.text}  [{'; '.join(parts)}]"


def _lines(q: ParsedQuery, depth: int) -> list[str]:
    pad = "  " * depth
    width = 12 - len(pad) if depth < 6 else 1

    def row(label: str, value: str) -> str:
        return f"{pad}{label.ljust(width)} {value}"

    out = [row("subject", _phrase(q.subject) + ("  (fallback: whole expression)" if q.fallback else ""))]
    for p in q.positions:
        out.append(row("position", f"{'NOT ' if p.negated else ''}{p.kind}  (\"{p.words}\")"))
    for s in q.superlatives:
        kind = "comparative" if s.comparative else "superlative"
        out.append(row(kind, f"{'NOT ' if s.negated else ''}{s.kind}  (\"{s.words}\")"))
    for r in q.relations:
        out.append(row("relation", f"{'NOT ' if r.negated else ''}{r.kind}  (\"{r.words}\")"))
        for anchor in r.anchors:
            out += _lines(anchor, depth + 1)
    for n in q.negations:
        out.append(row("not", f"{_phrase(n.phrase)}  (\"{n.words}\")"))
    return out


def format_tree(parsed: ParsedQuery) -> str:
    """The parse as indented lines: subject, cues, and each relation's anchor beneath it."""
    return "\n".join(_lines(parsed, 0))
