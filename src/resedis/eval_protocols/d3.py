"""D³ (Description Detection Dataset, "DOD") protocol: COCO mAP with each description a category.

The official evaluation (``scripts/eval_and_analysis_json.py`` and ``doc.md`` in
shikras/d-cube) loads a COCO ground-truth file whose categories are the descriptions
(``category_id`` = ``sent_id``), loads the detections as COCO results and runs
``pycocotools.cocoeval.COCOeval(..., "bbox")``; the reported mAP is ``stats[0]``
(AP@[.50:.95], all areas, 100 detections per image and category). FULL, PRES and ABS are
the same evaluation with the ground truth restricted to all descriptions, the presence
descriptions, or the absence descriptions. Settings (``doc.md``, "Intra- or Inter-Group"):

* **inter-scenario**: every description is run on every image; all detections count;
* **intra-scenario**: an image is only run with the descriptions of its own group; here
  detections and targets count only in the query's ``scope`` images (set by the D³ loader),
  as the toolkit's ``convert2coco(is_group_separated=True)`` keeps only in-group links.

Here each resedis query is one category, every corpus image a COCO image, every target
instance a ground-truth box (area: its mask area when it has a mask, as in the released
annotations, else the box area), and every detection (``present`` ignored: mAP ranks by
score) a result ``{image_id, category_id, bbox [x, y, w, h], score}``. As in COCOeval, a
category without ground truth (an absent query) is left out of the mean.

One known difference: the toolkit's ``D3.convert2coco`` numbers annotations from 0, and
pycocotools' COCOeval reads a matched ground-truth id of 0 as "unmatched", so in a ground
truth written that way the first box can never be a true positive. resedis numbers from 1;
on a file with an id-0 annotation the official figure can differ by that one box.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resedis.types import Hit, ImageId, ImageInfo, Query

SETTINGS = ("inter", "intra")
# Query.type values the D³ loader writes; PRES / ABS partitions select on them.
PRESENCE_TYPE = "presence"
ABSENCE_TYPE = "absence"


def _coco_inputs(
    queries: Sequence[Query], results: Mapping[str, Sequence[Hit]], images: Mapping[ImageId, ImageInfo], setting: str
) -> tuple[dict, list[dict]]:
    index = {image_id: k + 1 for k, image_id in enumerate(images)}
    gt: dict[str, Any] = {
        "images": [{"id": index[i], "width": info.width, "height": info.height} for i, info in images.items()],
        "categories": [{"id": c + 1, "name": q.expression} for c, q in enumerate(queries)],
        "annotations": [],
    }
    dets: list[dict] = []
    for c, q in enumerate(queries):
        scope = set(q.scope) if setting == "intra" and q.scope is not None else None
        for inst in q.instances:
            if scope is not None and inst.image_id not in scope:
                continue  # intra: the pair (description, image) is not evaluated at all
            x0, y0, x1, y1 = inst.box
            area = float(mask_utils.area(inst.rle)) if inst.rle is not None else (x1 - x0) * (y1 - y0)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": index[inst.image_id],
                                      "category_id": c + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                      "area": area, "iscrowd": 0})
        for h in results.get(q.query_id, ()):
            if h.image_id not in index or (scope is not None and h.image_id not in scope):
                continue
            x0, y0, x1, y1 = h.box
            dets.append({"image_id": index[h.image_id], "category_id": c + 1,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(h.score)})
    return gt, dets


def coco_map(
    queries: Sequence[Query], results: Mapping[str, Sequence[Hit]], images: Mapping[ImageId, ImageInfo],
    *, setting: str = "inter",
) -> dict[str, float | None]:
    """``mAP`` (AP@[.50:.95]), ``AP50``, ``AP75`` from COCOeval over ``queries`` as categories.

    None for every key when no query has a target (COCOeval has nothing to average)."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    gt, dets = _coco_inputs(queries, results, images, setting)
    if not gt["annotations"]:
        return {"mAP": None, "AP50": None, "AP75": None}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        if dets:
            coco_dt = coco.loadRes(dets)
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = np.asarray(ev.stats, dtype=np.float64)
    return {k: (float(v) if v > -1 else 0.0) for k, v in zip(("mAP", "AP50", "AP75"), stats[:3])}


def d3_metrics(
    queries: Sequence[Query], results: Mapping[str, Sequence[Hit]], images: Mapping[ImageId, ImageInfo],
    *, setting: str = "inter",
) -> dict[str, Any]:
    """FULL (every query) and, when the queries carry D³ types, PRES and ABS partitions:
    ``{"setting": ..., "FULL": {mAP, AP50, AP75}, "PRES": {...}, "ABS": {...}}``."""
    out: dict[str, Any] = {"setting": setting, "FULL": coco_map(queries, results, images, setting=setting)}
    pres = [q for q in queries if q.type == PRESENCE_TYPE]
    absn = [q for q in queries if q.type == ABSENCE_TYPE]
    if pres or absn:
        out["PRES"] = coco_map(pres, results, images, setting=setting)
        out["ABS"] = coco_map(absn, results, images, setting=setting)
    return out
