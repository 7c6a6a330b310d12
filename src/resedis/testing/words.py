"""The word list the tiny checkpoints' tokenizers are built on (shared by
:mod:`resedis.testing.tiny` and :mod:`resedis.testing.tiny_extra`)."""

from __future__ import annotations

from resedis.synth.grammar import VOCABULARY

# Words the tests and the synthetic grammar use; merged with resedis.synth's VOCABULARY.
BASE_WORDS = """
a an the of on in at to and with without near next beside above below under over between
left right top bottom middle center centre upper lower front back behind
small smaller smallest large larger largest big bigger biggest tiny medium huge
red green blue yellow orange purple pink brown black white gray grey cyan magenta
circle square triangle rectangle star ellipse hexagon diamond cross shape object thing
one two three first second third other photo picture image cat dog car person
""".split()


def vocabulary_words() -> list[str]:
    """BASE_WORDS plus the synthetic grammar's vocabulary, lower-cased, sorted, unique."""
    words = list(BASE_WORDS) + [str(w) for w in VOCABULARY]
    return sorted({w.lower() for w in words if w.strip()})
