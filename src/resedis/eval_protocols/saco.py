"""SA-Co presence metrics (SAM 3): IL_MCC, pmF1 and cgF1 over (query, image) pairs.

Definitions follow the official evaluator, ``sam3/eval/cgf1_eval.py`` in
facebookresearch/sam3 (classes ``CGF1Eval`` / ``CGF1Evaluator``; read, not copied):

* the unit is one **(phrase, image) pair**. Here a pair is (query, corpus image): every
  query is paired with every image of the corpus, so a corpus of ``N`` images and ``Q``
  queries has ``Q·N`` pairs;
* a pair's **predictions** are the query's *decided* detections in that image (resedis'
  ``present`` flag plays the role of SA-Co's score threshold 0.5); its **targets** are the
  query's target instances in that image;
* image level: a pair is IL_TP when it has targets and predictions, IL_FP with
  predictions only, IL_FN with targets only, IL_TN with neither;
  ``IL_MCC = (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))`` (0 when a factor is 0);
* instance level, at each IoU threshold ``t`` of ``0.50:0.05:0.95`` (pycocotools'
  COCOeval default, which ``CGF1Eval`` keeps): in every pair with targets and predictions,
  predictions and targets are matched one-to-one by the Hungarian assignment that
  maximises total IoU (``scipy.optimize.linear_sum_assignment``), and a matched pair with
  IoU ≥ t is a TP. Summed over pairs: ``TP_t``; the *positive-micro* false positives are
  the unmatched predictions of IL_TP pairs only (predictions in pairs without targets are
  left to IL_MCC); false negatives are all target instances not matched, over every pair.
  ``pmF1_t`` is the F1 of ``precision = TP_t / (predictions in IL_TP pairs)`` and
  ``recall = TP_t / (all target instances)``;
* ``pmF1`` and ``cgF1`` are the means over the ten thresholds, ``cgF1_t = pmF1_t × IL_MCC``
  (so ``cgF1 = pmF1 × IL_MCC``), as SA-Co reports them; ``@50`` / ``@75`` are single thresholds.

Differences from the official code, both below 1e-3 on any realistic table: it adds
``1e-4`` to the precision/recall/F1 denominators and ``1e-6`` to IL_MCC's; here empty
denominators give 0 exactly. Crowd targets (ignored by COCOeval) do not exist in resedis.

Example::

    >>> c = PresenceCounts.zero()
    >>> c = c + pair_counts(np.array([[0.9]]))          # one positive pair, one hit
    >>> presence_scores(c.with_negatives(3))["IL_MCC"]   # plus three empty pairs
    1.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

# exactly pycocotools Params.iouThrs, so that boundary IoUs fall on the same side
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
PRESENCE_KEYS = ("IL_MCC", "pmF1", "cgF1")


@dataclass(frozen=True)
class PresenceCounts:
    """Sums over (query, image) pairs. ``tp`` is (len(IOU_THRESHOLDS),) int64.

    ``il_tn`` is None when the corpus size is unknown (then IL_MCC and cgF1 are None).
    ``positive_predictions``: predictions in IL_TP pairs; ``targets``: all target instances.
    """

    il_tp: int
    il_fp: int
    il_fn: int
    il_tn: int | None
    tp: np.ndarray
    positive_predictions: int
    targets: int

    @classmethod
    def zero(cls) -> PresenceCounts:
        return cls(0, 0, 0, 0, np.zeros(len(IOU_THRESHOLDS), dtype=np.int64), 0, 0)

    def __add__(self, other: PresenceCounts) -> PresenceCounts:
        tn = None if self.il_tn is None or other.il_tn is None else self.il_tn + other.il_tn
        return PresenceCounts(
            self.il_tp + other.il_tp, self.il_fp + other.il_fp, self.il_fn + other.il_fn, tn,
            self.tp + other.tp, self.positive_predictions + other.positive_predictions,
            self.targets + other.targets,
        )

    def with_negatives(self, n: int | None) -> PresenceCounts:
        """Add ``n`` pairs with neither targets nor predictions (IL_TN); None: unknown."""
        if n is not None and n < 0:
            raise ValueError(f"negative number of empty pairs: {n}")
        tn = None if n is None or self.il_tn is None else self.il_tn + n
        return PresenceCounts(self.il_tp, self.il_fp, self.il_fn, tn, self.tp,
                              self.positive_predictions, self.targets)

    def to_record(self) -> dict:
        """Flat JSON-able fields for a per-query record (see :func:`from_records`)."""
        return {"il_tp": self.il_tp, "il_fp": self.il_fp, "il_fn": self.il_fn, "il_tn": self.il_tn,
                "presence_tp": [int(v) for v in self.tp], "presence_predictions": self.positive_predictions,
                "presence_targets": self.targets}


def from_records(records) -> PresenceCounts:
    """Sum the :meth:`PresenceCounts.to_record` fields of many per-query records."""
    total = PresenceCounts.zero()
    for r in records:
        total = total + PresenceCounts(r["il_tp"], r["il_fp"], r["il_fn"], r["il_tn"],
                                       np.asarray(r["presence_tp"], dtype=np.int64),
                                       r["presence_predictions"], r["presence_targets"])
    return total


def matched_ious(ious: np.ndarray) -> np.ndarray:
    """IoUs of the one-to-one assignment (predictions × targets) maximising total IoU."""
    ious = np.asarray(ious, dtype=np.float64)
    if ious.ndim != 2:
        raise ValueError(f"ious must be (n_predictions, n_targets), got shape {ious.shape}")
    if ious.size == 0:
        return np.zeros(0)
    rows, cols = linear_sum_assignment(-ious)
    return ious[rows, cols]


def pair_counts(ious: np.ndarray) -> PresenceCounts:
    """Counts of ONE (query, image) pair from its (n_predictions, n_targets) IoU matrix."""
    ious = np.asarray(ious, dtype=np.float64)
    if ious.ndim != 2:
        raise ValueError(f"ious must be (n_predictions, n_targets), got shape {ious.shape}")
    n_dt, n_gt = ious.shape
    zero_tp = np.zeros(len(IOU_THRESHOLDS), dtype=np.int64)
    if n_dt == 0 and n_gt == 0:
        return PresenceCounts(0, 0, 0, 1, zero_tp, 0, 0)
    if n_dt == 0:
        return PresenceCounts(0, 0, 1, 0, zero_tp, 0, n_gt)
    if n_gt == 0:
        return PresenceCounts(0, 1, 0, 0, zero_tp, 0, 0)
    matched = matched_ious(ious)
    tp = (matched[None, :] >= IOU_THRESHOLDS[:, None]).sum(axis=1).astype(np.int64)
    return PresenceCounts(1, 0, 0, 0, tp, n_dt, n_gt)


def _f1(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    s = p + r
    return np.divide(2 * p * r, s, out=np.zeros_like(s), where=s > 0)


def mcc(tp: int, fp: int, fn: int, tn: int) -> float:
    """Matthews correlation coefficient; 0.0 when any marginal is 0."""
    denom = float(tp + fp) * float(tp + fn) * float(tn + fp) * float(tn + fn)
    return float((tp * tn - fp * fn) / np.sqrt(denom)) if denom > 0 else 0.0


def presence_scores(c: PresenceCounts) -> dict:
    """IL_MCC, pmF1, cgF1 (means over IOU_THRESHOLDS), their @50 / @75 values, and the
    image-level precision / recall. IL_MCC and cgF1 are None when ``c.il_tn`` is None."""
    tp = c.tp.astype(np.float64)
    precision = tp / c.positive_predictions if c.positive_predictions else np.zeros_like(tp)
    recall = tp / c.targets if c.targets else np.zeros_like(tp)
    pmf1 = _f1(precision, recall)
    il_mcc = None if c.il_tn is None else mcc(c.il_tp, c.il_fp, c.il_fn, c.il_tn)
    at = {50: 0, 75: 5}
    out: dict = {
        "IL_MCC": il_mcc,
        "pmF1": float(pmf1.mean()),
        "cgF1": None if il_mcc is None else float(pmf1.mean() * il_mcc),
    }
    for k, i in at.items():
        out[f"pmF1@{k}"] = float(pmf1[i])
        out[f"cgF1@{k}"] = None if il_mcc is None else float(pmf1[i] * il_mcc)
    out["IL_precision"] = c.il_tp / (c.il_tp + c.il_fp) if c.il_tp + c.il_fp else 0.0
    out["IL_recall"] = c.il_tp / (c.il_tp + c.il_fn) if c.il_tp + c.il_fn else 0.0
    out.update({"IL_TP": c.il_tp, "IL_FP": c.il_fp, "IL_FN": c.il_fn, "IL_TN": c.il_tn})
    return out
