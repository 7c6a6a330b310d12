"""Mask geometry, built on pycocotools.

Masks are ``(H, W)`` bool arrays in memory and compressed COCO RLE dicts
``{"size": [H, W], "counts": str}`` in JSON. Box geometry (IoU, NMS) lives in
:mod:`resedis.boxes`; boxes are xyxy absolute pixels.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from pycocotools import mask as cocomask


def encode_mask(mask: np.ndarray) -> dict:
    """(H, W) bool mask -> compressed RLE with ``counts`` as str (JSON-safe)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    rle = cocomask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _to_coco(rle: dict) -> dict:
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": list(rle["size"]), "counts": counts}


def decode_rle(rle: dict) -> np.ndarray:
    """Compressed RLE -> (H, W) bool mask."""
    return cocomask.decode(_to_coco(rle)).astype(bool)


def normalize_segmentation(seg: Any, height: int, width: int) -> dict:
    """Any COCO segmentation (compressed RLE, uncompressed RLE with list counts,
    or a polygon list) -> compressed RLE with str counts.

    Raises ValueError with a specific message on malformed input.
    """
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            raise ValueError("RLE must have 'size' and 'counts'")
        size = seg["size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size)):
            raise ValueError(f"RLE 'size' must be [H, W] integers, got {size!r}")
        counts = seg["counts"]
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts):
                raise ValueError("uncompressed RLE 'counts' must be non-negative integers")
            if sum(counts) != size[0] * size[1]:
                raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, expected H*W = {size[0] * size[1]}")
            rle = cocomask.frPyObjects({"size": list(size), "counts": counts}, size[0], size[1])
        elif isinstance(counts, (str, bytes)):
            rle = _to_coco(seg)
            try:
                area = float(cocomask.area(rle))
            except Exception as exc:  # pycocotools raises bare errors on garbage
                raise ValueError(f"undecodable compressed RLE: {exc}") from None
            if area < 0:
                raise ValueError("undecodable compressed RLE")
        else:
            raise ValueError(f"RLE 'counts' must be a string or a list, got {type(counts).__name__}")
        out = {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"]}
        if isinstance(out["counts"], bytes):
            out["counts"] = out["counts"].decode("ascii")
        return out
    if isinstance(seg, list):
        if not seg:
            raise ValueError("empty polygon list")
        polys = seg if isinstance(seg[0], list) else [seg]
        for p in polys:
            if not isinstance(p, list) or len(p) < 6 or len(p) % 2 or not all(isinstance(v, (int, float)) for v in p):
                raise ValueError("a polygon must be a flat list of at least 3 (x, y) pairs")
        rles = cocomask.frPyObjects([list(map(float, p)) for p in polys], height, width)
        rle = cocomask.merge(rles)
        return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}
    raise ValueError(f"segmentation must be an RLE dict or a polygon list, got {type(seg).__name__}")


def rle_area(rle: dict) -> float:
    return float(cocomask.area(_to_coco(rle)))


def rle_to_box(rle: dict) -> tuple[float, float, float, float]:
    """The mask's bounding box as xyxy, via pycocotools ``toBbox`` ([x, y, w, h])."""
    x, y, w, h = (float(v) for v in cocomask.toBbox(_to_coco(rle)))
    return (x, y, x + w, y + h)


def mask_iou(a: Sequence[dict], b: Sequence[dict]) -> np.ndarray:
    """Pairwise IoU of RLE masks (same image size): -> (len(a), len(b))."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    out = cocomask.iou([_to_coco(r) for r in a], [_to_coco(r) for r in b], [0] * len(b))
    return np.asarray(out, dtype=np.float64).reshape(len(a), len(b))
