"""The tables of the referring-expression parser (:mod:`resedis.expressions.parser`).

Every cue the parser recognises is a row of one of the tables below; the parser itself
only matches them (longest phrase first, on lower-cased words) and applies the few
context rules stated in its docstring. Words are matched after normalisation: lower
case, punctuation removed, ``isn't`` -> ``is not`` (see :data:`CONTRACTIONS`), and a
hyphenated word whose parts are all in :data:`SPLIT_HYPHEN_PARTS` split in two
(``top-left`` -> ``top left``, ``left-most`` -> ``left most``; ``t-shirt`` and
``middle-aged`` stay whole).

Kinds (the values the tables map to):

* absolute positions :data:`POSITION_KINDS`: ``left right top bottom middle top_left
  top_right bottom_left bottom_right``;
* size superlatives :data:`SUPERLATIVE_KINDS`: ``largest smallest tallest shortest``
  (comparatives such as ``bigger`` map to the same kinds: "the bigger dog" is the
  largest of the dogs);
* relations :data:`RELATION_KINDS`: ``left_of right_of above below next_to on_top_of
  under behind in_front_of between`` (``between`` takes two anchors joined by ``and``).
"""

from __future__ import annotations

POSITION_KINDS: tuple[str, ...] = (
    "left", "right", "top", "bottom", "middle", "top_left", "top_right", "bottom_left", "bottom_right",
)
SUPERLATIVE_KINDS: tuple[str, ...] = ("largest", "smallest", "tallest", "shortest")
RELATION_KINDS: tuple[str, ...] = (
    "left_of", "right_of", "above", "below", "next_to", "on_top_of", "under", "behind", "in_front_of", "between",
)

#: Words that open a noun phrase and are not part of what it names.
DETERMINERS: frozenset[str] = frozenset({"the", "a", "an", "this", "that", "these", "those", "some", "one's"})

#: Colour words (attribute kind ``color``); the synthetic benchmark's eight are among them.
COLOR_WORDS: frozenset[str] = frozenset({
    "red", "green", "blue", "yellow", "purple", "orange", "white", "black", "brown", "gray", "grey", "pink",
    "tan", "beige", "silver", "gold", "golden", "dark", "light", "navy", "maroon", "teal", "violet", "cream",
})
#: Nominal size words (attribute kind ``size``): they describe the object, they do not compare it.
SIZE_WORDS: frozenset[str] = frozenset({"small", "large", "big", "little", "tiny", "huge", "giant", "medium"})

#: Contractions expanded before matching.
CONTRACTIONS: dict[str, str] = {
    "isn't": "is not", "aren't": "are not", "wasn't": "was not", "doesn't": "does not", "don't": "do not",
    "that's": "that is", "who's": "who is", "which's": "which is", "it's": "it is", "there's": "there is",
}
#: A hyphenated word is split when every part is one of these.
SPLIT_HYPHEN_PARTS: frozenset[str] = frozenset({
    "left", "right", "top", "bottom", "upper", "lower", "middle", "center", "centre", "most", "far", "hand", "side",
})

#: Picture words: a relation or position "of the picture" is an absolute position.
IMAGE_WORDS: frozenset[str] = frozenset({
    "picture", "pic", "pict", "image", "photo", "photograph", "frame", "screen", "scene", "shot", "view", "img",
})

_SIDES = {"left": "left", "right": "right"}
_ENDS = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}


def _position_phrases() -> dict[tuple[str, ...], str]:
    """Every absolute-position phrase -> its kind (see POSITION_KINDS)."""
    out: dict[tuple[str, ...], str] = {}
    preps = ["", "on the", "at the", "to the", "in the", "on", "at", "to", "in", "from the", "from"]
    fars = ["", "far", "very", "extreme", "far far"]
    tails = ["", "side", "hand side", "most", "edge", "part", "half", "corner", "end"]
    bases: dict[str, str] = {**_SIDES, **_ENDS, "middle": "middle", "center": "middle", "centre": "middle"}
    for word, kind in bases.items():
        for prep in preps:
            for far in fars:
                for tail in tails:
                    if tail == "corner":
                        continue
                    if kind == "middle" and (far or tail not in ("", "part")):
                        continue
                    words = " ".join(w for w in (prep, far, word, tail) if w).split()
                    out[tuple(words)] = kind
    for end_word, end in _ENDS.items():
        for side_word, side in _SIDES.items():
            kind = f"{end}_{side}"
            for order in ((end_word, side_word), (side_word, end_word)):
                for prep in preps:
                    for far in ("", "far"):
                        for tail in ("", "corner", "side", "hand corner", "hand side"):
                            words = " ".join(w for w in (prep, far, *order, tail) if w).split()
                            out[tuple(words)] = kind
    for word in ("leftmost", "rightmost", "topmost", "uppermost", "bottommost", "lowermost", "highest", "lowest"):
        kind = ("left" if word.startswith("left") else "right" if word.startswith("right") else
                "top" if word.startswith(("top", "upp", "high")) else "bottom")
        out[(word,)] = kind
        out[("the", word)] = kind
    for ordinal in ("second", "2nd", "third", "3rd", "fourth", "4th"):
        for side in ("left", "right"):
            out[(ordinal, "from", side)] = side
            out[(ordinal, "from", "the", side)] = side
            out[(ordinal, "from", "top")] = "top"
            out[(ordinal, "from", "bottom")] = "bottom"
    out[("on", "top")] = "top"
    out[("on", "the", "top")] = "top"
    out[("in", "the", "front", "middle")] = "middle"
    return out


#: Absolute-position phrases (word tuples) -> kind. Single words (``left``, ``top``...)
#: are cues only outside the non-cue contexts of :data:`NOT_A_CUE_BEFORE` /
#: :data:`NOT_A_CUE_AFTER`.
POSITION_PHRASES: dict[tuple[str, ...], str] = _position_phrases()

#: Superlative and comparative words -> kind.
SUPERLATIVE_WORDS: dict[str, str] = {
    "largest": "largest", "biggest": "largest", "larger": "largest", "bigger": "largest", "huger": "largest",
    "smallest": "smallest", "tiniest": "smallest", "littlest": "smallest", "smaller": "smallest", "tinier": "smallest",
    "tallest": "tallest", "taller": "tallest",
    "shortest": "shortest", "shorter": "shortest",
}
COMPARATIVE_WORDS: frozenset[str] = frozenset({"larger", "bigger", "huger", "smaller", "tinier", "taller", "shorter"})


def _relation_phrases() -> dict[tuple[str, ...], str]:
    rows: dict[str, str] = {}
    for side in ("left", "right"):
        kind = f"{side}_of"
        for prep in ("", "to the", "on the", "at the", "to", "on", "at", "towards the", "just to the"):
            for tail in ("of", "side of", "hand side of", "of the side of"):
                rows[" ".join(w for w in (prep, side, tail) if w)] = kind
    rows.update({
        "above": "above", "over": "above", "higher than": "above", "on the top of": "above", "at the top of": "above",
        "top of": "above",
        "below": "below", "lower than": "below", "at the bottom of": "below", "on the bottom of": "below",
        "bottom of": "below",
        "next to": "next_to", "beside": "next_to", "besides": "next_to", "near": "next_to", "nearby": "next_to",
        "near to": "next_to", "close to": "next_to", "closest to": "next_to", "nearest to": "next_to",
        "alongside": "next_to", "along side": "next_to", "adjacent to": "next_to",
        "by the side of": "next_to", "at the side of": "next_to",
        "on top of": "on_top_of", "atop": "on_top_of", "on the top of the": "on_top_of",
        "under": "under", "underneath": "under", "beneath": "under", "below and under": "under",
        "behind": "behind", "in back of": "behind", "at the back of": "behind", "in the back of": "behind",
        "in front of": "in_front_of", "infront of": "in_front_of", "in the front of": "in_front_of",
        "at the front of": "in_front_of",
        "between": "between", "in between": "between", "inbetween": "between",
    })
    del rows["on the top of the"]  # a determiner belongs to the anchor
    return {tuple(k.split()): v for k, v in rows.items()}


#: Relation phrases (word tuples) -> kind; the words after the phrase are its anchor phrase.
RELATION_PHRASES: dict[tuple[str, ...], str] = _relation_phrases()

#: Negation markers: the phrase after one names what the subject is NOT (or a negated cue).
NEGATION_PHRASES: frozenset[tuple[str, ...]] = frozenset(tuple(p.split()) for p in (
    "not", "without", "with no", "no", "but not", "and not", "except", "except for", "other than", "excluding",
    "that is not", "which is not", "who is not", "that are not", "which are not", "who are not", "is not",
    "are not", "that does not have", "who does not have", "does not have", "that do not have",
    "minus", "lacking",
))

#: Words that only intensify a following cue ("right next to", "just above"); dropped.
INTENSIFIERS: frozenset[str] = frozenset({
    "right", "just", "directly", "immediately", "slightly", "partially", "partly", "mostly", "very", "closely",
    "straight", "exactly",
})

#: (previous word, cue word) pairs where the cue word is part of a noun, not a position:
#: "tank top", "bell bottoms". Also any word of :data:`NOT_A_CUE_PAIRS`.
NOT_A_CUE_AFTER: dict[str, frozenset[str]] = {
    "top": frozenset({"tank", "crop", "halter", "tube", "bikini", "table", "counter", "lap", "desk", "roof",
                      "laptop", "muffin", "spinning", "flip", "convertible", "hard", "soft", "sweat"}),
    "bottom": frozenset({"bell", "bikini", "pajama", "bottle"}),
    "right": frozenset({"all"}),
    "middle": frozenset(),
    "center": frozenset({"shopping", "town", "city"}),
    "left": frozenset(),
}
#: (cue word, next word) pairs where the cue word is not a position: "the right answer",
#: "left over pizza", "middle aged man", "top hat", "the left hand".
NOT_A_CUE_BEFORE: dict[str, frozenset[str]] = {
    "right": frozenset({"answer", "choice", "way", "time", "now", "here", "there", "away", "hand", "arm", "leg",
                        "foot", "eye", "ear", "angle", "angled", "wing", "to"}),
    "left": frozenset({"over", "overs", "hand", "arm", "leg", "foot", "eye", "ear", "behind", "alone", "out",
                       "wing"}),
    "top": frozenset({"hat", "hats", "notch", "gun", "speed", "ten", "10", "quality"}),
    "bottom": frozenset({"line"}),
    "middle": frozenset({"aged", "age", "school", "finger", "class", "name"}),
    "center": frozenset({"piece", "console", "fielder", "field"}),
    "centre": frozenset({"piece", "console", "field"}),
    "upper": frozenset({"body", "lip", "arm", "case", "class", "deck"}),
    "lower": frozenset({"body", "lip", "arm", "case", "class", "deck"}),
}
#: Single words never read as cues (they contain or resemble one).
NON_CUE_WORDS: frozenset[str] = frozenset({"leftover", "leftovers", "laptop", "tabletop", "desktop", "topping",
                                           "toppings", "rightful", "centerpiece", "centrepiece"})

#: Words that end the pre-modifiers of a noun phrase (the head noun is the word before).
POSTMODIFIER_WORDS: frozenset[str] = frozenset({
    "in", "with", "wearing", "holding", "on", "at", "of", "who", "that", "which", "carrying", "having", "has",
    "sitting", "standing", "lying", "laying", "leaning", "hanging", "parked", "walking", "riding", "eating",
    "looking", "facing", "playing", "is", "are", "from", "for", "and", "to", "into", "by", "dressed", "shown",
    "partially", "partly", "cut", "whose", "where", "while", "being", "like", "near",
})
#: Words dropped at the end of a phrase before a cue ("the cat sitting on top of ..." ->
#: subject "the cat"); the phrase keeps them when no cue follows.
TRAILING_FILLER: frozenset[str] = frozenset({
    "is", "are", "that", "which", "who", "and", "but", "also", "sitting", "standing", "lying", "laying",
    "located", "placed", "positioned", "situated", "found", "seen", "shown", "parked", "hanging", "leaning",
    "it", "the", "a", "an", "its", "to", "there", "here", "of",
})
#: Conjunctions that, before a cue, attach that cue to the outer phrase ("X next to Y and
#: left of Z": both relations are X's).
CONJUNCTIONS: frozenset[str] = frozenset({"and", "but", "also", "while"})
#: Ordinals that rank along a position ("second guy from left"); dropped from a phrase
#: that has a position cue (the rank itself is not scored).
ORDINAL_WORDS: frozenset[str] = frozenset({"first", "1st", "second", "2nd", "third", "3rd", "fourth", "4th"})
#: Words that stand for the subject's noun after a negated cue ("the cat that is not the
#: largest one"): dropped, the cue stays negated.
PRONOUN_WORDS: frozenset[str] = frozenset({"one", "ones"})
