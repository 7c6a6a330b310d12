"""Query-time crop proposals: the dataset's ground-truth boxes (an oracle, never stored).
Boxes are xyxy original-image pixels. The proposals stored at index time (OWL, YOLOv8)
live in :mod:`resedis.index.crop_proposals`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from resedis.index.crops import CropCorpus
from resedis.types import Dataset, ImageId

log = logging.getLogger(__name__)


def _all_annotation_boxes(dataset: Dataset) -> dict[ImageId, list[tuple[float, ...]]] | None:
    """Every annotation box of the dataset's instances file (None when it can't be found)."""
    if not dataset.root:
        return None
    root = Path(dataset.root)
    candidates = [root / "instances.json"] + sorted((root / "annotations").glob("instances*.json")) if root.is_dir() else []
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return None
    from resedis.io.coco import load_coco_instances

    coco = load_coco_instances(path)
    out: dict[ImageId, list[tuple[float, ...]]] = {}
    for ann in coco.annotations.values():
        info = coco.lookup_image(ann.get("image_id"))
        bbox = ann.get("bbox")
        if info is None or info.id not in dataset.images or not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            continue
        x, y, w, h = (float(v) for v in bbox)
        out.setdefault(info.id, []).append((x, y, x + w, y + h))
    return out


def gt_proposals(dataset: Dataset) -> dict[ImageId, np.ndarray]:
    """The oracle proposals: per dataset image, every ground-truth box (N, 4) xyxy px.

    From the dataset's COCO instances file (every annotated object, ``bbox`` as
    ``[x, y, x + w, y + h]``) when found under ``dataset.root``; otherwise the union of the
    queries' target instance boxes. Duplicates removed, dataset order kept.
    """
    boxes = _all_annotation_boxes(dataset)
    if boxes is None:
        boxes = {}
        for q in dataset.queries:
            for inst in q.instances:
                boxes.setdefault(inst.image_id, []).append(tuple(float(v) for v in inst.box))
    out: dict[ImageId, np.ndarray] = {}
    for image_id in dataset.images:
        seen: dict[tuple, None] = {}
        for b in boxes.get(image_id, []):
            seen.setdefault(tuple(round(v, 4) for v in b), None)
        out[image_id] = np.asarray(list(seen), np.float32).reshape(-1, 4)
    return out


def embed_gt_crops(dataset: Dataset, encoder, *, progress: bool = True):
    """Decode every dataset image that has a file and GT boxes, and embed its GT crops with
    ``encoder.encode_crops`` (query-time oracle; nothing is stored)."""
    from tqdm.auto import tqdm

    from resedis.io.images import open_rgb

    proposals = gt_proposals(dataset)
    ids, paths, sizes, rows, all_boxes, all_vecs = [], [], [], [], [], []
    todo = [(i, info) for i, info in dataset.images.items() if info.path and len(proposals.get(i, ()))]
    missing = sum(1 for info in dataset.images.values() if not info.path)
    if missing:
        log.warning("%d dataset images have no file; their GT crops cannot be embedded", missing)
    for image_id, info in tqdm(todo, desc="GT crops", unit="img", disable=not progress, dynamic_ncols=True):
        image = open_rgb(info.path)
        boxes = proposals[image_id]
        vecs = np.asarray(encoder.encode_crops(image, boxes), np.float32)
        row = len(ids)
        ids.append(image_id)
        paths.append(os.path.realpath(info.path))
        sizes.append((image.width, image.height))
        rows.append(np.full(len(boxes), row, np.int64))
        all_boxes.append(boxes)
        all_vecs.append(vecs)
    dim = int(encoder.embed_dim)
    return CropCorpus(
        image_ids=ids,
        paths=paths,
        sizes=sizes,
        crop_image=np.concatenate(rows) if rows else np.zeros(0, np.int64),
        boxes=np.concatenate(all_boxes) if all_boxes else np.zeros((0, 4), np.float32),
        vectors=np.concatenate(all_vecs) if all_vecs else np.zeros((0, dim), np.float32),
        model=str(encoder.spec),
        source="gt",
    )
