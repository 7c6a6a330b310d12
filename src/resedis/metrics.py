"""The ReSeDis metric suite (defined in docs/metrics.md) as pure numpy functions.

Inputs are :class:`resedis.types.Query` (targets: ``Instance`` with ``.box`` xyxy in
absolute pixels and ``.rle`` a COCO RLE ``{"size": [H, W], "counts": str}``) and, per
query id, the query's :class:`resedis.types.Hit` list (``.box`` xyxy pixels,
``.score``, ``.present``, ``.mask`` RLE or None).

Conventions, fixed once:

* detections of a query are sorted by score, descending; ties keep input (file) order;
* the image ranking is the order in which images first appear in that sorted list;
* ``G`` = the query's target images; *non-absent* queries have ``|G| > 0``;
* averages over non-absent queries (IR@K, Pr@50, BR@K@τ, mAP50) are ``0.0`` when
  there are none; ``FA_per_query`` is ``0.0`` when there are no queries; ``N_acc``
  is ``None`` when there are no absent queries;
* ``IL_MCC``, ``pmF1``, ``cgF1`` are SAM 3's SA-Co presence metrics over (query, corpus
  image) pairs with ``present`` as the decision (:mod:`resedis.eval_protocols.saco`);
  IL_MCC and cgF1 need the corpus size (``n_images``) and are None without it;
* ``iou="mask"`` uses mask IoU (pycocotools) for a pair when the detection has a mask
  (every target instance has one), else box IoU.

Example::

    >>> m = evaluate(dataset.queries, {r.query_id: r.hits for r in results})
    >>> m["IR@1"], m["BR@1@0.5"], m["mAP50"]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from resedis.boxes import box_iou
from resedis.eval_protocols.saco import PRESENCE_KEYS, PresenceCounts, from_records, pair_counts, presence_scores
from resedis.masks import mask_iou
from resedis.types import Hit, ImageId, Query, QueryResult

IOU_MODES = ("box", "mask")
K_VALUES = (1, 5, 10)
TAUS = (0.5, 0.7, 0.9)
MATCH_IOU = 0.5

BR_KEYS = tuple(f"BR@{k}@{t}" for k in K_VALUES for t in TAUS)
IR_KEYS = tuple(f"IR@{k}" for k in K_VALUES)
METRIC_KEYS = (
    *IR_KEYS, "Pr@50", "Pr@50_count", *BR_KEYS, "mAP50",
    "precision", "recall", "F1", "FA_per_query", "N_acc", *PRESENCE_KEYS,
)


@dataclass(frozen=True)
class Match:
    """How one detection of a query fares, in sorted order (see :func:`sort_hits`).

    ``is_tp``: greedily matched to a not-yet-matched target instance at IoU ≥ threshold.
    ``instance``: index into ``query.instances`` of the matched instance, else None.
    ``iou``: best IoU with ANY target instance of the hit's own image (0.0 outside G).
    ``in_target_image``: the hit's image is one of the query's target images.
    """

    hit: Hit
    is_tp: bool
    instance: int | None
    iou: float
    in_target_image: bool


def sort_hits(hits: Sequence[Hit]) -> list[Hit]:
    """Hits by score descending; ties keep their input order (stable sort)."""
    return sorted(hits, key=lambda h: -h.score)


def results_by_query(results: Sequence[QueryResult]) -> dict[str, list[Hit]]:
    """``[QueryResult]`` -> ``{query_id: hits}``; a repeated query id is an error."""
    out: dict[str, list[Hit]] = {}
    for r in results:
        if r.query_id in out:
            raise ValueError(f"predictions: query_id {r.query_id!r} appears more than once")
        out[r.query_id] = list(r.hits)
    return out


def _check_iou_mode(iou: str) -> None:
    if iou not in IOU_MODES:
        raise ValueError(f"iou must be one of {IOU_MODES}, got {iou!r}")


def _check_scores(query: Query, hits: Sequence[Hit]) -> None:
    scores = np.fromiter((h.score for h in hits), dtype=np.float64, count=len(hits))
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"query {query.query_id!r}: detection scores must be finite numbers")


def _iou_matrix(query: Query, hits: Sequence[Hit], iou: str) -> tuple[np.ndarray, np.ndarray]:
    """IoU of each (sorted) hit with each target instance of the SAME image.

    Returns ``ious`` (n_hits, n_instances) float64 — 0 for pairs in different images —
    and ``in_g`` (n_hits,) bool. IoU is computed one target image at a time, vectorized.
    """
    n, m = len(hits), len(query.instances)
    ious = np.zeros((n, m), dtype=np.float64)
    in_g = np.zeros(n, dtype=bool)
    if n == 0 or m == 0:
        return ious, in_g
    inst_of: dict[ImageId, list[int]] = {}
    for j, inst in enumerate(query.instances):
        inst_of.setdefault(inst.image_id, []).append(j)
    hits_of: dict[ImageId, list[int]] = {}
    for i, h in enumerate(hits):
        if h.image_id in inst_of:
            hits_of.setdefault(h.image_id, []).append(i)
    for image_id, di in hits_of.items():
        ji = inst_of[image_id]
        in_g[di] = True
        block = box_iou(
            np.array([hits[i].box for i in di], dtype=np.float64),
            np.array([query.instances[j].box for j in ji], dtype=np.float64),
        )
        if iou == "mask":
            _overwrite_with_mask_iou(block, query, hits, di, ji, image_id)
        ious[np.ix_(di, ji)] = block
    return ious, in_g


def _overwrite_with_mask_iou(
    block: np.ndarray, query: Query, hits: Sequence[Hit], di: list[int], ji: list[int], image_id: ImageId
) -> None:
    rows = [r for r, i in enumerate(di) if hits[i].mask is not None]
    cols = [c for c, j in enumerate(ji) if query.instances[j].rle is not None]
    if not rows or not cols:
        return
    sizes = {tuple(query.instances[ji[c]].rle["size"]) for c in cols}
    sizes |= {tuple(hits[di[r]].mask["size"]) for r in rows}
    if len(sizes) != 1:
        raise ValueError(
            f"query {query.query_id!r}, image {image_id!r}: detection and target masks have "
            f"different sizes {sorted(sizes)}; masks must be (H, W) of the original image"
        )
    block[np.ix_(rows, cols)] = mask_iou(
        [hits[di[r]].mask for r in rows], [query.instances[ji[c]].rle for c in cols]
    )


def _greedy_match(ious: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy matching in row order: (n, m) IoUs -> (n,) matched column or -1.

    Each row takes the unmatched column of highest IoU (ties: lowest index) if that
    IoU ≥ threshold. Only rows that could match at all are visited in Python.
    """
    n, m = ious.shape
    matched = np.full(n, -1, dtype=np.int64)
    if n == 0 or m == 0:
        return matched
    free = np.ones(m, dtype=bool)
    for i in np.flatnonzero(ious.max(axis=1) >= threshold):
        row = np.where(free, ious[i], -1.0)
        j = int(np.argmax(row))
        if row[j] >= threshold:
            matched[i] = j
            free[j] = False
    return matched


def _average_precision(is_tp: np.ndarray, n_positives: int) -> float:
    """All-point interpolated AP: precision made monotone from the right, summed over
    recall steps of 1/n_positives. No detections or no positives -> 0."""
    if n_positives == 0 or is_tp.size == 0:
        return 0.0
    precision = np.cumsum(is_tp) / np.arange(1, is_tp.size + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(precision[is_tp].sum() / n_positives)


def match_detections(
    query: Query, hits: Sequence[Hit], *, iou: str = "box", threshold: float = MATCH_IOU
) -> list[Match]:
    """Greedy matching of a query's detections (all of them, ``present`` ignored),
    in sorted order; one :class:`Match` per sorted hit."""
    _check_iou_mode(iou)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    _check_scores(query, hits)
    hits = sort_hits(hits)
    ious, in_g = _iou_matrix(query, hits, iou)
    best = ious.max(axis=1) if ious.shape[1] else np.zeros(len(hits))
    matched = _greedy_match(ious, threshold)
    return [
        Match(hit=h, is_tp=bool(matched[i] >= 0), instance=int(matched[i]) if matched[i] >= 0 else None,
              iou=float(best[i]), in_target_image=bool(in_g[i]))
        for i, h in enumerate(hits)
    ]


def _presence_counts(
    query: Query, hits: Sequence[Hit], ious: np.ndarray, decided: np.ndarray, n_images: int | None
) -> PresenceCounts:
    """SA-Co counts of one query over its (query, image) pairs; ``hits`` sorted, ``ious``
    from :func:`_iou_matrix` (0 across images), ``decided`` the ``present`` flags."""
    rows_of: dict[ImageId, list[int]] = {}
    for i in np.flatnonzero(decided):
        rows_of.setdefault(hits[i].image_id, []).append(int(i))
    cols_of: dict[ImageId, list[int]] = {}
    for j, inst in enumerate(query.instances):
        cols_of.setdefault(inst.image_id, []).append(j)
    images = set(rows_of) | set(cols_of)
    total = PresenceCounts.zero()
    for image_id in images:
        rows, cols = rows_of.get(image_id, []), cols_of.get(image_id, [])
        total = total + pair_counts(ious[np.ix_(rows, cols)])
    if n_images is not None and n_images < len(images):
        raise ValueError(f"query {query.query_id!r}: n_images={n_images} but {len(images)} images carry "
                         "targets or decided detections; n_images must be the corpus size")
    return total.with_negatives(None if n_images is None else n_images - len(images))


def _query_record(query: Query, hits: Sequence[Hit], iou: str, n_images: int | None = None) -> dict[str, Any]:
    _check_scores(query, hits)
    hits = sort_hits(hits)
    n, m = len(hits), len(query.instances)
    ious, _ = _iou_matrix(query, hits, iou)
    best = ious.max(axis=1) if m else np.zeros(n)
    targets = set(query.target_images)
    rec: dict[str, Any] = {
        "query_id": query.query_id, "expression": query.expression, "type": query.type,
        "category": query.category, "absent": query.is_absent, "n_targets": m,
        "n_target_images": len(targets), "n_detections": n,
    }
    if query.is_absent:
        rec.update({k: None for k in (*IR_KEYS, *BR_KEYS, "top1_in_target", "top1_iou", "AP50")})
    else:
        ranking = list(dict.fromkeys(h.image_id for h in hits))
        for k in K_VALUES:
            rec[f"IR@{k}"] = len(targets.intersection(ranking[:k])) / min(k, len(targets))
        for k in K_VALUES:
            top = float(best[:k].max()) if n else 0.0  # best is 0 outside G, and every τ > 0
            for t in TAUS:
                rec[f"BR@{k}@{t}"] = float(top >= t)
        rec["top1_in_target"] = bool(n and hits[0].image_id in targets)
        rec["top1_iou"] = float(best[0]) if n else None
        rec["AP50"] = _average_precision(_greedy_match(ious, MATCH_IOU) >= 0, m)
    decided = np.fromiter((h.present for h in hits), dtype=bool, count=n)
    tp = int((_greedy_match(ious[decided], MATCH_IOU) >= 0).sum())
    n_decided = int(decided.sum())
    rec.update({
        "n_decided": n_decided, "tp": tp, "fp": n_decided - tp,
        "fa_images": len({h.image_id for h, d in zip(hits, decided) if d and h.image_id not in targets}),
    })
    rec.update(_presence_counts(query, hits, ious, decided, n_images).to_record())
    return rec


def per_query(
    queries: Sequence[Query], results: Mapping[str, Sequence[Hit]], *, iou: str = "box",
    n_images: int | None = None,
) -> list[dict[str, Any]]:
    """One record per query, in query order.

    Keys: ``query_id, expression, type, category, absent, n_targets, n_target_images,
    n_detections`` and, for non-absent queries (None for absent ones): ``IR@K``,
    ``BR@K@τ`` (0.0/1.0), ``top1_in_target``, ``top1_iou`` (None with no detections),
    ``AP50``; for every query the discovery counts ``n_decided, tp, fp, fa_images``
    (distinct non-target images among ``present`` detections) and the SA-Co pair counts
    ``il_tp, il_fp, il_fn, il_tn`` (None without ``n_images``, the corpus size),
    ``presence_tp`` (one count per IoU threshold), ``presence_predictions``,
    ``presence_targets``. A query id missing
    from ``results`` is an empty prediction; result ids not among the queries are ignored.
    """
    _check_iou_mode(iou)
    seen: set[str] = set()
    out = []
    for q in queries:
        if q.query_id in seen:
            raise ValueError(f"query_id {q.query_id!r} appears more than once among the queries")
        seen.add(q.query_id)
        out.append(_query_record(q, results.get(q.query_id, ()), iou, n_images))
    return out


def aggregate(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-query records (from :func:`per_query`) -> the metric dict of :func:`evaluate`.
    Also used for breakdowns (by type, by category) over subsets of records."""
    present = [r for r in records if not r["absent"]]
    absent = [r for r in records if r["absent"]]

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in present])) if present else 0.0

    out: dict[str, Any] = {k: mean(k) for k in IR_KEYS}
    top1 = [r for r in present if r["top1_in_target"]]
    out["Pr@50"] = sum(r["top1_iou"] >= MATCH_IOU for r in top1) / len(top1) if top1 else 0.0
    out["Pr@50_count"] = len(top1)
    out.update({k: mean(k) for k in BR_KEYS})
    out["mAP50"] = mean("AP50")
    tp = sum(r["tp"] for r in records)
    n_decided = sum(r["n_decided"] for r in records)
    n_targets = sum(r["n_targets"] for r in records)
    precision = tp / n_decided if n_decided else 0.0
    recall = tp / n_targets if n_targets else 0.0
    out["precision"] = precision
    out["recall"] = recall
    out["F1"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out["FA_per_query"] = sum(r["fa_images"] for r in records) / len(records) if records else 0.0
    out["N_acc"] = sum(r["n_decided"] == 0 for r in absent) / len(absent) if absent else None
    presence = presence_scores(from_records(records))
    out.update({k: presence[k] for k in PRESENCE_KEYS})
    out["queries"] = len(records)
    out["absent_queries"] = len(absent)
    return out


def evaluate(
    queries: Sequence[Query], results: Mapping[str, Sequence[Hit]], *, iou: str = "box",
    n_images: int | None = None,
) -> dict[str, Any]:
    """The full metric suite. Keys: ``METRIC_KEYS`` plus ``queries``, ``absent_queries``.

    ``n_images``: the corpus size, needed by IL_MCC and cgF1 (None without it).

    ``results`` maps query id -> that query's hits (any order); a missing id is an
    empty prediction. Values are Python floats (``Pr@50_count`` and counts are ints,
    ``N_acc`` may be None).
    """
    return aggregate(per_query(queries, results, iou=iou, n_images=n_images))


def precision_recall_curve(
    queries: Sequence[Query], results: Mapping[str, Sequence[Hit]], *, iou: str = "box"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled precision–recall over all detections of all queries (``present`` ignored).

    Detections are matched query by query (as for mAP50), then pooled and sorted by
    score descending (ties: query order, then sorted order). Returns ``precision``,
    ``recall`` and ``thresholds`` (the scores), each (N,) float64: entry i is the
    operating point "keep detections with score ≥ thresholds[i]" cut after i+1
    detections. Recall's denominator is the total number of target instances
    (recall is all zeros when there are none).
    """
    _check_iou_mode(iou)
    scores: list[np.ndarray] = []
    tps: list[np.ndarray] = []
    n_targets = 0
    for q in queries:
        matches = match_detections(q, results.get(q.query_id, ()), iou=iou)
        scores.append(np.array([mt.hit.score for mt in matches], dtype=np.float64))
        tps.append(np.array([mt.is_tp for mt in matches], dtype=bool))
        n_targets += len(q.instances)
    if not scores or sum(s.size for s in scores) == 0:
        empty = np.zeros(0, dtype=np.float64)
        return empty, empty.copy(), empty.copy()
    all_scores = np.concatenate(scores)
    order = np.argsort(-all_scores, kind="stable")
    ctp = np.cumsum(np.concatenate(tps)[order])
    precision = ctp / np.arange(1, ctp.size + 1)
    recall = ctp / n_targets if n_targets else np.zeros(ctp.size)
    return precision, recall.astype(np.float64), all_scores[order]
