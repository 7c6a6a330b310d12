"""Index-time crop proposals: the top OWL boxes of an image by objectness, or YOLOv8
detections (extra ``[yolo]``, imported lazily). Boxes are xyxy original-image pixels.

Query-time proposals (the dataset's ground truth) live in :mod:`resedis.pipelines.proposals`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from resedis.errors import MissingExtraError, ResedisError
from resedis.types import ImageRegions

DEFAULT_YOLO_WEIGHTS = "yolov8n.pt"


def load_yolo(weights: str):
    """Ultralytics YOLO from a local weights file; MissingExtraError without the extra."""
    try:
        from ultralytics import YOLO  # type: ignore[import-not-found]
    except ImportError:
        raise MissingExtraError("ultralytics (YOLOv8 proposals)", "yolo") from None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ResedisError(f"YOLO weights {weights!r} not found; pass a local file: --crop-proposals yolo:/path/to/yolov8n.pt")
    return YOLO(str(path))


def yolo_boxes(model, images: Sequence[Image.Image], max_crops: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """YOLO detections per image -> [(boxes (N, 4) xyxy px, confidences (N,))], best first."""
    out = []
    for result in model.predict(list(images), verbose=False):
        boxes = result.boxes.xyxy.cpu().numpy().astype(np.float32)
        conf = result.boxes.conf.cpu().numpy().astype(np.float32)
        order = np.argsort(-conf, kind="stable")[:max_crops]
        out.append((boxes[order], conf[order]))
    return out


def owl_boxes(regions: ImageRegions, max_crops: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``max_crops`` OWL boxes of one image by objectness -> (boxes, objectness)."""
    order = np.argsort(-np.asarray(regions.objectness), kind="stable")[:max_crops]
    return np.asarray(regions.boxes, np.float32)[order], np.asarray(regions.objectness, np.float32)[order]
