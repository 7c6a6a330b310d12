"""The records a parse produces: :class:`ParsedQuery` and its parts (frozen dataclasses,
each with ``to_json()``). Built by :func:`resedis.expressions.parser.parse`."""

from __future__ import annotations

from dataclasses import dataclass

from resedis.expressions.grammar import COLOR_WORDS, SIZE_WORDS


@dataclass(frozen=True)
class Phrase:
    """A noun phrase: ``text`` as written (determiner included), its ``head`` noun, the
    ``attributes`` before the head (in order) and the ``modifier`` words after it."""

    text: str
    head: str
    attributes: tuple[str, ...] = ()
    determiner: str | None = None
    modifier: str = ""

    @property
    def colors(self) -> tuple[str, ...]:
        return tuple(a for a in self.attributes if a in COLOR_WORDS)

    @property
    def sizes(self) -> tuple[str, ...]:
        return tuple(a for a in self.attributes if a in SIZE_WORDS)

    def to_json(self) -> dict:
        return {"text": self.text, "head": self.head, "attributes": list(self.attributes),
                "determiner": self.determiner, "modifier": self.modifier}


@dataclass(frozen=True)
class Position:
    """An absolute position cue (``kind`` in ``POSITION_KINDS``); ``words`` as written."""

    kind: str
    words: str
    negated: bool = False

    def to_json(self) -> dict:
        return {"kind": self.kind, "words": self.words, "negated": self.negated}


@dataclass(frozen=True)
class Superlative:
    """A size superlative or comparative (``kind`` in ``SUPERLATIVE_KINDS``)."""

    kind: str
    words: str
    comparative: bool = False
    negated: bool = False

    def to_json(self) -> dict:
        return {"kind": self.kind, "words": self.words, "comparative": self.comparative, "negated": self.negated}


@dataclass(frozen=True)
class Relation:
    """A relation to one anchor (two for ``between``), each a parsed phrase."""

    kind: str
    words: str
    anchors: tuple[ParsedQuery, ...]
    negated: bool = False

    @property
    def anchor(self) -> ParsedQuery:
        return self.anchors[0]

    def to_json(self) -> dict:
        return {"kind": self.kind, "words": self.words, "negated": self.negated,
                "anchors": [a.to_json() for a in self.anchors]}


@dataclass(frozen=True)
class Negation:
    """An excluded phrase ("without a hat" -> ``phrase.text == "a hat"``)."""

    phrase: Phrase
    words: str

    def to_json(self) -> dict:
        return {"words": self.words, "phrase": self.phrase.to_json()}


@dataclass(frozen=True)
class ParsedQuery:
    """The parse of one expression (see the module docstring)."""

    text: str
    subject: Phrase
    positions: tuple[Position, ...] = ()
    superlatives: tuple[Superlative, ...] = ()
    relations: tuple[Relation, ...] = ()
    negations: tuple[Negation, ...] = ()
    fallback: bool = False

    @property
    def has_cues(self) -> bool:
        return bool(self.positions or self.superlatives or self.relations or self.negations)

    def phrases(self) -> list[str]:
        """Every phrase text a text encoder must score for this query, once each: the
        subject, every anchor (recursively) and every excluded phrase."""
        out = [self.subject.text]
        for rel in self.relations:
            for anchor in rel.anchors:
                out += anchor.phrases()
        out += [n.phrase.text for n in self.negations]
        return list(dict.fromkeys(out))

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "subject": self.subject.to_json(),
            "positions": [p.to_json() for p in self.positions],
            "superlatives": [s.to_json() for s in self.superlatives],
            "relations": [r.to_json() for r in self.relations],
            "negations": [n.to_json() for n in self.negations],
            "fallback": self.fallback,
        }
