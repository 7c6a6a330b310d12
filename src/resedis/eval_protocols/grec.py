"""gRefCOCO's GREC protocol (generalised referring expression comprehension).

From ``RefExpEvaluator.summarize`` in ``mdetr/datasets/refexp.py`` of henghuiding/gRefCOCO
(read, not copied). One *sample* is one expression on one image:

* detections with score ≥ ``score_threshold`` (0.7 there) are kept;
* a no-target sample is right when nothing is kept (then its F1 is 1, else 0); N_acc is
  the share of no-target samples that are right;
* a target sample counts towards T_acc when anything is kept (T_acc = share of target
  samples with at least one kept detection); kept detections and targets are matched
  greedily by **generalised IoU**: repeatedly the largest remaining GIoU is taken while it
  is ≥ ``iou_threshold`` (0.5), its row and column removed; ``F1 = 2TP / (2TP + FP + FN)``;
* ``F1_score`` (the paper's "Pr@(F1=1, IoU≥0.5)") is the share of all samples with F1 = 1.

In resedis a query's samples are its ``scope`` images (the gRefCOCO loader sets the
expression's own image), else its target images; an absent query without a scope has no
image to be scored on and is counted in ``unscored_queries``. Boxes are xyxy pixels;
``present`` is ignored (the protocol thresholds the score itself).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from resedis.types import Hit, Query

SCORE_THRESHOLD = 0.7
IOU_THRESHOLD = 0.5


def generalized_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) × (M, 4) xyxy boxes -> (N, M) generalised IoU (Rezatofighi et al. 2019)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    lt_c = np.minimum(a[:, None, :2], b[None, :, :2])
    rb_c = np.maximum(a[:, None, 2:], b[None, :, 2:])
    hull = np.prod(np.clip(rb_c - lt_c, 0, None), axis=2)
    return iou - np.divide(hull - union, hull, out=np.zeros_like(hull), where=hull > 0)


def sample_f1(pred_boxes: np.ndarray, target_boxes: np.ndarray, iou_threshold: float = IOU_THRESHOLD) -> float:
    """F1 of one sample (kept predictions × targets, xyxy), greedy largest-GIoU matching."""
    n_pred, n_gt = len(pred_boxes), len(target_boxes)
    if n_gt == 0:
        return 1.0 if n_pred == 0 else 0.0
    tp = 0
    if n_pred:
        g = generalized_iou(pred_boxes, target_boxes)
        for _ in range(min(n_pred, n_gt)):
            i, j = np.unravel_index(int(np.argmax(g)), g.shape)
            if g[i, j] < iou_threshold:
                break
            tp += 1
            g[i, :] = 0.0  # as the official code: zeroed, and 0 < any threshold in (0, 1]
            g[:, j] = 0.0
    fp, fn = n_pred - tp, n_gt - tp
    return 2 * tp / (2 * tp + fp + fn)


def grec_metrics(
    queries: Sequence[Query], results: Mapping[str, Sequence[Hit]], *,
    score_threshold: float = SCORE_THRESHOLD, iou_threshold: float = IOU_THRESHOLD,
) -> dict[str, Any]:
    """``F1_score``, ``N_acc``, ``T_acc`` (None when they have no sample), and counts."""
    correct = samples = nt_right = nt_total = t_any = t_total = unscored = 0
    for q in queries:
        images = q.scope if q.scope is not None else q.target_images
        if not images:
            unscored += 1
            continue
        hits = [h for h in results.get(q.query_id, ()) if h.score >= score_threshold]
        for image_id in images:
            pred = np.array([h.box for h in hits if h.image_id == image_id], dtype=np.float64).reshape(-1, 4)
            gt = np.array([i.box for i in q.instances_of(image_id)], dtype=np.float64).reshape(-1, 4)
            f1 = sample_f1(pred, gt, iou_threshold)
            if len(gt) == 0:
                nt_total += 1
                nt_right += len(pred) == 0
            else:
                t_total += 1
                t_any += len(pred) > 0
            correct += f1 >= 1.0
            samples += 1
    return {
        "F1_score": correct / samples if samples else None,
        "N_acc": nt_right / nt_total if nt_total else None,
        "T_acc": t_any / t_total if t_total else None,
        "samples": samples, "no_target_samples": nt_total, "unscored_queries": unscored,
        "score_threshold": score_threshold, "iou_threshold": iou_threshold,
    }
