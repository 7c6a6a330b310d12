"""Score fusion for ``owl+rerank``: OWL's corpus-scale detections + a grounding model's boxes.

For one image, with OWL hits ``(o_j, s_j)`` (box, OWL score in [0, 1]) and the grounding
model's detections ``(g_k, p_k)`` (box, grounding score in [0, 1]):

* candidates = every OWL box and the grounding model's ``grounder_boxes`` best boxes;
* each candidate ``c`` gets one piece of evidence from each model — the best score among
  that model's boxes overlapping it with IoU >= ``match_iou`` (0 when none does; a box
  is its own match, so an OWL box keeps its own OWL score):
  ``owl(c) = max{s_j : IoU(c, o_j) >= match_iou}``, ``gd(c) = max{p_k : IoU(c, g_k) >= match_iou}``;
* fused score: ``f(c) = (1 - λ) · owl(c) + λ · gd(c)`` (λ = ``weight`` in [0, 1]; λ = 0
  is plain OWL, λ = 1 trusts only the grounding model);
* greedy NMS at ``nms_iou`` on the fused scores.

A convex combination of two probabilities is again in [0, 1], so one presence threshold
applies; λ and that threshold are fitted together on a labelled split by
:mod:`resedis.calibrate` (grid over λ, best discovery F1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from resedis.boxes import box_iou, nms
from resedis.errors import ResedisError


@dataclass(frozen=True)
class FusionParams:
    """Parameters of :func:`fuse_image` (see the module docstring)."""

    weight: float = 0.5
    match_iou: float = 0.5
    grounder_boxes: int = 5
    nms_iou: float = 0.5

    def validate(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ResedisError(f"fusion weight must be in [0, 1], got {self.weight}")
        if not 0.0 < self.match_iou <= 1.0:
            raise ResedisError(f"fusion match_iou must be in (0, 1], got {self.match_iou}")
        if self.grounder_boxes < 0:
            raise ResedisError(f"fusion grounder_boxes must be >= 0, got {self.grounder_boxes}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ResedisError(f"fusion nms_iou must be in (0, 1], got {self.nms_iou}")

    def to_json(self) -> dict:
        return asdict(self)


def evidence(candidates: np.ndarray, boxes: np.ndarray, scores: np.ndarray, match_iou: float) -> np.ndarray:
    """(C, 4) candidate boxes, (M, 4) boxes with (M,) scores -> (C,) best score among boxes
    with IoU >= ``match_iou`` (0 where none)."""
    candidates = np.asarray(candidates, np.float64).reshape(-1, 4)
    if len(candidates) == 0 or len(boxes) == 0:
        return np.zeros(len(candidates))
    iou = box_iou(candidates, boxes)
    masked = np.where(iou >= match_iou - 1e-12, np.asarray(scores, np.float64)[None, :], 0.0)
    return masked.max(axis=1)


def fuse_image(
    owl_boxes: np.ndarray,
    owl_scores: np.ndarray,
    gd_boxes: np.ndarray,
    gd_scores: np.ndarray,
    params: FusionParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fuse one image's detections. Boxes xyxy px; scores in [0, 1].

    Returns ``(boxes (K, 4), fused (K,), owl (K,), gd (K,))`` after NMS, by fused score
    descending (ties: OWL candidates first, then in input order).
    """
    params.validate()
    owl_boxes = np.asarray(owl_boxes, np.float64).reshape(-1, 4)
    gd_boxes = np.asarray(gd_boxes, np.float64).reshape(-1, 4)
    owl_scores = np.asarray(owl_scores, np.float64).reshape(-1)
    gd_scores = np.asarray(gd_scores, np.float64).reshape(-1)
    top = np.argsort(-gd_scores, kind="stable")[: params.grounder_boxes]
    candidates = np.concatenate([owl_boxes, gd_boxes[top]], axis=0)
    if len(candidates) == 0:
        empty = np.zeros(0)
        return np.zeros((0, 4)), empty, empty, empty
    owl_ev = evidence(candidates, owl_boxes, owl_scores, params.match_iou)
    gd_ev = evidence(candidates, gd_boxes, gd_scores, params.match_iou)
    # a box is its own match even when degenerate (zero area has IoU 0 with itself)
    n = len(owl_boxes)
    owl_ev[:n] = np.maximum(owl_ev[:n], owl_scores)
    gd_ev[n:] = np.maximum(gd_ev[n:], gd_scores[top])
    fused = (1.0 - params.weight) * owl_ev + params.weight * gd_ev
    keep = nms(candidates, fused, params.nms_iou)
    return candidates[keep], fused[keep], owl_ev[keep], gd_ev[keep]
