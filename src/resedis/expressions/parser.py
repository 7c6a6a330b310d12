"""Parse a referring expression into a subject phrase and its cues.

>>> from resedis.expressions import parse
>>> q = parse("the small red circle to the left of the blue square")
>>> q.subject.head, q.subject.attributes, q.relations[0].kind, q.relations[0].anchor.subject.text
('circle', ('small', 'red'), 'left_of', 'the blue square')

The tables are in :mod:`resedis.expressions.grammar`. The expression is normalised
(lower case, punctuation removed, a comma kept as a separator) and read left to right; at
each word the LONGEST phrase of any table that starts there wins:

* a **relation** phrase (``to the left of``, ``next to``, ``between`` ...): the words
  after it, up to the end or up to ``and`` / ``,`` followed by another cue, are its
  anchor, parsed recursively (so an anchor has its own subject and cues; a cue inside
  the anchor's words belongs to the anchor). ``between`` takes two anchors joined by
  ``and``. A relation whose anchor is a picture word (``left of the picture``) is an
  absolute position;
* a **negation** marker (``not``, ``without``, ``that is not``, ``with no`` ...): the
  words after it, up to the next cue, name what is excluded (the cue after them belongs
  to the outer phrase: "the man with no glasses next to the woman"). When they hold only a
  position, superlative or relation, that cue is negated (``not on the left``; a
  determiner before the cue is skipped: ``not the biggest``); so is a cue followed by a
  pronoun (``cat not the largest one``: the pronoun is dropped) or, when no word of the
  phrase came before the marker, by the phrase's own words (``not the largest cat``:
  subject ``cat``); when they are only
  colour/size words, the excluded phrase is those words + the subject's head noun
  (``the circle that is not red`` excludes ``red circle``). Cues inside an excluded
  phrase are dropped;
* an absolute **position** phrase (``on the left``, ``top left corner``, ``leftmost``,
  ``second from left``; ``... of the picture`` is consumed with it);
* a size **superlative** or comparative (``largest``, ``bigger`` ...);
* anything else is a word of the current phrase.

Context rules, so that a cue word that is part of a noun is not taken for a cue: a single
position word is a plain word after a word of ``NOT_A_CUE_AFTER`` ("tank top") or before
one of ``NOT_A_CUE_BEFORE`` ("the right answer", "left over pizza", "middle aged man";
both words are then plain words); an intensifier (``right``, ``just``, ``directly`` ...)
directly before a relation or a prepositional position phrase is dropped ("right next
to").

A phrase's words give its determiner (first word, if a determiner), its head noun (the
last word before the first post-modifier word such as ``in``, ``with``, ``wearing``) and
its attributes (the words before the head); filler at its end ("that is", "sitting") is
dropped. Its ``text`` (determiner included, as written) is what a text encoder scores.

Fallback: when the subject has no words left ("on the left") the subject is the whole
expression (cues kept, ``fallback=True``); when a relation has no anchor ("left of") or
nothing at all can be structured, the result is the whole expression as the subject and
no cues (``fallback=True``), i.e. exactly today's single-phrase query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from resedis.errors import ResedisError
from resedis.expressions.grammar import (
    COLOR_WORDS,
    COMPARATIVE_WORDS,
    CONJUNCTIONS,
    CONTRACTIONS,
    DETERMINERS,
    IMAGE_WORDS,
    INTENSIFIERS,
    NEGATION_PHRASES,
    NON_CUE_WORDS,
    NOT_A_CUE_AFTER,
    NOT_A_CUE_BEFORE,
    ORDINAL_WORDS,
    POSITION_PHRASES,
    POSTMODIFIER_WORDS,
    PRONOUN_WORDS,
    RELATION_PHRASES,
    SIZE_WORDS,
    SPLIT_HYPHEN_PARTS,
    SUPERLATIVE_WORDS,
    TRAILING_FILLER,
)
from resedis.expressions.query import (
    Negation,
    ParsedQuery,
    Phrase,
    Position,
    Relation,
    Superlative,
)

#: A relation whose anchor is a picture word becomes this absolute position.
RELATION_TO_POSITION: dict[str, str] = {
    "left_of": "left", "right_of": "right", "above": "top", "on_top_of": "top", "below": "bottom", "under": "bottom",
}
_PREPOSITIONS = frozenset({"on", "at", "in", "to", "from"})
_MAX_PHRASE = max(len(k) for k in (*POSITION_PHRASES, *RELATION_PHRASES, *NEGATION_PHRASES))


def normalize(expression: str) -> list[str]:
    """Expression -> lower-case words (``,`` kept as a word; see grammar.py)."""
    text = str(expression).lower().replace("\u2019", "'").replace("`", "'")
    for short, long in CONTRACTIONS.items():
        text = re.sub(rf"\b{re.escape(short)}", long, text)
    text = re.sub(r"[,;:]", " , ", text)
    words: list[str] = []
    for raw in text.split():
        word = re.sub(r"[^\w'\-,]", "", raw).strip("'-")
        if not word:
            continue
        parts = word.split("-")
        if len(parts) > 1 and all(p in SPLIT_HYPHEN_PARTS for p in parts):
            words += parts
        else:
            words.append(word)
    while words and words[0] == ",":
        words.pop(0)
    while words and words[-1] == ",":
        words.pop()
    return words


@dataclass
class _Draft:
    words: list[str] = field(default_factory=list)
    positions: list[Position] = field(default_factory=list)
    superlatives: list[Superlative] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    negations: list[tuple[list[str], str]] = field(default_factory=list)
    failed: bool = False

    @property
    def has_cues(self) -> bool:
        return bool(self.positions or self.superlatives or self.relations or self.negations)


def _match(tokens: list[str], i: int) -> tuple[str, str, int] | None:
    """The longest table phrase starting at ``tokens[i]``: (category, kind, length), with
    the context rules for single position words applied."""
    word = tokens[i]
    if word in NON_CUE_WORDS:
        return None
    for length in range(min(_MAX_PHRASE, len(tokens) - i), 0, -1):
        key = tuple(tokens[i:i + length])
        if key in RELATION_PHRASES:
            return "relation", RELATION_PHRASES[key], length
        if key in NEGATION_PHRASES:
            return "negation", "not", length
        if key in POSITION_PHRASES:
            if length == 1 and _not_a_position(tokens, i):
                return None
            return "position", POSITION_PHRASES[key], length
    if word in SUPERLATIVE_WORDS:
        return "superlative", SUPERLATIVE_WORDS[word], 1
    return None


def _not_a_position(tokens: list[str], i: int) -> bool:
    word = tokens[i]
    prev = tokens[i - 1] if i > 0 else None
    nxt = tokens[i + 1] if i + 1 < len(tokens) else None
    return (prev in NOT_A_CUE_AFTER.get(word, ())) or (nxt in NOT_A_CUE_BEFORE.get(word, ()))


def _cue_follows(tokens: list[str], i: int) -> bool:
    """Is there a cue (after any commas / conjunctions) at ``tokens[i]``?"""
    while i < len(tokens) and (tokens[i] == "," or tokens[i] in CONJUNCTIONS):
        i += 1
    return i < len(tokens) and _match(tokens, i) is not None


def _is_intensifier(tokens: list[str], i: int, here: tuple[str, str, int] | None) -> bool:
    if tokens[i] not in INTENSIFIERS or i + 1 >= len(tokens) or (here is not None and here[2] > 1):
        return False
    nxt = _match(tokens, i + 1)
    return nxt is not None and (nxt[0] == "relation" or (nxt[0] == "position" and tokens[i + 1] in _PREPOSITIONS))


def _image_phrase(draft: _Draft) -> bool:
    words = [w for w in draft.words if w not in DETERMINERS and w != ","]
    return len(words) == 1 and words[0] in IMAGE_WORDS and not draft.has_cues


def _segment(
    tokens: list[str], i: int, *, nested: bool, stop_at_and: bool = False, stop_at_cue: bool = False
) -> tuple[_Draft, int]:
    draft = _Draft()
    n = len(tokens)
    while i < n:
        word = tokens[i]
        if word == "," or word in CONJUNCTIONS:
            if stop_at_and and word == "and" and draft.words:
                return draft, i
            if _cue_follows(tokens, i + 1):
                if nested and (draft.words or draft.has_cues):
                    return draft, i
                i += 1
                continue
            if word == ",":
                i += 1
                continue
        hit = _match(tokens, i)
        if _is_intensifier(tokens, i, hit):
            i += 1
            continue
        if hit is None:
            if _not_a_position_pair(tokens, i):
                draft.words += tokens[i:i + 2]
                i += 2
            else:
                draft.words.append(word)
                i += 1
            continue
        category, kind, length = hit
        if stop_at_cue and draft.words:
            return draft, i
        cue_words = " ".join(tokens[i:i + length])
        i += length
        if category == "superlative":
            draft.superlatives.append(Superlative(kind, cue_words, comparative=word in COMPARATIVE_WORDS))
        elif category == "position":
            i = _skip_picture_words(tokens, i)
            draft.positions.append(Position(kind, cue_words))
        elif category == "relation":
            i = _relation(tokens, i, kind, cue_words, draft, negated=False)
        else:  # negation
            i = _negation(tokens, i, cue_words, draft)
    return draft, i


def _not_a_position_pair(tokens: list[str], i: int) -> bool:
    """A position word that is a plain word because of the NEXT word ("left over"): both
    words are plain, so the second is not read as a cue either."""
    word, nxt = tokens[i], tokens[i + 1] if i + 1 < len(tokens) else None
    return nxt is not None and (word,) in POSITION_PHRASES and nxt in NOT_A_CUE_BEFORE.get(word, ())


def _skip_picture_words(tokens: list[str], i: int) -> int:
    """After a position phrase, consume ``of [the] picture``."""
    j = i
    if j < len(tokens) and tokens[j] == "of":
        j += 1
        if j < len(tokens) and tokens[j] in DETERMINERS:
            j += 1
        if j < len(tokens) and tokens[j] in IMAGE_WORDS:
            return j + 1
    return i


def _relation(tokens: list[str], i: int, kind: str, cue_words: str, draft: _Draft, *, negated: bool) -> int:
    first, i = _segment(tokens, i, nested=True, stop_at_and=kind == "between")
    anchors = [first]
    if kind == "between" and i < len(tokens) and tokens[i] == "and":
        second, i = _segment(tokens, i + 1, nested=True)
        anchors.append(second)
    if kind in RELATION_TO_POSITION and _image_phrase(first):
        draft.positions.append(Position(RELATION_TO_POSITION[kind], cue_words + " " + " ".join(first.words), negated))
        return i
    if any(not a.words for a in anchors) or (kind == "between" and len(anchors) != 2):
        draft.failed = True
        return i
    built = tuple(_finish(a, text=" ".join(a.words)) for a in anchors)
    draft.relations.append(Relation(kind, cue_words, built, negated))
    return i


def _negation(tokens: list[str], i: int, cue_words: str, draft: _Draft) -> int:
    k = i
    while k < len(tokens) and tokens[k] in DETERMINERS:
        k += 1
    if k > i and k < len(tokens) and _match(tokens, k) is not None:
        i = k  # "not the biggest": the determiner belongs to the negated cue, not an excluded phrase
    inner, j = _segment(tokens, i, nested=True, stop_at_cue=True)
    # a cue first, then words (the segment stops at a cue after words): "not the largest one"
    # (a pronoun for the subject) or, before any word of the phrase, "not the largest cat"
    # (the subject itself) negate the cue; the words are the phrase's, pronouns dropped
    rest = [w for w in inner.words if w not in PRONOUN_WORDS]
    if inner.words and (inner.positions or inner.relations or inner.superlatives) and not (rest and draft.words):
        draft.words += rest
        inner.words = []
    if inner.words:
        draft.negations.append((inner.words, cue_words))
    elif inner.positions or inner.relations or inner.superlatives:
        draft.positions += [Position(p.kind, f"{cue_words} {p.words}", not p.negated) for p in inner.positions]
        draft.superlatives += [Superlative(s.kind, f"{cue_words} {s.words}", s.comparative, not s.negated)
                               for s in inner.superlatives]
        draft.relations += [Relation(r.kind, f"{cue_words} {r.words}", r.anchors, not r.negated) for r in inner.relations]
    else:
        draft.failed = True
    draft.failed |= inner.failed
    return j


def _phrase(words: list[str]) -> Phrase | None:
    """Words of a noun phrase -> Phrase (None when nothing is left)."""
    words = [w for w in words if w != ","]
    while words and words[-1] in TRAILING_FILLER:
        words.pop()
    if not words:
        return None
    determiner = words[0] if words[0] in DETERMINERS and len(words) > 1 else None
    content = words[1:] if determiner else words
    start = 0
    while start < len(content) - 1 and (content[start] in POSTMODIFIER_WORDS or content[start] in DETERMINERS):
        start += 1
    cut = next((k for k in range(start + 1, len(content)) if content[k] in POSTMODIFIER_WORDS), len(content))
    pre = content[start:cut]
    return Phrase(" ".join(words), pre[-1], tuple(pre[:-1]), determiner, " ".join(content[cut:]))


def _excluded(words: list[str], subject: Phrase | None) -> Phrase | None:
    """The excluded phrase; colour/size words alone take the subject's head noun (when
    there is a subject)."""
    phrase = _phrase(words)
    if phrase is None:
        return None
    bare = [w for w in words if w not in DETERMINERS and w != ","]
    if subject is not None and bare and all(w in COLOR_WORDS or w in SIZE_WORDS for w in bare):
        return Phrase(" ".join(bare + [subject.head]), subject.head, tuple(bare))
    return phrase


def _finish(draft: _Draft, *, text: str) -> ParsedQuery:
    found = _phrase(text.split())
    whole = (Phrase(text, found.head, found.attributes, found.determiner, found.modifier) if found
             else Phrase(text, text.split()[-1]))
    if draft.failed:
        return ParsedQuery(text, whole, fallback=True)
    words = [w for w in draft.words if w not in ORDINAL_WORDS] if draft.positions else draft.words
    subject = _phrase(words)
    negations = []
    for negated_words, cue_words in draft.negations:
        excluded = _excluded(negated_words, subject)
        if excluded is not None:
            negations.append(Negation(excluded, cue_words))
    return ParsedQuery(text, subject or whole, tuple(draft.positions), tuple(draft.superlatives), tuple(draft.relations),
                       tuple(negations), fallback=subject is None)


def parse(expression: str) -> ParsedQuery:
    """Parse one referring expression (see the module docstring). Raises ResedisError on
    an expression with no words."""
    if not isinstance(expression, str):
        raise ResedisError(f"parse() takes a string expression, got {type(expression).__name__}")
    tokens = normalize(expression)
    if not [t for t in tokens if t != ","]:
        raise ResedisError(f"empty expression {expression!r}: describe the object to look for")
    draft, _ = _segment(tokens, 0, nested=False)
    return _finish(draft, text=" ".join(t for t in tokens if t != ","))


def with_negatives(parsed: ParsedQuery, negatives) -> ParsedQuery:
    """``parsed`` with extra excluded phrases (``--not TEXT``), each read as the parser reads
    "without TEXT": colour / size words alone take the subject's head noun (``--not large``
    on "a red circle" excludes "large circle"). Empty texts raise ResedisError."""
    if isinstance(negatives, str):
        raise ResedisError("negative terms are a list of texts, e.g. ['large'], not one string")
    extra = []
    for text in negatives:
        if not isinstance(text, str) or not [t for t in normalize(text) if t != ","]:
            raise ResedisError(f"empty negative term {text!r}: name what to exclude, e.g. --not \"a hat\"")
        words = [t for t in normalize(text) if t != ","]
        phrase = _excluded(words, None if parsed.fallback and not parsed.has_cues else parsed.subject)
        extra.append(Negation(phrase, "--not " + " ".join(words)))
    if not extra:
        return parsed
    return replace(parsed, negations=parsed.negations + tuple(extra))
