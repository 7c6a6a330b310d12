"""Box geometry for :mod:`resedis.expressions.fusion`: regions grouped by image in padded
blocks (for the pairwise terms), absolute-position margins and the smooth relation
scores ``g_r(i, j)``. Boxes are xyxy pixels; formulas in the fusion module docstring."""

from __future__ import annotations

import numpy as np

from resedis.errors import ResedisError
from resedis.expressions.weights import FusionWeights

#: Pairwise work per block of images: (images in block) x M x M entries at most.
BLOCK_PAIRS = 1 << 21


def sigmoid(x):
    return np.exp(-np.logaddexp(0.0, -np.asarray(x, dtype=np.float64)))


def log_sigmoid(x):
    return -np.logaddexp(0.0, -np.asarray(x, dtype=np.float64))


class RegionLayout:
    """Per-region geometry and images grouped into padded blocks ``(B, M)`` of region
    indices (-1 = padding) for the pairwise terms."""

    def __init__(self, boxes: np.ndarray, region_image: np.ndarray, image_sizes: np.ndarray):
        self.n = len(boxes)
        b = boxes
        wh = image_sizes[region_image]
        self.W, self.H = wh[:, 0], wh[:, 1]
        self.x0, self.y0, self.x1, self.y1 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
        self.w = np.maximum(self.x1 - self.x0, 1e-6)
        self.h = np.maximum(self.y1 - self.y0, 1e-6)
        self.area = self.w * self.h
        self.u = (self.x0 + self.x1) / 2 / self.W
        self.v = (self.y0 + self.y1) / 2 / self.H
        self.blocks: list[np.ndarray] = []
        if self.n == 0:
            return
        order = np.argsort(region_image, kind="stable")
        img = region_image[order]
        starts = np.flatnonzero(np.r_[True, img[1:] != img[:-1]])
        counts = np.diff(np.r_[starts, self.n])
        m = int(counts.max())
        per_block = max(1, BLOCK_PAIRS // (m * m))
        for k in range(0, len(starts), per_block):
            c, s = counts[k:k + per_block], starts[k:k + per_block]
            rows = np.repeat(np.arange(len(c)), c)
            cols = np.arange(int(c.sum())) - np.repeat(s - s[0], c)
            idx = np.full((len(c), int(c.max())), -1, dtype=np.int64)
            idx[rows, cols] = order[s[0]:s[0] + int(c.sum())]
            self.blocks.append(idx)

    def pairwise(self, fn) -> np.ndarray:
        """``fn(g, valid_pairs) -> (B, M)`` per block, where ``g(x)`` gathers a per-region
        array into ``(B, M)``; returns the (R,) result."""
        out = np.zeros(self.n)
        for idx in self.blocks:
            ok = idx >= 0
            safe = np.where(ok, idx, 0)
            pairs = ok[:, :, None] & ok[:, None, :] & ~np.eye(idx.shape[1], dtype=bool)[None]
            res = fn(lambda x, rows=safe: np.asarray(x)[rows], pairs)
            out[idx[ok]] = res[ok]
        return out

    def iou(self, g) -> np.ndarray:
        x0, y0, x1, y1, a = g(self.x0), g(self.y0), g(self.x1), g(self.y1), g(self.area)
        iw = np.clip(np.minimum(x1[:, :, None], x1[:, None, :]) - np.maximum(x0[:, :, None], x0[:, None, :]), 0, None)
        ih = np.clip(np.minimum(y1[:, :, None], y1[:, None, :]) - np.maximum(y0[:, :, None], y0[:, None, :]), 0, None)
        inter = iw * ih
        return inter / np.maximum(a[:, :, None] + a[:, None, :] - inter, 1e-12)


AXES = {"left": ("u", 1.0), "right": ("u", -1.0), "top": ("v", 1.0), "bottom": ("v", -1.0)}
_SIDE_MARGINS = {
    "left": lambda u, v: 1 / 3 - u,
    "right": lambda u, v: u - 2 / 3,
    "top": lambda u, v: 1 / 3 - v,
    "bottom": lambda u, v: v - 2 / 3,
    "middle": lambda u, v: np.minimum(1 / 6 - np.abs(u - 0.5), 1 / 6 - np.abs(v - 0.5)),
}


def position_margin(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The absolute-position margin ``m_k`` (> 0 inside the region of ``kind``; a corner
    is the min of its two sides' margins)."""
    return np.minimum.reduce([_SIDE_MARGINS[k](u, v) for k in kind.split("_")])


def relation_geometry(kind: str, layout: RegionLayout, g, weights: FusionWeights) -> np.ndarray:
    """``g_r(i, j)`` for a block: (B, M, M), i = candidate (axis 1), j = anchor (axis 2).
    Only the terms ``kind`` needs are computed."""
    w = weights
    x0i, y0i, x1i, y1i = (g(a)[:, :, None] for a in (layout.x0, layout.y0, layout.x1, layout.y1))
    x0j, y0j, x1j, y1j = (g(a)[:, None, :] for a in (layout.x0, layout.y0, layout.x1, layout.y1))
    tau, beta = w.relation_temperature, w.relation_slack

    def mean_width():
        return (g(layout.w)[:, :, None] + g(layout.w)[:, None, :]) / 2

    def mean_height():
        return (g(layout.h)[:, :, None] + g(layout.h)[:, None, :]) / 2

    def near():
        side = np.minimum(g(layout.W), g(layout.H))[:, :, None]
        gap = np.maximum(np.maximum(np.maximum(x0j - x1i, x0i - x1j), np.maximum(y0j - y1i, y0i - y1j)), 0.0)
        return sigmoid((w.near_fraction - gap / side) / w.near_temperature)

    def overlap_x():
        narrower = np.minimum(g(layout.w)[:, :, None], g(layout.w)[:, None, :])
        return np.clip((np.minimum(x1i, x1j) - np.maximum(x0i, x0j)) / narrower, 0.0, 1.0)

    def centre_above():  # σ((cy_j - cy_i) / (ĥτ)): i's centre above j's
        return sigmoid(((y0j + y1j) - (y0i + y1i)) / 2 / (mean_height() * tau))

    if kind == "left_of":
        return sigmoid(((x0j - x1i) / mean_width() + beta) / tau)
    if kind == "right_of":
        return sigmoid(((x0i - x1j) / mean_width() + beta) / tau)
    if kind == "above":
        return sigmoid(((y0j - y1i) / mean_height() + beta) / tau)
    if kind == "below":
        return sigmoid(((y0i - y1j) / mean_height() + beta) / tau)
    if kind == "next_to":
        return near()
    if kind == "on_top_of":
        return centre_above() * overlap_x() * near()
    if kind == "under":
        return (1.0 - centre_above()) * overlap_x()
    if kind == "behind":
        return sigmoid((y1j - y1i) / (mean_height() * tau)) * near()
    if kind == "in_front_of":
        return sigmoid((y1i - y1j) / (mean_height() * tau)) * near()
    raise ResedisError(f"unknown relation kind {kind!r}")
