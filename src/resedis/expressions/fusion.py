"""Compositional scoring: combine per-region phrase logits with geometric priors.

Inputs (struct of arrays over R regions of I images): for every phrase of a parsed query
(:meth:`ParsedQuery.phrases`: subject, anchors, excluded phrases) its logit at every
region (the detector's own logit for that phrase and box, e.g. from one inner-product
search), the boxes ``(R, 4)`` xyxy pixels, ``region_image (R,)`` in ``[0, I)`` and the
image sizes ``(I, 2)`` as ``(W, H)``. Regions interact only with regions of their own
image. Output: the combined logit per region and an ``explain`` breakdown whose entries
sum to it exactly.

Notation for one image of size W x H: box i has centre ``(u_i, v_i) = (cx/W, cy/H)``,
width ``w_i``, height ``h_i``, area ``A_i``; ``σ`` is the logistic function; ``s_i`` the
subject logit, ``p_i = σ(s_i)``. All weights and constants are fields of
:class:`FusionWeights` (defaults there). The combined logit is

    z_i = s_i + Σ_cues contribution_i(cue)

* **Absolute position** ``k`` (thirds, as the synthetic grammar defines them), margin
  ``m_left = 1/3 - u``, ``m_right = u - 2/3``, ``m_top = 1/3 - v``, ``m_bottom =
  v - 2/3``, ``m_middle = min(1/6 - |u - ½|, 1/6 - |v - ½|)``, a corner = the min of its
  two margins; plus a **relative** rank among the subject's candidates (RefCOCO's "the
  left man" is the leftmost man, wherever he is):

      contribution = position · log σ(m_k(i) / position_temperature)
                   + position_relative · log ρ_i(d)

  with the soft rank ``ρ_i(d) = (Σ_{j≠i} p_j σ(d_ij / rank_temperature) + κ/2) /
  (Σ_{j≠i} p_j + κ)``, ``κ = rank_prior`` (a lone candidate gets ½), over the other
  regions j of the image, and ``d_ij`` how much further j lies from side k than i
  (left: ``u_j - u_i``; right: ``u_i - u_j``; top: ``v_j - v_i``; bottom: ``v_i - v_j``;
  middle: ``e_j - e_i``, ``e = max(|u - ½|, |v - ½|)``; a corner: the sum of its two
  axes' terms). A negated position uses ``-m`` and ``-d``.
* **Superlative** (largest / smallest / tallest / shortest): ``size · log ρ'_i`` where
  ``ρ'`` is ``ρ`` with ``d_ij = log A_i - log A_j`` for largest (``log A_j - log A_i``
  for smallest; heights ``h`` for tallest / shortest) and ``size_temperature`` in place
  of ``rank_temperature``: the soft share of the subject's probability mass box i beats.
* **Relation** ``r`` with anchor logits ``t`` (the anchor phrase composed recursively
  with its own cues), ``q_j = σ(t_j)``:

      M_i = max_{j ≠ i, same image, IoU(i, j) < overlap_max} q_j · g_r(i, j)   (0 if none)
      contribution = relation · log((M_i + ε) / (1 + ε)),  ε = relation_floor

  (negated: ``1 - M_i`` in place of ``M_i``). With ``ŵ = (w_i + w_j)/2``, ``ĥ = (h_i +
  h_j)/2``, ``τ = relation_temperature``, ``β = relation_slack``, ``gap`` the boxes'
  Chebyshev gap (0 when they touch or overlap) over ``min(W, H)``, ``near =
  σ((near_fraction - gap) / near_temperature)``, ``ox`` the horizontal overlap over
  ``min(w_i, w_j)`` clipped to [0, 1]:
  left_of ``σ(((x0_j - x1_i)/ŵ + β)/τ)`` · right_of ``σ(((x0_i - x1_j)/ŵ + β)/τ)`` ·
  above ``σ(((y0_j - y1_i)/ĥ + β)/τ)`` · below ``σ(((y0_i - y1_j)/ĥ + β)/τ)`` ·
  next_to ``near`` · on_top_of ``σ((cy_j - cy_i)/(ĥτ)) · ox · near`` ·
  under ``σ((cy_i - cy_j)/(ĥτ)) · ox`` · behind ``σ((y1_j - y1_i)/(ĥτ)) · near`` ·
  in_front_of ``σ((y1_i - y1_j)/(ĥτ)) · near``.
  **between** anchors a, b: ``M_i = max(L^a_i R^b_i, R^a_i L^b_i, T^a_i B^b_i, B^a_i
  T^b_i)`` where ``L^a_i = max_j q^a_j σ((u_i - u_j)/position_temperature)`` (an a-box
  to the left of i; R, T, B likewise), same exclusions.
* **Negation** (an excluded phrase with logits ``n``): ``-negation · σ(n_i)``.

>>> import numpy as np
>>> from resedis.expressions import parse
>>> q = parse("the circle to the left of the square")
>>> boxes = np.array([[10, 40, 30, 60], [70, 40, 90, 60]], float)
>>> logits = {"the circle": np.array([2.0, 2.0]), "the square": np.array([-5.0, 5.0])}
>>> out = compose_image(q, logits, boxes, width=100, height=100)
>>> int(np.argmax(out.logits))
0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from resedis.errors import ResedisError
from resedis.expressions.geometry import (
    AXES,
    RegionLayout,
    log_sigmoid,
    position_margin,
    relation_geometry,
    sigmoid,
)
from resedis.expressions.query import ParsedQuery, Position, Relation, Superlative
from resedis.expressions.weights import FusionWeights


@dataclass
class Composition:
    """``logits (R,)`` combined; ``explain``: label -> (R,) contribution, summing to logits
    (labels: ``subject``, ``position left``, ``largest``, ``relation left_of: the square``,
    ``not: a hat``)."""

    logits: np.ndarray
    explain: dict[str, np.ndarray] = field(default_factory=dict)


def _rank(layout: RegionLayout, p: np.ndarray, d_fn, temperature: float, kappa: float) -> np.ndarray:
    """log ρ_i: the soft share of the other regions' subject mass that region i beats."""

    def fn(g, pairs):
        d = d_fn(g)  # (B, M, M): d[i, j]
        pj = np.where(pairs, g(p)[:, None, :], 0.0)
        num = (pj * sigmoid(d / temperature)).sum(-1) + kappa / 2
        den = pj.sum(-1) + kappa
        return np.log(np.maximum(num, 1e-300) / np.maximum(den, 1e-300))

    return layout.pairwise(fn)


def _diff(a: np.ndarray):
    """d_fn: ``d[i, j] = a_j - a_i``."""
    return lambda g: g(a)[:, None, :] - g(a)[:, :, None]


def _position(layout: RegionLayout, cue: Position, p: np.ndarray, w: FusionWeights) -> np.ndarray:
    sign = -1.0 if cue.negated else 1.0
    absolute = log_sigmoid(sign * position_margin(cue.kind, layout.u, layout.v) / w.position_temperature)
    if cue.kind == "middle":
        e = np.maximum(np.abs(layout.u - 0.5), np.abs(layout.v - 0.5))
        d = _diff(e)
    else:
        terms = [(getattr(layout, AXES[k][0]), AXES[k][1]) for k in cue.kind.split("_")]
        total = sum(s * a for a, s in terms)  # larger = further from the side(s)
        d = _diff(total)
    relative = (_rank(layout, p, lambda g: sign * d(g), w.rank_temperature, w.rank_prior)
                if w.position_relative else np.zeros(layout.n))
    return w.position * absolute + w.position_relative * relative


def _superlative(layout: RegionLayout, cue: Superlative, p: np.ndarray, w: FusionWeights) -> np.ndarray:
    measure = np.log(layout.area if cue.kind in ("largest", "smallest") else layout.h)
    sign = 1.0 if cue.kind in ("largest", "tallest") else -1.0
    sign = -sign if cue.negated else sign
    d = _diff(measure)  # m_j - m_i; largest wants m_i - m_j > 0
    return w.size * _rank(layout, p, lambda g: -sign * d(g), w.size_temperature, w.rank_prior)


def _relation(layout: RegionLayout, cue: Relation, anchors: list[np.ndarray], w: FusionWeights) -> np.ndarray:
    qs = [sigmoid(t) for t in anchors]

    def fn(g, pairs):
        allowed = pairs & (layout.iou(g) < w.overlap_max)
        if cue.kind != "between":
            score = np.where(allowed, g(qs[0])[:, None, :] * relation_geometry(cue.kind, layout, g, w), 0.0)
            return score.max(-1)
        sides = {}
        for name, coord, sign in (("L", layout.u, 1), ("R", layout.u, -1), ("T", layout.v, 1), ("B", layout.v, -1)):
            x = g(coord)
            geo = sigmoid(sign * (x[:, :, None] - x[:, None, :]) / w.position_temperature)
            for k, q in enumerate(qs):
                sides[name, k] = np.where(allowed, g(q)[:, None, :] * geo, 0.0).max(-1)
        return np.maximum.reduce([sides["L", 0] * sides["R", 1], sides["R", 0] * sides["L", 1],
                                  sides["T", 0] * sides["B", 1], sides["B", 0] * sides["T", 1]])

    m = layout.pairwise(fn)
    if cue.negated:
        m = 1.0 - m
    eps = w.relation_floor
    return w.relation * np.log((m + eps) / (1 + eps))


def _label(explain: dict, label: str) -> str:
    k, out = 2, label
    while out in explain:
        out, k = f"{label} #{k}", k + 1
    return out


def _compose(parsed: ParsedQuery, logits: Mapping[str, np.ndarray], layout: RegionLayout, w: FusionWeights) -> Composition:
    def phrase_logits(text: str) -> np.ndarray:
        if text not in logits:
            raise ResedisError(f"no logits for the phrase {text!r}; pass one (R,) array for every text of "
                               f"parsed.phrases() ({parsed.phrases()})")
        arr = np.asarray(logits[text], dtype=np.float64)
        if arr.shape != (layout.n,):
            raise ResedisError(f"logits for {text!r} have shape {arr.shape}; expected ({layout.n},), one per region")
        return arr

    s = phrase_logits(parsed.subject.text)
    p = sigmoid(s)
    explain: dict[str, np.ndarray] = {"subject": s}
    for cue in parsed.positions:
        explain[_label(explain, f"position {'not ' if cue.negated else ''}{cue.kind}")] = _position(layout, cue, p, w)
    for cue in parsed.superlatives:
        explain[_label(explain, f"{'not ' if cue.negated else ''}{cue.kind}")] = _superlative(layout, cue, p, w)
    for cue in parsed.relations:
        anchors = [_compose(a, logits, layout, w).logits for a in cue.anchors]
        label = f"relation {'not ' if cue.negated else ''}{cue.kind}: " + " & ".join(a.subject.text for a in cue.anchors)
        explain[_label(explain, label)] = _relation(layout, cue, anchors, w)
    for neg in parsed.negations:
        explain[_label(explain, f"not: {neg.phrase.text}")] = -w.negation * sigmoid(phrase_logits(neg.phrase.text))
    total = np.sum(list(explain.values()), axis=0) if len(explain) > 1 else s.copy()
    return Composition(total, explain)


def compose(
    parsed: ParsedQuery,
    logits: Mapping[str, np.ndarray],
    boxes: np.ndarray,
    region_image: np.ndarray,
    image_sizes: np.ndarray,
    weights: FusionWeights | None = None,
) -> Composition:
    """Combined logits for every region of many images (see the module docstring).

    ``logits``: phrase text -> (R,) logits for every text of ``parsed.phrases()``;
    ``boxes`` (R, 4) xyxy px; ``region_image`` (R,) int in [0, I); ``image_sizes`` (I, 2)
    as (W, H) px. Returns a :class:`Composition` over the R regions.
    """
    weights = weights or FusionWeights()
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ResedisError(f"boxes must be (R, 4) xyxy pixels, got shape {b.shape}")
    ri = np.asarray(region_image)
    if ri.shape != (len(b),) or (ri.size and not np.issubdtype(ri.dtype, np.integer)):
        raise ResedisError(f"region_image must be (R,) = ({len(b)},) integers, got shape {ri.shape} dtype {ri.dtype}")
    sizes = np.asarray(image_sizes, dtype=np.float64).reshape(-1, 2)
    if ri.size and (ri.min() < 0 or ri.max() >= len(sizes)):
        raise ResedisError(f"region_image values must index image_sizes (0 .. {len(sizes) - 1}), "
                           f"got {ri.min()} .. {ri.max()}")
    if np.any(sizes <= 0):
        raise ResedisError("image_sizes must be positive (W, H) pixels")
    return _compose(parsed, logits, RegionLayout(b, ri.astype(np.int64), sizes), weights)


def compose_image(
    parsed: ParsedQuery,
    logits: Mapping[str, np.ndarray],
    boxes: np.ndarray,
    width: float,
    height: float,
    weights: FusionWeights | None = None,
) -> Composition:
    """:func:`compose` for the N regions of ONE image of size ``width`` x ``height``."""
    n = len(np.asarray(boxes).reshape(-1, 4))
    return compose(parsed, logits, np.asarray(boxes).reshape(-1, 4), np.zeros(n, dtype=np.int64),
                   np.array([[width, height]], dtype=np.float64), weights)
