"""Referring expressions beyond a phrase: a parser (subject, positions, superlatives,
relations, negation) and a pure-numpy compositional scorer over per-region logits.

Core layer: imports nothing above ``resedis.errors`` / ``resedis.types``.
"""

from resedis.expressions.fusion import Composition, FusionWeights, compose, compose_image
from resedis.expressions.parser import (
    Negation,
    ParsedQuery,
    Phrase,
    Position,
    Relation,
    Superlative,
    normalize,
    parse,
)

__all__ = ["Composition", "FusionWeights", "compose", "compose_image", "Negation", "ParsedQuery", "Phrase", "Position", "Relation", "Superlative", "normalize", "parse"]
