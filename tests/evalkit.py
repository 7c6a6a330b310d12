"""A tiny hand-built benchmark for the eval and report tests (no loaders involved).

Three images (written with PIL) and five queries, one per layout:
``q_attr``  attribute, one instance in img 1
``q_pos``   position, instances in img 1 and img 2 (multi-image)
``q_rel``   relation, two instances in img 3 (multi-instance)
``q_rel2``  relation, one instance in img 2, category "square"
``q_none``  absent
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from resedis.masks import encode_mask, rle_to_box
from resedis.types import Dataset, Hit, ImageInfo, Instance, Query, QueryResult

SIZES = {1: (200, 160), 2: (240, 180), 3: (160, 200)}  # id -> (width, height)


def _instance(image_id: int, x0: int, y0: int, x1: int, y1: int) -> Instance:
    w, h = SIZES[image_id]
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = True
    rle = encode_mask(mask)
    return Instance(image_id=image_id, rle=rle, box=rle_to_box(rle))


def make_dataset(tmp: Path, *, write_images: bool = True) -> Dataset:
    images = {}
    for image_id, (w, h) in SIZES.items():
        path = tmp / f"img{image_id}.jpg"
        if write_images:
            rng = np.random.default_rng(image_id)
            arr = (rng.random((h, w, 3)) * 60 + 100).astype(np.uint8)
            Image.fromarray(arr).save(path, quality=90)
        images[image_id] = ImageInfo(image_id, path.name, w, h, str(path) if write_images else None)
    queries = [
        Query("q_attr", "the big red circle", [_instance(1, 20, 20, 80, 80)], "circle", "attribute"),
        Query("q_pos", "the circle on the left",
              [_instance(1, 100, 40, 150, 90), _instance(2, 10, 10, 60, 60)], "circle", "position"),
        Query("q_rel", "the square above the <b>blue</b> & star",
              [_instance(3, 10, 10, 60, 60), _instance(3, 80, 100, 140, 160)], "square", "relation"),
        Query("q_rel2", "the square next to the star", [_instance(2, 120, 60, 200, 140)], "square", "relation"),
        Query("q_none", "the purple hexagon", [], None, "absent"),
    ]
    return Dataset(name="tiny", root=str(tmp), images=images, queries=queries)


def oracle(dataset: Dataset) -> list[QueryResult]:
    """Ground truth boxes as detections, present, scores decreasing."""
    out = []
    for q in dataset.queries:
        hits = [Hit(inst.image_id, inst.box, 1.0 - 0.01 * i, True) for i, inst in enumerate(q.instances)]
        out.append(QueryResult(q.query_id, q.expression, hits))
    return out
