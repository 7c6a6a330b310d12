"""Relational re-scoring for the ``clip-crops`` baseline, from box geometry only.

A crop encoder sees one crop at a time, so spatial and comparative words ("on the left",
"the largest", "left of the square") carry no signal for it. This module parses those
words out of the expression and turns them into per-box geometric priors in [0, 1].

Parsing (:func:`parse_expression`, lower-cased, word-boundary matches):

* relations with an anchor — the rest of the expression after the phrase is the anchor:
  ``to the left of`` / ``left of`` -> ``left_of``; ``to the right of`` / ``right of`` ->
  ``right_of``; ``above`` / ``over`` -> ``above``; ``below`` / ``under`` / ``beneath`` ->
  ``below``; ``next to`` / ``beside`` / ``near`` / ``close to`` / ``closest to`` /
  ``nearest to`` / ``nearest`` -> ``near``;
* absolute positions in the subject part: ``left``/``leftmost`` -> ``left``; ``right``/
  ``rightmost`` -> ``right``; ``top``/``topmost``/``upper`` -> ``top``; ``bottom``/
  ``bottommost``/``lower`` -> ``bottom``; ``middle``/``center``/``centre``/``central``
  -> ``middle`` (``top left corner`` gives ``top`` and ``left``);
* comparatives/superlatives: ``largest``/``biggest``/``larger``/``bigger`` ->
  ``largest``; ``smallest``/``smaller``/``tiniest`` -> ``smallest`` (the nominal sizes
  ``large``/``small`` are attributes, left to the crop encoder).

The *head* is the subject part with those words (and ``on/at/in the``, ``corner``)
removed; the crop encoder scores crops against the head (the full expression when no
cue was found).

Priors (:func:`cue_priors`), for boxes ``(N, 4)`` xyxy px of one image of size W x H,
centres ``cx, cy``, areas ``A``:

* ``left`` 1 - cx/W · ``right`` cx/W · ``top`` 1 - cy/H · ``bottom`` cy/H ·
  ``middle`` 1 - 2·max(|cx/W - ½|, |cy/H - ½|);
* ``largest`` A / max A · ``smallest`` min A / A;
* relation ``r`` with anchor scores ``a_j`` (the anchor phrase's crop scores, min-max
  normalised to [0, 1] within the image): ``prior_i = max_{j != i, IoU(i,j) < 0.5}
  a_j · g_r(i, j)`` (0 when there is no such j), with ``g`` linear ramps:
  ``left_of`` clip(1 - (x1_i - x0_j) / w_i) · ``right_of`` clip(1 - (x1_j - x0_i) / w_i) ·
  ``above`` clip(1 - (y1_i - y0_j) / h_i) · ``below`` clip(1 - (y1_j - y0_i) / h_i) ·
  ``near`` clip(1 - gap(i, j) / (0.25·min(W, H))), gap = the boxes' Chebyshev gap
  (0 when touching or overlapping). So ``g = 1`` exactly when the relation holds
  strictly, falling to 0 over one box size of violation.

Re-scoring (:func:`rescore`): ``s'_i = s_i + weight · Σ_cues (prior_i - 1)`` on the crop
encoder's cosine similarity ``s`` (the best-placed box keeps its similarity; a box that
violates a cue fully loses ``weight``). ``weight`` (default :data:`DEFAULT_WEIGHT`) is
fitted with the threshold by ``resedis calibrate``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from resedis.boxes import box_iou

DEFAULT_WEIGHT = 0.05
NEAR_FRACTION = 0.25

RELATION_PHRASES: tuple[tuple[str, str], ...] = (
    ("to the left of", "left_of"),
    ("to the right of", "right_of"),
    ("left of", "left_of"),
    ("right of", "right_of"),
    ("closest to", "near"),
    ("nearest to", "near"),
    ("close to", "near"),
    ("next to", "near"),
    ("beside", "near"),
    ("nearest", "near"),
    ("near", "near"),
    ("above", "above"),
    ("over", "above"),
    ("below", "below"),
    ("under", "below"),
    ("beneath", "below"),
)
ABSOLUTE_WORDS: dict[str, str] = {
    "left": "left", "leftmost": "left",
    "right": "right", "rightmost": "right",
    "top": "top", "topmost": "top", "upper": "top",
    "bottom": "bottom", "bottommost": "bottom", "lower": "bottom",
    "middle": "middle", "center": "middle", "centre": "middle", "central": "middle",
}
COMPARATIVE_WORDS: dict[str, str] = {
    "largest": "largest", "biggest": "largest", "larger": "largest", "bigger": "largest",
    "smallest": "smallest", "smaller": "smallest", "tiniest": "smallest",
}
FILLER = re.compile(r"\b(?:on|at|in)\s+the\b|\bcorner\b|\bmost\b")
RELATIONS = ("left_of", "right_of", "above", "below", "near")


@dataclass(frozen=True)
class Cue:
    """One spatial/comparative cue; ``anchor`` is the anchor phrase of a relation."""

    kind: str
    anchor: str | None = None


@dataclass(frozen=True)
class ParsedExpression:
    """``head``: what the crop encoder scores; ``cues``: what geometry re-scores."""

    text: str
    head: str
    cues: tuple[Cue, ...] = field(default_factory=tuple)

    @property
    def anchors(self) -> list[str]:
        return [c.anchor for c in self.cues if c.anchor]


def _clean(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip(" .,;")
    return re.sub(r"^(?:the|a|an)\s+", "", text).strip() or text


def parse_expression(text: str) -> ParsedExpression:
    """Split an expression into head phrase and cues (see the module docstring)."""
    low = " ".join(str(text).lower().split())
    subject, cues = low, []
    for phrase, kind in RELATION_PHRASES:
        m = re.search(rf"\b{re.escape(phrase)}\b", low)
        if m:
            anchor = _clean(low[m.end():])
            subject = low[: m.start()]
            if anchor:
                cues.append(Cue(kind, anchor))
            break
    words = subject.split()
    kept = []
    for w in words:
        w_stripped = w.strip(".,;")
        kind = ABSOLUTE_WORDS.get(w_stripped) or COMPARATIVE_WORDS.get(w_stripped)
        if kind is None:
            kept.append(w)
        elif Cue(kind) not in cues:
            cues.append(Cue(kind))
    head = _clean(FILLER.sub(" ", " ".join(kept))) if cues else low
    if not head.strip():
        head = low
    return ParsedExpression(text=low, head=head, cues=tuple(cues))


def _gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) -> (N, M) Chebyshev gap between boxes (0 if touching/overlapping)."""
    dx = np.maximum(0, np.maximum(b[None, :, 0] - a[:, None, 2], a[:, None, 0] - b[None, :, 2]))
    dy = np.maximum(0, np.maximum(b[None, :, 1] - a[:, None, 3], a[:, None, 1] - b[None, :, 3]))
    return np.maximum(dx, dy)


def relation_matrix(kind: str, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 4) boxes -> (N, N) ``g(i, j)`` in [0, 1]: how well box i stands in relation
    ``kind`` to anchor box j (see the module docstring)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    w = np.maximum(b[:, 2] - b[:, 0], 1.0)[:, None]
    h = np.maximum(b[:, 3] - b[:, 1], 1.0)[:, None]
    if kind == "left_of":
        g = 1 - (b[:, None, 2] - b[None, :, 0]) / w
    elif kind == "right_of":
        g = 1 - (b[None, :, 2] - b[:, None, 0]) / w
    elif kind == "above":
        g = 1 - (b[:, None, 3] - b[None, :, 1]) / h
    elif kind == "below":
        g = 1 - (b[None, :, 3] - b[:, None, 1]) / h
    elif kind == "near":
        g = 1 - _gap(b, b) / (NEAR_FRACTION * max(1.0, min(width, height)))
    else:
        raise ValueError(f"unknown relation {kind!r}; known: {RELATIONS}")
    return np.clip(g, 0.0, 1.0)


def absolute_prior(kind: str, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 4) boxes -> (N,) prior in [0, 1] for an absolute or comparative cue."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    cx = (b[:, 0] + b[:, 2]) / 2 / max(width, 1)
    cy = (b[:, 1] + b[:, 3]) / 2 / max(height, 1)
    area = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-9)
    table = {
        "left": lambda: 1 - cx,
        "right": lambda: cx,
        "top": lambda: 1 - cy,
        "bottom": lambda: cy,
        "middle": lambda: 1 - 2 * np.maximum(np.abs(cx - 0.5), np.abs(cy - 0.5)),
        "largest": lambda: area / area.max(),
        "smallest": lambda: area.min() / area,
    }
    if kind not in table:
        raise ValueError(f"unknown cue {kind!r}")
    return np.clip(table[kind](), 0.0, 1.0) if len(b) else np.zeros(0)


def cue_priors(
    cue: Cue, boxes: np.ndarray, width: int, height: int, anchor_scores: np.ndarray | None = None
) -> np.ndarray:
    """(N,) prior of every box for one cue. Relations need ``anchor_scores`` (N,): the
    anchor phrase's score for each box (any scale; min-max normalised here)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if cue.kind not in RELATIONS:
        return absolute_prior(cue.kind, b, width, height)
    if anchor_scores is None:
        raise ValueError(f"relation {cue.kind!r} needs anchor scores")
    if len(b) < 2:
        return np.zeros(len(b))
    a = np.asarray(anchor_scores, np.float64)
    span = a.max() - a.min()
    a = (a - a.min()) / span if span > 0 else np.ones_like(a)
    g = relation_matrix(cue.kind, b, width, height) * a[None, :]
    g[box_iou(b, b) >= 0.5] = 0.0  # an anchor is another object (this also drops j == i)
    return g.max(axis=1)


def rescore(
    scores: np.ndarray,
    boxes: np.ndarray,
    parsed: ParsedExpression,
    width: int,
    height: int,
    *,
    anchor_scores: dict[str, np.ndarray] | None = None,
    weight: float = DEFAULT_WEIGHT,
) -> np.ndarray:
    """``s'_i = s_i + weight · Σ_cues (prior_i - 1)`` for one image's boxes.

    scores (N,) crop-text similarities; boxes (N, 4) xyxy px; ``anchor_scores`` maps each
    anchor phrase to its (N,) crop scores. Returns (N,) float64.
    """
    s = np.asarray(scores, np.float64).copy()
    for cue in parsed.cues:
        anchor = None if cue.anchor is None else (anchor_scores or {}).get(cue.anchor)
        s += weight * (cue_priors(cue, boxes, width, height, anchor) - 1.0)
    return s
