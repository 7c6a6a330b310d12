"""Box geometry: IoU, greedy non-maximum suppression, clipping, area.

Boxes are xyxy absolute pixels: ``(N, 4)`` arrays ``[x0, y0, x1, y1]`` with ``x0 <= x1``
and ``y0 <= y1`` for a proper box; a box with ``x1 <= x0`` or ``y1 <= y0`` has zero area.
Mask geometry (RLE) lives in :mod:`resedis.masks`.
"""

from __future__ import annotations

import numpy as np


def box_area(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy -> (N,) area; an inverted or flat box has area 0."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 4) xyxy clipped to the image rectangle ``[0, width] x [0, height]`` (float32)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return np.clip(b, 0, np.asarray([width, height, width, height], np.float32)).astype(np.float32)


#: a box narrower or shorter than this (px, after clipping to its image) shows nothing
MIN_VISIBLE_PX = 0.01


def visible(boxes: np.ndarray, width=None, height=None) -> np.ndarray:
    """(N,) bool: the xyxy ``boxes`` whose part inside their image is wider and taller than
    :data:`MIN_VISIBLE_PX`. ``width`` / ``height``: the image size (scalars, or (N,) arrays
    of each box's image); None when the boxes are already clipped.

    OWLv2 predicts boxes in its square padding too; clipped to a non-square image such a
    box is a line or a point (``[0, 528, 264, 528]``), or, when float round-off puts its
    edge a hair inside the image, a sliver (``[79.99998, 40, 80, 50]``): nothing visible.
    The region encoder never stores such a box and search never returns one."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0 = np.maximum(b[:, 0], 0.0), np.maximum(b[:, 1], 0.0)
    x1 = b[:, 2] if width is None else np.minimum(b[:, 2], width)
    y1 = b[:, 3] if height is None else np.minimum(b[:, 3], height)
    if width is None:
        x0 = b[:, 0]
    if height is None:
        y0 = b[:, 1]
    return (x1 - x0 > MIN_VISIBLE_PX) & (y1 - y0 > MIN_VISIBLE_PX)


def box_iou(a: np.ndarray, b: np.ndarray, *, same_box_is_one: bool = False) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: (N, 4) x (M, 4) -> (N, M). Empty boxes give 0.

    ``same_box_is_one``: two identical boxes count as IoU 1 even when they have no area
    (for suppression: a degenerate box must still suppress its own duplicates). Metrics
    keep the default, the plain IoU.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = box_area(a)
    area_b = box_area(b)
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    if same_box_is_one:
        iou = np.where(np.all(a[:, None, :] == b[None, :, :], axis=2), 1.0, iou)
    return iou


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, highest score first."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(order), dtype=bool)
    iou = box_iou(boxes, boxes, same_box_is_one=True) if len(boxes) else np.zeros((0, 0))
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= iou[i] > iou_threshold
    return np.asarray(keep, dtype=np.int64)
