"""Referring expressions beyond a phrase: a parser (subject, positions, superlatives,
relations, negation) and a pure-numpy compositional scorer over per-region logits.

Core layer: imports nothing above ``resedis.errors`` / ``resedis.types``.
"""

from resedis.expressions.fusion import Composition, compose, compose_image
from resedis.expressions.parser import normalize, parse
from resedis.expressions.query import (
    Negation,
    ParsedQuery,
    Phrase,
    Position,
    Relation,
    Superlative,
)
from resedis.expressions.weights import FusionWeights

__all__ = [
    "Composition", "FusionWeights", "Negation", "ParsedQuery", "Phrase", "Position", "Relation", "Superlative",
    "compose", "compose_image", "normalize", "parse",
]
