"""Thumbnails with ground truth and detections drawn over them, as base64 JPEG data URIs.

Coordinates: boxes are xyxy in ORIGINAL image pixels (EXIF-rotated, as in
:class:`resedis.types.ImageInfo` ``width``/``height``); they are scaled to the thumbnail
here. Ground-truth masks are COCO RLE, decoded to (H, W) bool and resized.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from resedis.masks import decode_rle
from resedis.types import ImageInfo, Instance

TP_COLOR = (22, 163, 74)  # green: detection matching a target instance
FP_COLOR = (220, 38, 38)  # red: detection matching no target (a false alarm when present)
GT_COLOR = (6, 182, 212)  # cyan, dashed outline + tint: ground-truth target instance


@dataclass(frozen=True)
class DrawnBox:
    """One detection to draw: xyxy original pixels, whether it is a TP, whether it is
    decided present (solid thick line) or not (thin dotted line), and its label."""

    box: tuple[float, float, float, float]
    is_tp: bool
    present: bool
    label: str


def _dashed_rect(draw: ImageDraw.ImageDraw, box: Sequence[float], color, width: int, dash: int) -> None:
    x0, y0, x1, y1 = box
    for (ax, ay, bx, by) in ((x0, y0, x1, y0), (x1, y0, x1, y1), (x1, y1, x0, y1), (x0, y1, x0, y0)):
        length = max(abs(bx - ax), abs(by - ay))
        steps = max(int(length // dash), 1)
        for i in range(0, steps, 2):
            t0, t1 = i / steps, min((i + 1) / steps, 1.0)
            draw.line(
                [(ax + (bx - ax) * t0, ay + (by - ay) * t0), (ax + (bx - ax) * t1, ay + (by - ay) * t1)],
                fill=color,
                width=width,
            )


def _open_scaled(info: ImageInfo, max_side: int) -> tuple[Image.Image, float, float, bool]:
    """The image (or a grey placeholder when its file is missing), downscaled so its
    longer side is at most ``max_side``; returns (image, sx, sy, found)."""
    w, h = max(int(info.width), 1), max(int(info.height), 1)
    scale = min(1.0, max_side / max(w, h))
    tw, th = max(int(round(w * scale)), 1), max(int(round(h * scale)), 1)
    found = False
    img: Image.Image | None = None
    if info.path:
        try:
            with Image.open(info.path) as src:
                src.draft("RGB", (max_side, max_side))  # fast JPEG downscale on decode
                img = ImageOps.exif_transpose(src).convert("RGB")
                img = img.resize((tw, th), Image.Resampling.BILINEAR)
                found = True
        except OSError:
            img = None
    if img is None:
        img = Image.new("RGB", (tw, th), (200, 200, 200))
        d = ImageDraw.Draw(img)
        d.text((6, 6), "image file not found", fill=(60, 60, 60))
    return img, tw / w, th / h, found


def render_thumbnail(
    info: ImageInfo,
    targets: Sequence[Instance],
    boxes: Sequence[DrawnBox],
    *,
    max_side: int = 320,
    quality: int = 80,
) -> str:
    """A ``data:image/jpeg;base64,...`` URI of ``info``'s image with its target
    instances (tinted mask + dashed cyan box) and ``boxes`` drawn over it."""
    img, sx, sy, _ = _open_scaled(info, max_side)
    tw, th = img.size
    if targets:
        tint = np.zeros((th, tw), dtype=bool)
        for inst in targets:
            try:
                mask = decode_rle(inst.rle)
            except Exception:  # a box-only instance (no usable mask): outline only
                continue
            small = Image.fromarray(mask.astype(np.uint8) * 255).resize((tw, th), Image.Resampling.NEAREST)
            tint |= np.asarray(small) > 127
        if tint.any():
            arr = np.asarray(img).astype(np.float32)
            arr[tint] = arr[tint] * 0.55 + np.array(GT_COLOR, dtype=np.float32) * 0.45
            img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    # Lowest-ranked first so the best detections end up on top.
    for b in reversed(list(boxes)):
        color = TP_COLOR if b.is_tp else FP_COLOR
        x0, y0, x1, y1 = b.box
        rect = (x0 * sx, y0 * sy, max(x1 * sx, x0 * sx + 1), max(y1 * sy, y0 * sy + 1))
        if b.present:
            draw.rectangle(rect, outline=color, width=3)
        else:
            _dashed_rect(draw, rect, color, 1, 3)
        tx, ty = rect[0] + 2, max(rect[1] - 12, 0)
        text_w = 6 * len(b.label) + 4
        draw.rectangle((tx - 2, ty, tx - 2 + text_w, ty + 11), fill=color)
        draw.text((tx, ty), b.label, fill=(255, 255, 255))
    # Ground truth last, 2 px outside the object, so labels never hide it.
    for inst in targets:
        x0, y0, x1, y1 = inst.box
        _dashed_rect(draw, (x0 * sx - 2, y0 * sy - 2, x1 * sx + 2, y1 * sy + 2), GT_COLOR, 2, 4)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
