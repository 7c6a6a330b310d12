"""The referring-expression parser: a hand table of RefCOCO-style expressions, the
synthetic benchmark's whole grammar, normalisation, fallbacks and ``resedis parse``."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from resedis.cli import main
from resedis.errors import ResedisError
from resedis.expressions import parse
from resedis.expressions.grammar import POSITION_KINDS, RELATION_KINDS
from resedis.synth.grammar import (
    POSITIONS,
    RELATIONS,
    SUPERLATIVES,
    Expression,
    NounPhrase,
)
from resedis.synth.queries import random_expression
from resedis.synth.scene import COLORS, SHAPES, SIZES


def summary(q) -> dict:
    """A parse as a plain dict; empty parts left out (so an expected dict lists all that is set)."""
    out: dict = {"subject": q.subject.text, "head": q.subject.head}
    if q.subject.attributes:
        out["attrs"] = q.subject.attributes
    if q.positions:
        out["pos"] = tuple(("!" if p.negated else "") + p.kind for p in q.positions)
    if q.superlatives:
        out["sup"] = tuple(("!" if s.negated else "") + s.kind for s in q.superlatives)
    if q.relations:
        out["rel"] = tuple((("!" if r.negated else "") + r.kind, *(summary(a) for a in r.anchors)) for r in q.relations)
    if q.negations:
        out["not"] = tuple(n.phrase.text for n in q.negations)
    if q.fallback:
        out["fallback"] = True
    return out


def S(subject: str, head: str, attrs: tuple = (), **cues) -> dict:
    out = {"subject": subject, "head": head}
    if attrs:
        out["attrs"] = tuple(attrs)
    out.update(cues)
    return out


# (expression, expected full parse)
TABLE = [
    # people
    ("man on the left", S("man", "man", pos=("left",))),
    ("the woman in the red shirt on the right", S("the woman in the red shirt", "woman", pos=("right",))),
    ("guy in blue far right", S("guy in blue", "guy", pos=("right",))),
    ("leftmost person", S("person", "person", pos=("left",))),
    ("second guy from left", S("guy", "guy", pos=("left",))),
    ("the tallest man", S("the man", "man", sup=("tallest",))),
    ("shorter girl", S("girl", "girl", sup=("shortest",))),
    ("girl in the tank top", S("girl in the tank top", "girl")),
    ("woman wearing a crop top on the left", S("woman wearing a crop top", "woman", pos=("left",))),
    ("man without a hat", S("man", "man", **{"not": ("a hat",)})),
    ("the man with no glasses next to the woman",
     S("the man", "man", **{"not": ("glasses",)}, rel=(("next_to", S("the woman", "woman")),))),
    ("person that is not wearing a helmet", S("person", "person", **{"not": ("wearing a helmet",)})),
    ("middle aged man in the middle", S("middle aged man", "man", ("middle", "aged"), pos=("middle",))),
    ("the boy right next to the dog", S("the boy", "boy", rel=(("next_to", S("the dog", "dog")),))),
    ("man behind the counter", S("man", "man", rel=(("behind", S("the counter", "counter")),))),
    ("kid in front of the tv", S("kid", "kid", rel=(("in_front_of", S("the tv", "tv")),))),
    ("player between the umpire and the catcher",
     S("player", "player", rel=(("between", S("the umpire", "umpire"), S("the catcher", "catcher")),))),
    ("the left guy's right hand", S("the guy's right hand", "hand", ("guy's", "right"), pos=("left",))),
    # animals
    ("the bigger elephant", S("the elephant", "elephant", sup=("largest",))),
    ("smallest giraffe on the right", S("giraffe", "giraffe", pos=("right",), sup=("smallest",))),
    ("brown dog to the left of the white cat",
     S("brown dog", "dog", ("brown",), rel=(("left_of", S("the white cat", "cat", ("white",))),))),
    ("cat sitting on top of the tv", S("cat", "cat", rel=(("on_top_of", S("the tv", "tv")),))),
    ("the dog that is not black", S("the dog", "dog", **{"not": ("black dog",)})),
    ("zebra not on the left", S("zebra", "zebra", pos=("!left",))),
    ("horse closest to the fence", S("horse", "horse", rel=(("next_to", S("the fence", "fence")),))),
    ("bird above the water", S("bird", "bird", rel=(("above", S("the water", "water")),))),
    ("sheep in the top left corner", S("sheep", "sheep", pos=("top_left",))),
    ("the cow near the tree on the right",
     S("the cow", "cow", rel=(("next_to", S("the tree", "tree", pos=("right",))),))),
    ("bear under the log", S("bear", "bear", rel=(("under", S("the log", "log")),))),
    # furniture and things
    ("bottom bunk", S("bunk", "bunk", pos=("bottom",))),
    ("top shelf of the bookcase", S("shelf of the bookcase", "shelf", pos=("top",))),
    ("chair in the center", S("chair", "chair", pos=("middle",))),
    ("couch on the left side of the picture", S("couch", "couch", pos=("left",))),
    ("lamp left of the picture", S("lamp", "lamp", pos=("left",))),
    ("the table below the window", S("the table", "table", rel=(("below", S("the window", "window")),))),
    ("the chair between the table and the lamp",
     S("the chair", "chair", rel=(("between", S("the table", "table"), S("the lamp", "lamp")),))),
    ("left over pizza on the plate", S("left over pizza on the plate", "pizza", ("left", "over"))),
    ("the right answer", S("the right answer", "answer", ("right",))),
    ("bottom right corner chair", S("chair", "chair", pos=("bottom_right",))),
    ("upper-left cabinet", S("cabinet", "cabinet", pos=("top_left",))),
    ("the largest pillow on the bed", S("the pillow on the bed", "pillow", sup=("largest",))),
    ("top hat on the table", S("top hat on the table", "hat", ("top",))),
    # vehicles
    ("red car to the right of the bus",
     S("red car", "car", ("red",), rel=(("right_of", S("the bus", "bus")),))),
    ("the truck behind the white van on the left",
     S("the truck", "truck", rel=(("behind", S("the white van", "van", ("white",), pos=("left",))),))),
    ("motorcycle next to the car and left of the bike",
     S("motorcycle", "motorcycle", rel=(("next_to", S("the car", "car")), ("left_of", S("the bike", "bike"))))),
    ("bus in the middle, not the red one", S("bus", "bus", pos=("middle",), **{"not": ("the red one",)})),
    ("biggest boat at the bottom", S("boat", "boat", pos=("bottom",), sup=("largest",))),
    ("the plane that isn't white", S("the plane", "plane", **{"not": ("white plane",)})),
    ("bike leaning against the wall", S("bike leaning against the wall", "bike")),
    ("train on the right side", S("train", "train", pos=("right",))),
    ("car parked beneath the bridge", S("car", "car", rel=(("under", S("the bridge", "bridge")),))),
    # fallbacks: nothing left for the subject / a relation without an anchor
    ("on the left", S("on the left", "left", pos=("left",), fallback=True)),
    ("left of", S("left of", "left", fallback=True)),
    ("the one on the right", S("the one", "one", pos=("right",))),
    ("not red", S("not red", "red", ("not",), fallback=True, **{"not": ("red",)})),
]


@pytest.mark.parametrize("expression,expected", TABLE, ids=[t[0] for t in TABLE])
def test_refcoco_style_table(expression, expected):
    assert summary(parse(expression)) == expected


def test_table_is_large_and_uses_every_relation_kind():
    assert len(TABLE) >= 40
    kinds = {r[0].lstrip("!") for _, exp in TABLE for r in exp.get("rel", ())}
    assert kinds == set(RELATION_KINDS)


def _phrase_expectation(phrase: NounPhrase) -> tuple[str, tuple[str, ...]]:
    return phrase.shape, tuple(w for w in (phrase.size, phrase.color) if w)


def _check_synthetic(expr: Expression) -> None:
    q = parse(expr.text())
    head, attrs = _phrase_expectation(expr.head)
    det = "the" if expr.superlative is not None else expr.determiner
    assert not q.fallback, expr.text()
    assert (q.subject.head, q.subject.attributes) == (head, attrs), expr.text()
    assert q.subject.text == f"{det} {expr.head.text()}", expr.text()
    assert q.subject.determiner == det
    assert [p.kind for p in q.positions] == ([expr.position] if expr.position else []), expr.text()
    assert all(not p.negated for p in q.positions)
    assert [s.kind for s in q.superlatives] == ([expr.superlative] if expr.superlative else []), expr.text()
    assert not q.negations
    if expr.relation is None:
        assert not q.relations, expr.text()
        return
    assert [r.kind for r in q.relations] == [expr.relation], expr.text()
    anchor = q.relations[0].anchor
    assert len(q.relations[0].anchors) == 1
    assert (anchor.subject.head, anchor.subject.attributes) == _phrase_expectation(expr.ref), expr.text()
    assert anchor.subject.text == f"the {expr.ref.text()}"
    assert not anchor.has_cues and not anchor.fallback
    assert q.phrases() == [q.subject.text, anchor.subject.text] or q.subject.text == anchor.subject.text


def _all_phrases(allow_size: bool = True):
    for shape in SHAPES:
        for color in (None, *COLORS):
            for size in ((None, *SIZES) if allow_size else (None,)):
                yield NounPhrase(shape, color, size)


def test_synthetic_grammar_attribute_position_superlative_exhaustive():
    """Every attribute, position and superlative expression the generator can write."""
    n = 0
    for phrase in _all_phrases():
        for det in ("the", "a"):
            _check_synthetic(Expression(phrase, determiner=det))
        for position in POSITIONS:
            _check_synthetic(Expression(phrase, position=position))
            n += 1
    for phrase in _all_phrases(allow_size=False):
        for sup in SUPERLATIVES:
            _check_synthetic(Expression(phrase, superlative=sup))
            n += 1
    assert n == 8 * 9 * 3 * len(POSITIONS) + 8 * 9 * len(SUPERLATIVES)


def test_synthetic_grammar_every_relation_with_every_phrase_shape():
    phrases = list(_all_phrases())
    rng = np.random.default_rng(0)
    for relation in RELATIONS:
        for head in phrases:  # every subject form, with a random anchor, and every anchor form
            _check_synthetic(Expression(head, relation=relation, ref=phrases[int(rng.integers(len(phrases)))]))
            _check_synthetic(Expression(phrases[int(rng.integers(len(phrases)))], relation=relation, ref=head))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_synthetic_generator_samples(seed):
    """The generator's own random draws (all forms), with both determiners."""
    rng = np.random.default_rng(seed)
    seen = set()
    for _ in range(400):
        expr = random_expression(rng)
        seen.add(expr.type if expr.superlative is None else "superlative")
        _check_synthetic(expr)
        if expr.superlative is None:
            _check_synthetic(dataclasses.replace(expr, determiner="a"))
    assert seen == {"attribute", "position", "relation", "superlative"}


def test_synthetic_kinds_are_parser_kinds():
    assert set(POSITIONS) <= set(POSITION_KINDS)
    assert set(RELATIONS) <= set(RELATION_KINDS)


def test_normalisation_punctuation_case_hyphens_contractions():
    q = parse("The  Dog, LEFT-MOST; that isn't Black!")
    assert q.subject.text == "the dog"
    assert [p.kind for p in q.positions] == ["left"]
    assert [n.phrase.text for n in q.negations] == ["black dog"]
    assert parse("a t-shirt").subject.head == "t-shirt"


def test_phrases_lists_every_text_to_encode_once():
    q = parse("the cup between the plate and the plate without a handle")
    assert q.phrases() == ["the cup", "the plate", "a handle"]
    nested = parse("the red circle left of the square above the star")
    assert nested.relations[0].anchor.relations[0].anchor.subject.text == "the star"
    assert nested.phrases() == ["the red circle", "the square", "the star"]


def test_plain_phrase_is_not_a_fallback_and_keeps_the_whole_text():
    q = parse("a red mug")
    assert (q.subject.text, q.subject.head, q.subject.attributes, q.has_cues, q.fallback) == ("a red mug", "mug", ("red",), False, False)


def test_never_crashes_on_word_salad_of_cue_words():
    words = ["the", "a", "left", "right", "of", "to", "on", "top", "bottom", "not", "without", "no", "and", ",", "between", "next", "near", "above", "below", "behind", "in", "front", "largest", "bigger", "dog", "cat", "red", "tank", "hat", "over", "middle", "aged", "picture", "that", "is", "which", "side", "corner", "far"]
    rng = np.random.default_rng(0)
    for _ in range(3000):
        tokens = list(rng.choice(words, size=int(rng.integers(1, 9))))
        if set(tokens) == {","}:
            continue
        q = parse(" ".join(tokens))
        assert q.subject.head and all(t.strip() for t in q.phrases())
        assert all(a.subject.text for r in q.relations for a in r.anchors)


@pytest.mark.parametrize("bad", ["", "   ", ",,", 3])
def test_empty_or_non_string_expression_is_a_clear_error(bad):
    with pytest.raises(ResedisError, match="expression"):
        parse(bad)


def test_cli_parse_tree_and_json(capsys):
    assert main(["parse", "the red circle left of the largest blue square"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["subject", "the", "red", "circle", "[head:", "circle;", "attributes:", "red]"]
    assert "relation     left_of" in out and "  superlative largest" in out
    assert main(["parse", "--json", "dog not on the left"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["subject"]["head"] == "dog"
    assert data["positions"] == [{"kind": "left", "words": "not on the left", "negated": True}]


def test_cli_parse_subprocess_and_error():
    ok = subprocess.run([sys.executable, "-m", "resedis", "parse", "--json", "cat under the table"],
                        capture_output=True, text=True, check=True)
    assert json.loads(ok.stdout)["relations"][0]["anchors"][0]["subject"]["text"] == "the table"
    bad = subprocess.run([sys.executable, "-m", "resedis", "parse", " "], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "empty expression" in bad.stderr
