"""What a region row must satisfy to be used at all: finite numbers and a possible box.

One definition, used by ``resedis verify`` (to report damage) and by search (to keep
damaged rows out of every answer): a region is *sane* when its box, vector (and, when
given, objectness) are finite and its box is a box of its image — ``x0 <= x1``,
``y0 <= y1`` and inside ``[0, width] x [0, height]`` up to :data:`BOX_SLACK` pixels.
Boxes are xyxy in original-image pixels (the writer clips them to the image).

>>> import numpy as np
>>> boxes = np.array([[0, 0, 4, 4], [0, 0, 1e16, 2], [3, 0, 1, 2], [0, np.nan, 1, 1]], np.float32)
>>> sane_regions(boxes, np.ones((4, 2), np.float16), np.array([[10, 10]] * 4)).tolist()
[True, False, False, False]
"""

from __future__ import annotations

import numpy as np

# Boxes may exceed the image by this many pixels (float rounding of the clip).
BOX_SLACK = 0.5


def finite_rows(matrix: np.ndarray) -> np.ndarray:
    """(N, K) -> (N,) bool: every value of the row is finite."""
    matrix = np.asarray(matrix)
    if matrix.ndim == 1:
        return np.isfinite(matrix)
    return np.isfinite(matrix).all(axis=1) if matrix.shape[1] else np.ones(len(matrix), bool)


def possible_boxes(boxes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy boxes, (N, 2) image (width, height) -> (N,) bool: the box lies in its
    image (:data:`BOX_SLACK` allowed) and is not inverted. Non-finite boxes are False."""
    boxes = np.asarray(boxes, np.float64)
    sizes = np.asarray(sizes, np.float64).reshape(-1, 2)
    with np.errstate(invalid="ignore"):
        return (
            finite_rows(boxes)
            & (boxes[:, 0] >= -BOX_SLACK) & (boxes[:, 1] >= -BOX_SLACK)
            & (boxes[:, 2] <= sizes[:, 0] + BOX_SLACK) & (boxes[:, 3] <= sizes[:, 1] + BOX_SLACK)
            & (boxes[:, 0] <= boxes[:, 2]) & (boxes[:, 1] <= boxes[:, 3])
        )


def sane_regions(boxes: np.ndarray, vectors: np.ndarray, sizes: np.ndarray, objectness: np.ndarray | None = None) -> np.ndarray:
    """(N,) bool: finite box, vector (and objectness) and a possible box (see the module doc)."""
    ok = possible_boxes(boxes, sizes) & finite_rows(vectors)
    if objectness is not None:
        ok &= np.isfinite(np.asarray(objectness, np.float64))
    return ok
