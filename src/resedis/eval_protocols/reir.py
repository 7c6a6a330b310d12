"""REIR protocol (referring expression instance retrieval, REIRCOCO): ir@k over unique images.

From ``RetrievalGroundingEvaluator.compute_metrics`` in
``detectron2/evaluation/retrieval_grounding_evaluation.py`` of haoxiangzhao12138/REIR
(read, not copied). For each query every detection of the gallery is ranked by score;
let ``p`` be the (0-based) position of the first detection lying in the query's target
image and ``r`` the number of distinct images among the detections ranked before it:

* ``ir@k`` = share of queries with ``r < k`` (the target image is among the k best
  distinct images);
* ``ir@k_iou`` = share of queries whose first detection in the target image has IoU ≥ 0.5
  with the target box **and** ``p < k``. The official code compares the *detection*
  position ``p``, not the image rank ``r``, in this second family; it is reproduced as is.

Both are divided by all scored queries (percentages there, fractions here). REIRCOCO has
one target instance per expression; with several, any target image counts and the IoU is
the best over that image's targets. A query with no detection in a target image is a miss.
Absent queries have no target image and are not scored (``unscored_queries``). Ties keep
the resedis order (score descending, then file order); the official ``argsort(...)[::-1]``
puts the later of two tied detections first.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from resedis.boxes import box_iou
from resedis.types import Hit, Query

K_VALUES = (1, 5, 10)
IOU_THRESHOLD = 0.5


def reir_metrics(queries: Sequence[Query], results: Mapping[str, Sequence[Hit]]) -> dict[str, Any]:
    """``ir@1, ir@5, ir@10, ir@1_iou, ir@5_iou, ir@10_iou`` (fractions) and counts."""
    ranks: list[float] = []
    positions_iou: list[int] = []
    unscored = 0
    for q in queries:
        targets = set(q.target_images)
        if not targets:
            unscored += 1
            continue
        hits = sorted(results.get(q.query_id, ()), key=lambda h: -h.score)
        p = next((i for i, h in enumerate(hits) if h.image_id in targets), None)
        if p is None:
            ranks.append(np.inf)
            continue
        ranks.append(len({h.image_id for h in hits[:p]}))
        first = hits[p]
        boxes = np.array([i.box for i in q.instances_of(first.image_id)], dtype=np.float64)
        if float(box_iou(np.array([first.box], dtype=np.float64), boxes).max()) >= IOU_THRESHOLD:
            positions_iou.append(p)
    n = len(ranks)
    out: dict[str, Any] = {}
    for k in K_VALUES:
        out[f"ir@{k}"] = sum(r < k for r in ranks) / n if n else 0.0
    for k in K_VALUES:
        out[f"ir@{k}_iou"] = sum(p < k for p in positions_iou) / n if n else 0.0
    out["queries"] = n
    out["unscored_queries"] = unscored
    return out
