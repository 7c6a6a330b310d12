"""The referring-expression grammar of the synthetic benchmark and its exact semantics.

Every predicate is defined over an object's attributes (shape, colour, nominal size)
and the geometry of its VISIBLE mask, so anyone can re-evaluate an expression from
``instances.json`` alone:

* ``box`` = pycocotools ``toBbox`` of the mask, as xyxy ``(x0, y0, x1, y1)`` =
  ``(x, y, x + w, y + h)``; centre ``cx = (x0 + x1) / 2``, ``cy = (y0 + y1) / 2``;
* ``area`` = number of mask pixels; ``W, H`` = the image's width and height.

Noun phrase ``[size] [colour] shape`` — matches objects with that shape and, when given,
that colour and nominal size (``attributes`` in ``instances.json``).

Absolute positions (image split in thirds):
``on the left``: cx < W/3 · ``on the right``: cx > 2W/3 · ``at the top``: cy < H/3 ·
``at the bottom``: cy > 2H/3 · ``in the middle``: W/3 <= cx <= 2W/3 and H/3 <= cy <= 2H/3 ·
``in the top left corner``: top and left (likewise the other three corners).

Relations ``A <rel> the B`` hold for an object ``a`` matching A when SOME other object
``b`` (b != a) of the same image matches B and:
``to the left of``: a.x1 <= b.x0 · ``to the right of``: a.x0 >= b.x1 ·
``above``: a.y1 <= b.y0 · ``below``: a.y0 >= b.y1 ·
``next to``: gap(a, b) <= NEXT_TO_FRACTION * min(W, H), where
gap = max(max(0, b.x0 - a.x1, a.x0 - b.x1), max(0, b.y0 - a.y1, a.y0 - b.y1))
(touching or overlapping boxes have gap 0).

Superlatives ``the largest / smallest [colour] shape``: in an image with at least two
objects matching the phrase, the one whose area is at least SUPERLATIVE_RATIO times
(largest) / at most 1/SUPERLATIVE_RATIO times (smallest) the area of every other match.
No object satisfies it in an image without such a clear winner.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from resedis.synth.scene import COLORS, SHAPES, SIZES

NEXT_TO_FRACTION = 0.05
SUPERLATIVE_RATIO = 1.2

POSITIONS: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "middle": "in the middle",
    "top_left": "in the top left corner",
    "top_right": "in the top right corner",
    "bottom_left": "in the bottom left corner",
    "bottom_right": "in the bottom right corner",
}
RELATIONS: dict[str, str] = {
    "left_of": "to the left of",
    "right_of": "to the right of",
    "above": "above",
    "below": "below",
    "next_to": "next to",
}
SUPERLATIVES: tuple[str, ...] = ("largest", "smallest")
DETERMINERS: tuple[str, ...] = ("the", "a")


def _vocabulary() -> list[str]:
    words: set[str] = set(SHAPES) | set(COLORS) | set(SIZES) | set(SUPERLATIVES) | set(DETERMINERS)
    for phrase in list(POSITIONS.values()) + list(RELATIONS.values()):
        words.update(phrase.split())
    return sorted(words)


#: Every word the grammar can emit (lowercase, sorted).
VOCABULARY: list[str] = _vocabulary()


@dataclass(frozen=True)
class NounPhrase:
    """``[size] [colour] shape``; ``None`` means "any"."""

    shape: str
    color: str | None = None
    size: str | None = None

    def text(self) -> str:
        return " ".join(w for w in (self.size, self.color, self.shape) if w)

    def matches(self, table: ObjectTable) -> np.ndarray:
        """(N,) bool over the table's objects."""
        ok = table.shape == SHAPES.index(self.shape)
        if self.color is not None:
            ok &= table.color == list(COLORS).index(self.color)
        if self.size is not None:
            ok &= table.size == SIZES.index(self.size)
        return ok


@dataclass(frozen=True)
class Expression:
    """One expression. Exactly one of: nothing (attribute), ``position``,
    ``relation`` + ``ref``, or ``superlative`` is set besides ``head``."""

    head: NounPhrase
    position: str | None = None
    relation: str | None = None
    ref: NounPhrase | None = None
    superlative: str | None = None
    determiner: str = "the"

    def __post_init__(self) -> None:
        forms = [self.position is not None, self.relation is not None, self.superlative is not None]
        if sum(forms) > 1 or (self.relation is None) != (self.ref is None):
            raise ValueError(f"malformed expression {self!r}")
        if self.superlative is not None and self.head.size is not None:
            raise ValueError("a superlative phrase does not take a size word")

    @property
    def type(self) -> str:
        """``attribute``, ``position`` or ``relation`` (superlatives are relations)."""
        if self.position is not None:
            return "position"
        if self.relation is not None or self.superlative is not None:
            return "relation"
        return "attribute"

    @property
    def key(self) -> tuple:
        """Semantic identity (ignores the determiner)."""
        return (self.head, self.position, self.relation, self.ref, self.superlative)

    def text(self) -> str:
        if self.superlative is not None:
            return f"the {self.superlative} {self.head.text()}"
        out = f"{self.determiner} {self.head.text()}"
        if self.position is not None:
            out += " " + POSITIONS[self.position]
        if self.relation is not None:
            assert self.ref is not None
            out += f" {RELATIONS[self.relation]} the {self.ref.text()}"
        return out


class ObjectTable:
    """Struct of arrays over every object of a corpus (N objects), grouped by image
    (``image`` must be non-decreasing: all objects of an image are contiguous).

    ``image`` (N,) int image index, ``shape``/``color``/``size`` (N,) int indices into
    SHAPES / COLORS / SIZES, ``box`` (N, 4) float xyxy of the visible mask, ``area``
    (N,) visible pixels, ``width``/``height`` (N,) the object's image size.
    """

    def __init__(self, image, shape, color, size, box, area, width, height):
        self.image = np.asarray(image, dtype=np.int64)
        self.shape = np.asarray(shape, dtype=np.int64)
        self.color = np.asarray(color, dtype=np.int64)
        self.size = np.asarray(size, dtype=np.int64)
        self.box = np.asarray(box, dtype=np.float64).reshape(-1, 4)
        self.area = np.asarray(area, dtype=np.float64)
        self.width = np.asarray(width, dtype=np.float64)
        self.height = np.asarray(height, dtype=np.float64)
        if np.any(np.diff(self.image) < 0):
            raise ValueError("ObjectTable: objects must be grouped by image (image index non-decreasing)")

    def __len__(self) -> int:
        return len(self.image)

    @cached_property
    def centre(self) -> tuple[np.ndarray, np.ndarray]:
        return (self.box[:, 0] + self.box[:, 2]) / 2.0, (self.box[:, 1] + self.box[:, 3]) / 2.0

    @cached_property
    def pairs(self) -> np.ndarray:
        """(P, 2) every ordered pair (a, b), a != b, of objects in the same image, sorted by a."""
        out = []
        bounds = np.flatnonzero(np.diff(self.image)) + 1
        for group in np.split(np.arange(len(self.image)), bounds):
            if len(group) < 2:
                continue
            a, b = np.meshgrid(group, group, indexing="ij")
            keep = a != b
            out.append(np.stack([a[keep], b[keep]], axis=1))
        return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int64)

    def pairs_of(self, i: int) -> np.ndarray:
        """Indices into :attr:`pairs` of the pairs whose first object is ``i``."""
        lo, hi = np.searchsorted(self.pairs[:, 0], [i, i + 1])
        return np.arange(lo, hi)

    def position_mask(self, position: str) -> np.ndarray:
        """(N,) bool: does the object lie at ``position`` (a key of POSITIONS)."""
        if position not in POSITIONS:
            raise ValueError(f"unknown position {position!r}")
        return self._positions[position]

    @cached_property
    def _positions(self) -> dict[str, np.ndarray]:
        cx, cy = self.centre
        w, h = self.width, self.height
        left, right = cx < w / 3.0, cx > 2.0 * w / 3.0
        top, bottom = cy < h / 3.0, cy > 2.0 * h / 3.0
        return {
            "left": left,
            "right": right,
            "top": top,
            "bottom": bottom,
            "middle": ~left & ~right & ~top & ~bottom,
            "top_left": top & left,
            "top_right": top & right,
            "bottom_left": bottom & left,
            "bottom_right": bottom & right,
        }

    @cached_property
    def _relation_cache(self) -> dict[str, np.ndarray]:
        return {}

    def relation_mask(self, relation: str) -> np.ndarray:
        """(P,) bool over :attr:`pairs`: does relation(a, b) hold."""
        cache = self._relation_cache
        if relation not in cache:
            a, b = self.box[self.pairs[:, 0]], self.box[self.pairs[:, 1]]
            if relation == "left_of":
                ok = a[:, 2] <= b[:, 0]
            elif relation == "right_of":
                ok = a[:, 0] >= b[:, 2]
            elif relation == "above":
                ok = a[:, 3] <= b[:, 1]
            elif relation == "below":
                ok = a[:, 1] >= b[:, 3]
            elif relation == "next_to":
                gap_x = np.maximum.reduce([np.zeros(len(a)), b[:, 0] - a[:, 2], a[:, 0] - b[:, 2]])
                gap_y = np.maximum.reduce([np.zeros(len(a)), b[:, 1] - a[:, 3], a[:, 1] - b[:, 3]])
                first = self.pairs[:, 0]
                limit = NEXT_TO_FRACTION * np.minimum(self.width[first], self.height[first])
                ok = np.maximum(gap_x, gap_y) <= limit
            else:
                raise ValueError(f"unknown relation {relation!r}")
            cache[relation] = ok
        return cache[relation]


def evaluate(expr: Expression, table: ObjectTable) -> np.ndarray:
    """(N,) bool: which objects of the corpus the expression denotes."""
    head = expr.head.matches(table)
    if expr.position is not None:
        return head & table.position_mask(expr.position)
    if expr.relation is not None:
        assert expr.ref is not None
        ref = expr.ref.matches(table)
        pairs = table.pairs
        ok = head[pairs[:, 0]] & ref[pairs[:, 1]] & table.relation_mask(expr.relation)
        out = np.zeros(len(table), dtype=bool)
        out[pairs[ok, 0]] = True
        return out
    if expr.superlative is not None:
        return _superlative(head, table, largest=expr.superlative == "largest")
    return head


def _superlative(candidates: np.ndarray, table: ObjectTable, *, largest: bool) -> np.ndarray:
    idx = np.flatnonzero(candidates)
    out = np.zeros(len(table), dtype=bool)
    if len(idx) < 2:
        return out
    key = -table.area[idx] if largest else table.area[idx]
    order = idx[np.lexsort((key, table.image[idx]))]  # by image, then best first
    img = table.image[order]
    starts = np.flatnonzero(np.r_[True, img[1:] != img[:-1]])
    counts = np.diff(np.r_[starts, len(order)])
    multi = starts[counts >= 2]
    best, runner = order[multi], order[multi + 1]
    if largest:
        clear = table.area[best] >= SUPERLATIVE_RATIO * table.area[runner]
    else:
        clear = SUPERLATIVE_RATIO * table.area[best] <= table.area[runner]
    out[best[clear]] = True
    return out
