"""Numbers behind the report's plots and gallery (no HTML here).

Everything is derived from :mod:`resedis.metrics` (the single definition of matching)
applied to the detections that :func:`resedis.eval.evaluate_predictions` scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from resedis import metrics
from resedis.eval import EvalResult
from resedis.metrics import Match
from resedis.types import Dataset, ImageId, Query


@dataclass(frozen=True)
class Separation:
    """How well detection scores separate target detections (TPs at IoU ≥ 0.5) from
    all other detections, and how the ``present`` flag splits them.

    auc: probability that a random target detection outscores a random other one
         (ties count half); None when either group is empty.
    """

    target_scores: np.ndarray
    other_scores: np.ndarray
    auc: float | None
    target_present: float | None  # share of target detections flagged present
    other_absent: float | None  # share of other detections flagged not present


def match_all(dataset: Dataset, eval_result: EvalResult) -> dict[str, list[Match]]:
    """``{query_id: [Match, ...]}`` in each query's sorted order, for every query."""
    return {
        q.query_id: metrics.match_detections(q, eval_result.results.get(q.query_id, ()), iou=eval_result.iou)
        for q in dataset.queries
    }


def rank_auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """P(pos > neg) + ½·P(pos == neg) over all pairs (Mann–Whitney U / (n·m))."""
    if pos.size == 0 or neg.size == 0:
        return None
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")
    not_above = np.searchsorted(neg_sorted, pos, side="right")
    return float((below + 0.5 * (not_above - below)).sum() / (pos.size * neg.size))


def separation(matches: dict[str, list[Match]]) -> Separation:
    tgt = [(m.hit.score, m.hit.present) for ms in matches.values() for m in ms if m.is_tp]
    oth = [(m.hit.score, m.hit.present) for ms in matches.values() for m in ms if not m.is_tp]
    ts = np.array([s for s, _ in tgt], dtype=np.float64)
    os_ = np.array([s for s, _ in oth], dtype=np.float64)
    return Separation(
        target_scores=ts,
        other_scores=os_,
        auc=rank_auc(ts, os_),
        target_present=float(np.mean([p for _, p in tgt])) if tgt else None,
        other_absent=float(np.mean([not p for _, p in oth])) if oth else None,
    )


def gallery_score(row: dict) -> tuple[float, float, float]:
    """Sort key of a non-absent query: (AP50, BR@1@0.5, IR@1), higher is better."""
    return (row.get("AP50") or 0.0, row.get("BR@1@0.5") or 0.0, row.get("IR@1") or 0.0)


def select_gallery(per_query: Sequence[dict], n: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(best, worst, absent) per-query rows: up to ``n`` best and ``n`` worst non-absent
    queries (disjoint; ties keep dataset order) and up to ``max(n // 2, 1)`` absent
    queries, the ones with the most false-alarm images first."""
    present = [r for r in per_query if not r["absent"]]
    ranked = sorted(present, key=gallery_score, reverse=True)  # stable: dataset order on ties
    n_best = min(n, (len(ranked) + 1) // 2)
    best = ranked[:n_best]
    rest = ranked[n_best:]
    worst = sorted(rest, key=gallery_score)[:n]
    absent = [r for r in per_query if r["absent"]]
    absent = sorted(absent, key=lambda r: (r["fa_images"], r["n_decided"]), reverse=True)[: max(n // 2, 1)]
    return best, worst, absent


@dataclass(frozen=True)
class Panel:
    """One image of a gallery card: which image, why it is shown, the query's
    detections in it (sorted rank, 1-based, with their Match), and its targets."""

    image_id: ImageId
    rank: int | None  # 1-based image rank in the prediction list, None if not retrieved
    is_target: bool
    matches: list[tuple[int, Match]]
    targets: list


def panels(query: Query, matches: list[Match], *, max_images: int = 4, boxes_per_image: int = 3) -> list[Panel]:
    """The images shown for a query: its top-ranked predicted images, then (space
    permitting, at least one) target images the predictions missed."""
    ranking = list(dict.fromkeys(m.hit.image_id for m in matches))
    targets = set(query.target_images)
    shown = ranking[: max(max_images - 1, 1)] if targets - set(ranking[: max_images - 1]) else ranking[:max_images]
    missed = [g for g in query.target_images if g not in shown][: max(max_images - len(shown), 0)]
    out = []
    for image_id in shown + missed:
        in_image = [(i + 1, m) for i, m in enumerate(matches) if m.hit.image_id == image_id][:boxes_per_image]
        out.append(
            Panel(
                image_id=image_id,
                rank=ranking.index(image_id) + 1 if image_id in ranking else None,
                is_target=image_id in targets,
                matches=in_image,
                targets=query.instances_of(image_id),
            )
        )
    return out
