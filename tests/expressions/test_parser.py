"""The parser's records in full (``test_expressions.py`` compares kinds; here every field:
the cue words as written, ``comparative``, ``negated``, the phrase's determiner and
modifier, the anchors), normalisation token by token, the negation rules, the context
rules at the edges of the expression, and :func:`with_negatives`."""

from __future__ import annotations

import pytest

from resedis.errors import ResedisError
from resedis.expressions import normalize, parse, with_negatives
from resedis.expressions.query import Negation, Phrase


def ph(p: Phrase) -> tuple:
    return (p.text, p.head, p.attributes, p.determiner, p.modifier)


def full(q) -> tuple:
    """(text, subject, positions, superlatives, relations, negations, fallback), every field."""
    return (
        q.text, ph(q.subject),
        tuple((p.kind, p.words, p.negated) for p in q.positions),
        tuple((s.kind, s.words, s.comparative, s.negated) for s in q.superlatives),
        tuple((r.kind, r.words, r.negated, tuple(full(a) for a in r.anchors)) for r in q.relations),
        tuple((n.words, ph(n.phrase)) for n in q.negations),
        q.fallback,
    )


def plain(text: str, head: str, attrs: tuple = (), det: str | None = None, modifier: str = "") -> tuple:
    return (text, head, attrs, det, modifier)


def anchor(text: str, subject: tuple, positions: tuple = (), negations: tuple = ()) -> tuple:
    return (text, subject, positions, (), (), negations, False)


THE_CAT = anchor("the cat", plain("the cat", "cat", det="the"))
DOG = plain("dog", "dog")

# expression -> full parse (each written from the rules in the module docstring)
FULL = {
    "bigger dog not next to the cat": (
        "bigger dog not next to the cat", DOG, (), (("largest", "bigger", True, False),),
        (("next_to", "not next to", True, (THE_CAT,)),), (), False),
    "the man in a hat sitting": (  # trailing filler dropped; the modifier kept
        "the man in a hat sitting", plain("the man in a hat", "man", det="the", modifier="in a hat"), (), (), (), (), False),
    "dog on the left of the picture": (
        "dog on the left of the picture", DOG, (("left", "on the left of the picture", False),), (), (), (), False),
    "dog on the left of a photo": (
        "dog on the left of a photo", DOG, (("left", "on the left of a photo", False),), (), (), (), False),
    "cup above the image": (  # a relation to a picture word is an absolute position
        "cup above the image", plain("cup", "cup"), (("top", "above the image", False),), (), (), (), False),
    "dog not below the picture": (
        "dog not below the picture", DOG, (("bottom", "not below the picture", True),), (), (), (), False),
    "dog below the photo on the left": (  # the anchor has a cue of its own: a relation after all
        "dog below the photo on the left", DOG, (), (),
        (("below", "below", False, (anchor("the photo", plain("the photo", "photo", det="the"),
                                           (("left", "on the left", False),)),)),), (), False),
    "the cat left of a picture frame": (  # two words besides the determiner: not a picture word
        "the cat left of a picture frame", plain("the cat", "cat", det="the"), (), (),
        (("left_of", "left of", False, (anchor("a picture frame", plain("a picture frame", "frame", ("picture",), "a")),)),),
        (), False),
    "dog right of the car": (  # "right" starts a two-word relation: not an intensifier
        "dog right of the car", DOG, (), (),
        (("right_of", "right of", False, (anchor("the car", plain("the car", "car", det="the")),)),), (), False),
    "dog just left of the cat": (  # an intensifier before a relation is dropped
        "dog just left of the cat", DOG, (), (), (("left_of", "left of", False, (THE_CAT,)),), (), False),
    "dog just to the left of the cat": (  # ... but not when the table has the phrase with it
        "dog just to the left of the cat", DOG, (), (), (("left_of", "just to the left of", False, (THE_CAT,)),), (),
        False),
    "dog right on the left": (  # ... and before a prepositional position phrase
        "dog right on the left", DOG, (("left", "on the left", False),), (), (), (), False),
    "the dog right": (  # a position word as the last word
        "the dog right", plain("the dog", "dog", det="the"), (("right", "right", False),), (), (), (), False),
    "top shelf by the tank": (  # a position word as the first word (no word before it)
        "top shelf by the tank", plain("shelf by the tank", "shelf", modifier="by the tank"),
        (("top", "top", False),), (), (), (), False),
    "all right dog": (  # "all right": not a position
        "all right dog", plain("all right dog", "dog", ("all", "right")), (), (), (), (), False),
    "dog, and on the left": (
        "dog and on the left", DOG, (("left", "on the left", False),), (), (), (), False),
    "dog and red": (  # "and" before no cue is a word of the phrase
        "dog and red", plain("dog and red", "dog", modifier="and red"), (), (), (), (), False),
    "man, , dog": ("man dog", plain("man dog", "dog", ("man",)), (), (), (), (), False),
    "cat next to the dog, on the left": (  # the comma ends the anchor: the position is the cat's
        "cat next to the dog on the left", plain("cat", "cat"), (("left", "on the left", False),), (),
        (("next_to", "next to", False, (anchor("the dog", plain("the dog", "dog", det="the")),)),), (), False),
    "cat next to the dog on the left": (  # without it the position is the anchor's
        "cat next to the dog on the left", plain("cat", "cat"), (), (),
        (("next_to", "next to", False, (anchor("the dog", plain("the dog", "dog", det="the"),
                                               (("left", "on the left", False),)),)),), (), False),
    "cat next to the dog, left of the box": (
        "cat next to the dog left of the box", plain("cat", "cat"), (), (),
        (("next_to", "next to", False, (anchor("the dog", plain("the dog", "dog", det="the")),)),
         ("left_of", "left of", False, (anchor("the box", plain("the box", "box", det="the")),))), (), False),
    "the cat next to the dog and the box": (  # "and" before no cue stays in the anchor
        "the cat next to the dog and the box", plain("the cat", "cat", det="the"), (), (),
        (("next_to", "next to", False,
          (anchor("the dog and the box", plain("the dog and the box", "dog", det="the", modifier="and the box")),)),),
        (), False),
    "cat next to the dog, the box": (  # a comma before no cue is dropped, not a word of the anchor's text
        "cat next to the dog the box", plain("cat", "cat"), (), (),
        (("next_to", "next to", False,
          (anchor("the dog the box", plain("the dog the box", "box", ("dog", "the"), "the")),)),), (), False),
    "dog between the cat and the box on the left": (
        "dog between the cat and the box on the left", DOG, (), (),
        (("between", "between", False, (THE_CAT, anchor("the box", plain("the box", "box", det="the"),
                                                          (("left", "on the left", False),)))),), (), False),
    "dog without red": (  # colour words alone take the subject's head
        "dog without red", DOG, (), (), (), (("without", plain("red dog", "dog", ("red",))),), False),
    "dog without a big red": (
        "dog without a big red", DOG, (), (), (), (("without", plain("big red dog", "dog", ("big", "red"))),), False),
    "dog not next to the cat without a hat": (  # the anchor's own negation
        "dog not next to the cat without a hat", DOG, (), (),
        (("next_to", "not next to", True,
          (anchor("the cat", plain("the cat", "cat", det="the"), negations=(("without", plain("a hat", "hat", det="a")),)),)),),
        (), False),
    "cat that isn't the smallest": (  # a negated superlative, the determiner before it skipped
        "cat that is not the smallest", plain("cat", "cat"), (), (("smallest", "that is not smallest", False, True),),
        (), (), False),
    "elephant not the biggest": (
        "elephant not the biggest", plain("elephant", "elephant"), (), (("largest", "not biggest", False, True),), (), (),
        False),
    # a negated superlative followed by a pronoun keeps its cue, negated (the superlative was
    # dropped and "one" excluded: the opposite query, issue 16) ...
    "cat not the largest one": (
        "cat not the largest one", plain("cat", "cat"), (), (("largest", "not largest", False, True),), (), (), False),
    "the man that is not the tallest ones, on the left": (
        "the man that is not the tallest ones on the left", plain("the man", "man", det="the"),
        (("left", "on the left", False),), (("tallest", "that is not tallest", False, True),), (), (), False),
    # ... and so does one before the phrase's own words (was a fallback excluding "cat")
    "not the largest cat": (
        "not the largest cat", plain("cat", "cat"), (), (("largest", "not largest", False, True),), (), (), False),
    "not on the left dog": (
        "not on the left dog", DOG, (("left", "not on the left", True),), (), (), (), False),
    "not the largest one": (  # only a pronoun: no subject, the cue kept
        "not the largest one", plain("not the largest one", "one", ("not", "the", "largest")), (),
        (("largest", "not largest", False, True),), (), (), True),
    "dog without the largest hat": (  # words after the cue when the phrase has its own: excluded
        "dog without the largest hat", DOG, (), (), (), (("without", plain("hat", "hat")),), False),
    "zebra not the leftmost": (
        "zebra not the leftmost", plain("zebra", "zebra"), (("left", "not leftmost", True),), (), (), (), False),
    "the second dog from the left": (  # an ordinal is dropped with a position ...
        "the second dog from the left", plain("the dog", "dog", det="the"), (("left", "from the left", False),), (), (),
        (), False),
    "second dog": ("second dog", plain("second dog", "dog", ("second",)), (), (), (), (), False),  # ... kept without
    "red circle that is": ("red circle that is", plain("red circle", "circle", ("red",)), (), (), (), (), False),
    "a the dog": ("a the dog", plain("a the dog", "dog", det="a"), (), (), (), (), False),
    "in the car": ("in the car", plain("in the car", "car"), (), (), (), (), False),
    "the large": ("the large", plain("the large", "large", det="the"), (), (), (), (), False),
    "on the left": (  # nothing left for the subject: the whole expression, cues kept
        "on the left", plain("on the left", "left"), (("left", "on the left", False),), (), (), (), True),
    "dog without": ("dog without", plain("dog without", "without", ("dog",)), (), (), (), (), True),
    "dog between the cat": (
        "dog between the cat", plain("dog between the cat", "cat", ("dog", "between", "the")), (), (), (), (), True),
    "the man with a hat left of": (  # the fallback phrase keeps its determiner and modifier
        "the man with a hat left of", plain("the man with a hat left of", "man", det="the", modifier="with a hat left"),
        (), (), (), (), True),
    "those": ("those", plain("those", "those"), (), (), (), (), False),  # a determiner alone is the head
    "dog not left of": ("dog not left of", plain("dog not left of", "left", ("dog", "not")), (), (), (), (), True),
    # "of the picture" after a position phrase is consumed with it, not with another noun
    "dog in the middle of the picture": (
        "dog in the middle of the picture", DOG, (("middle", "in the middle", False),), (), (), (), False),
    "dog in the center of picture": (
        "dog in the center of picture", DOG, (("middle", "in the center", False),), (), (), (), False),
    "dog in the middle of the picture wearing a hat": (
        "dog in the middle of the picture wearing a hat", plain("dog wearing a hat", "dog", modifier="wearing a hat"),
        (("middle", "in the middle", False),), (), (), (), False),
    "dog in the middle of the table": (
        "dog in the middle of the table", plain("dog of the table", "dog", modifier="of the table"),
        (("middle", "in the middle", False),), (), (), (), False),
    "dog in the middle of": ("dog in the middle of", DOG, (("middle", "in the middle", False),), (), (), (), False),
    "dog slightly left": (  # an intensifier before a position without a preposition is a plain word
        "dog slightly left", plain("dog slightly", "slightly", ("dog",)), (("left", "left", False),), (), (), (), False),
    "dog while, on the left": (  # a conjunction then a comma before a cue: skipped
        "dog while on the left", DOG, (("left", "on the left", False),), (), (), (), False),
    "dog left behind": (  # "left behind": both plain words, "behind" is not a relation here
        "dog left behind", plain("dog left behind", "behind", ("dog", "left")), (), (), (), (), False),
    "dog between the cat and the box, on the left": (  # the comma ends the second anchor too
        "dog between the cat and the box on the left", DOG, (("left", "on the left", False),), (),
        (("between", "between", False, (THE_CAT, anchor("the box", plain("the box", "box", det="the")))),), (), False),
    "dog not on the left, and next to the cat": (  # the negation ends at the comma
        "dog not on the left and next to the cat", DOG, (("left", "not on the left", True),), (),
        (("next_to", "next to", False, (THE_CAT,)),), (), False),
    "dog in the middle not on the left": (  # a negated cue is added to the earlier ones
        "dog in the middle not on the left", DOG, (("middle", "in the middle", False), ("left", "not on the left", True)),
        (), (), (), False),
    "dog next to the cat, not left of the box": (
        "dog next to the cat not left of the box", DOG, (), (),
        (("next_to", "next to", False, (THE_CAT,)),
         ("left_of", "not left of", True, (anchor("the box", plain("the box", "box", det="the")),))), (), False),
}


@pytest.mark.parametrize("expression", list(FULL))
def test_full_parse(expression):
    assert full(parse(expression)) == FULL[expression]


def test_a_failed_cue_inside_a_negation_fails_the_parse():
    """"not on the left" then a relation without an anchor: the whole expression, no cues."""
    q = parse("dog not on the left left of")
    assert (q.fallback, q.subject.text, q.has_cues) == (True, "dog not on the left left of", False)


NORMALIZED = {
    "Don\u2019t `it's` the T-Shirt; LEFT-MOST: far-right, ,": [
        "do", "not", "it", "is", "the", "t-shirt", ",", "left", "most", ",", "far", "right"],
    ", , dog": ["dog"],
    "-dog- !!! a--b 'cat'": ["dog", "a--b", "cat"],
    "who's there? which's that's isn't aren't wasn't doesn't": [
        "who", "is", "there", "which", "is", "that", "is", "is", "not", "are", "not", "was", "not", "does", "not"],
    "top-left middle-aged man": ["top", "left", "middle-aged", "man"],
    "hand-side, right-hand": ["hand", "side", ",", "right", "hand"],
    "dog's": ["dog's"],
    "cat:dog": ["cat", ",", "dog"],
    "don`t": ["do", "not"],  # a backtick is an apostrophe
}


@pytest.mark.parametrize("text", list(NORMALIZED))
def test_normalize(text):
    assert normalize(text) == NORMALIZED[text]


@pytest.mark.parametrize("bad, message", [
    (3, "parse() takes a string expression, got int"),
    (None, "parse() takes a string expression, got NoneType"),
    ("", "empty expression '': describe the object to look for"),
    (" , ; ", "empty expression ' , ; ': describe the object to look for"),
])
def test_parse_errors(bad, message):
    with pytest.raises(ResedisError) as err:
        parse(bad)
    assert str(err.value) == message


# ---- with_negatives --------------------------------------------------------------------
def test_with_negatives_reads_each_term_like_without():
    base = parse("a red circle without a hat")
    q = with_negatives(base, ["large", "the Blue Square", "big, red"])
    assert q.negations[0] == base.negations[0]
    assert [(n.words, ph(n.phrase)) for n in q.negations[1:]] == [
        ("--not large", plain("large circle", "circle", ("large",))),
        ("--not the blue square", plain("the blue square", "square", ("blue",), "the")),
        ("--not big red", plain("big red circle", "circle", ("big", "red"))),
    ]
    assert (q.subject, q.positions, q.relations, q.fallback) == (base.subject, base.positions, base.relations, False)


def test_with_negatives_on_a_fallback_without_cues_has_no_head_to_borrow():
    base = parse("left of")
    assert base.fallback and not base.has_cues
    assert with_negatives(base, ["red"]).negations == (Negation(Phrase("red", "red"), "--not red"),)
    # a fallback that kept its cues still lends its subject's head
    cues = parse("on the left")
    assert with_negatives(cues, ["red"]).negations == (Negation(Phrase("red left", "left", ("red",)), "--not red"),)


def test_with_negatives_without_terms_is_the_same_parse():
    base = parse("a red circle")
    assert with_negatives(base, []) is base
    assert with_negatives(base, ()) is base


@pytest.mark.parametrize("negatives, message", [
    ("large", "negative terms are a list of texts, e.g. ['large'], not one string"),
    ([""], "empty negative term '': name what to exclude, e.g. --not \"a hat\""),
    (["large", " , "], "empty negative term ' , ': name what to exclude, e.g. --not \"a hat\""),
    ([3], "empty negative term 3: name what to exclude, e.g. --not \"a hat\""),
])
def test_with_negatives_errors(negatives, message):
    with pytest.raises(ResedisError) as err:
        with_negatives(parse("a red circle"), negatives)
    assert str(err.value) == message
