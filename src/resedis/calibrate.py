"""Calibrated presence: fit a pipeline's threshold (and fusion parameters) on labelled queries.

Fitting (:func:`fit_threshold`): for one set of detections, every distinct score is a
candidate operating point ``present = score >= t``; discovery precision/recall/F1
(``docs/metrics.md``, matching as in :mod:`resedis.metrics`) are swept over all of them at
once (greedy matching in score order means a detection's TP status does not depend on
the threshold). The best F1 wins (ties: the higher threshold, fewer false alarms); the
stored threshold is the midpoint between the last kept score and the next lower one.
With no detection worth keeping, the threshold is set above every score.

Parameters (:func:`calibrate_prepared`): each setting of the pipeline's ``param_grid``
(``owl+rerank``: fusion weight λ; ``clip-crops``: relation weight) is finished from ONE
prepared run and given its best threshold; the best F1 wins (ties: grid order).

Storage (:func:`store_calibration`): ``manifest["calibration"][pipeline] = {"threshold",
"params", "F1", "precision", "recall", "N_acc", "FA_per_query", "queries", "dataset",
"query_ids_sha256", "iou", "context", "fitted"}`` (``context``: the grounder / crop
encoder it was fitted with; an entry fitted with other models than the pipeline's
current ones is not used); the ``owl`` threshold is mirrored at
``manifest["calibration"]["threshold"]``, the key :class:`resedis.search.Searcher` reads.

Evaluation never fits on what it reports (:func:`evaluate_with_calibration`):

* ``"stored"`` (default) — the manifest's calibration; a warning is raised when it was
  fitted on exactly the queries being evaluated (same dataset name and query-id digest);
* ``"none"`` — no stored calibration: the pipeline's documented defaults (``owl``: the
  index model's checkpoint ``presence_threshold`` when it has one, see :mod:`resedis.thresholds`);
* a fraction ``f`` in (0, 1) — hold-out: a seeded, absent/non-absent stratified share ``f``
  of the queries is used to fit, the OTHER queries are scored and reported;
* ``"kfold:K"`` — every query is scored with parameters fitted on the other K-1 folds.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from resedis import metrics
from resedis.errors import ResedisError
from resedis.index.manifest import read_manifest, write_manifest
from resedis.pipelines.base import Pipeline, as_queries, subset_dataset
from resedis.types import Dataset, Query, QueryResult


@dataclass
class ThresholdFit:
    threshold: float
    F1: float
    precision: float
    recall: float


def fit_threshold(queries: Sequence[Query], results: Sequence[QueryResult], *, iou: str = "box") -> ThresholdFit:
    """The threshold maximising discovery F1 of ``results`` on ``queries`` (see module doc)."""
    by_id = metrics.results_by_query(results)
    precision, recall, scores = metrics.precision_recall_curve(queries, by_id, iou=iou)
    if scores.size == 0:
        return ThresholdFit(math.inf, 0.0, 0.0, 0.0)
    # valid operating points: the last detection of each group of equal scores
    last = np.ones(scores.size, bool)
    last[:-1] = scores[1:] != scores[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    f1 = np.where(last, f1, -1.0)
    best = f1.max()
    if best <= 0:
        return ThresholdFit(float(np.nextafter(scores[0], np.inf)), 0.0, 0.0, 0.0)
    i = int(np.flatnonzero(f1 == best)[0])  # the first = the highest threshold among ties
    lower = scores[i + 1] if i + 1 < scores.size else None
    threshold = float(scores[i]) if lower is None else float((scores[i] + lower) / 2)
    if lower is not None and not lower < threshold <= scores[i]:  # midpoint lost to rounding
        threshold = float(scores[i])
    return ThresholdFit(threshold, float(best), float(precision[i]), float(recall[i]))


def digest_ids(query_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(map(str, query_ids))).encode()).hexdigest()


@dataclass
class CalibrationResult:
    """A fitted operating point and what it gives on the queries it was fitted on."""

    pipeline: str
    threshold: float
    params: dict
    metrics: dict
    queries: int
    dataset: str
    query_ids_sha256: str
    iou: str = "box"
    grid: list[dict] = field(default_factory=list)
    context: dict = field(default_factory=dict)  # models it depends on (Pipeline.calibration_context)

    def to_json(self) -> dict:
        out = {
            "threshold": self.threshold if math.isfinite(self.threshold) else None,
            "params": self.params,
            "queries": self.queries,
            "dataset": self.dataset,
            "query_ids_sha256": self.query_ids_sha256,
            "iou": self.iou,
            "context": self.context,
            "fitted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        out.update({k: self.metrics.get(k) for k in ("F1", "precision", "recall", "N_acc", "FA_per_query")})
        return out


def _select(results: Sequence[QueryResult], ids: set[str]) -> list[QueryResult]:
    return [r for r in results if r.query_id in ids]


def calibrate_prepared(pipeline, prepared, queries: Sequence[Query], *, iou: str = "box", dataset_name: str = "") -> CalibrationResult:
    """Fit threshold + parameters of ``pipeline`` on ``queries`` (a subset of what
    ``prepared`` holds) without running any model again."""
    if not queries:
        raise ResedisError("no queries to calibrate on")
    ids = {q.query_id for q in queries}
    best: tuple[float, dict, ThresholdFit] | None = None
    grid = []
    for params in pipeline.param_grid():
        fit = fit_threshold(queries, _select(pipeline.finish(prepared, params, 0.0), ids), iou=iou)
        grid.append({"params": params, "threshold": fit.threshold if math.isfinite(fit.threshold) else None, "F1": fit.F1})
        if best is None or fit.F1 > best[0]:
            best = (fit.F1, params, fit)
    _, params, fit = best
    final = _select(pipeline.finish(prepared, params, fit.threshold), ids)
    achieved = metrics.evaluate(queries, metrics.results_by_query(final), iou=iou)
    return CalibrationResult(
        pipeline=pipeline.name, threshold=fit.threshold, params=dict(params), metrics=achieved,
        queries=len(queries), dataset=dataset_name, query_ids_sha256=digest_ids(ids), iou=iou, grid=grid,
        context=pipeline.calibration_context(),
    )


def store_calibration(index, result: CalibrationResult) -> dict:
    """Write ``result`` into the index manifest under ``calibration[pipeline]`` (see module doc)."""
    manifest = read_manifest(index.path)
    cal = dict(manifest.calibration) if isinstance(manifest.calibration, dict) else {}
    entry = result.to_json()
    cal[result.pipeline] = entry
    if result.pipeline == "owl":
        cal["threshold"] = entry["threshold"] if entry["threshold"] is not None else 1.0
    manifest.calibration = cal
    write_manifest(index.path, manifest)
    index.manifest = manifest
    return entry


def calibrate_pipeline(pipeline: Pipeline, dataset: Dataset, *, iou: str = "box", fraction: float | None = None,
                       seed: int = 0, store: bool = True) -> tuple[CalibrationResult, dict | None, Dataset]:
    """Fit ``pipeline`` (e.g. :meth:`resedis.query.QueryEngine.pipeline`) on the queries of
    ``dataset`` (``fraction``: only a seeded share of them, :func:`split_queries`) and, with
    ``store``, write the result into the index manifest. Returns (the fit, the stored
    manifest entry or None, the dataset it was fitted on)."""
    if fraction is not None:
        dataset = subset_dataset(dataset, split_queries(dataset, fraction, seed=seed)[0])
    prepared = pipeline.prepare(as_queries(dataset=dataset), dataset)
    result = calibrate_prepared(pipeline, prepared, dataset.queries, iou=iou, dataset_name=dataset.name)
    stored = store_calibration(pipeline.index, result) if store else None
    return result, stored, dataset


def split_queries(dataset: Dataset, fraction: float, *, seed: int = 0) -> tuple[list[str], list[str]]:
    """(calibration ids, evaluation ids): a seeded share ``fraction`` of the absent and of
    the non-absent queries (each rounded, at least one of each kind when there are two or
    more) goes to calibration; order is by a hash of (seed, query id), so stable."""
    if not 0.0 < fraction < 1.0:
        raise ResedisError(f"calibration fraction must be in (0, 1), got {fraction}")
    calib: list[str] = []
    for group in ([q for q in dataset.queries if q.is_absent], [q for q in dataset.queries if not q.is_absent]):
        order = sorted(group, key=lambda q: hashlib.sha256(f"{seed}:{q.query_id}".encode()).hexdigest())
        n = int(round(fraction * len(order)))
        if len(order) >= 2:
            n = min(max(n, 1), len(order) - 1)
        calib += [q.query_id for q in order[:n]]
    chosen = set(calib)
    rest = [q.query_id for q in dataset.queries if q.query_id not in chosen]
    if not calib or not rest:
        raise ResedisError(f"dataset has {len(dataset.queries)} queries: too few to hold out a calibration split")
    return [q.query_id for q in dataset.queries if q.query_id in chosen], rest


def kfold_splits(dataset: Dataset, k: int, *, seed: int = 0) -> list[list[str]]:
    """K folds of query ids (seeded hash order, absent and non-absent dealt round-robin)."""
    if k < 2 or k > len(dataset.queries):
        raise ResedisError(f"kfold needs 2 <= K <= number of queries ({len(dataset.queries)}), got {k}")
    folds: list[list[str]] = [[] for _ in range(k)]
    i = 0
    for group in ([q for q in dataset.queries if q.is_absent], [q for q in dataset.queries if not q.is_absent]):
        for q in sorted(group, key=lambda q: hashlib.sha256(f"{seed}:{q.query_id}".encode()).hexdigest()):
            folds[i % k].append(q.query_id)
            i += 1
    return folds


def parse_split(spec: str | float | None) -> tuple[str, Any]:
    """``None``/"stored" | "none" | fraction | "kfold:K" -> (mode, value)."""
    if spec is None or spec == "stored":
        return "stored", None
    if spec == "none":
        return "none", None
    if isinstance(spec, str) and spec.startswith("kfold:"):
        try:
            return "kfold", int(spec.partition(":")[2])
        except ValueError:
            raise ResedisError(f"--calibration-split {spec!r}: expected kfold:K with an integer K") from None
    try:
        value = float(spec)
    except (TypeError, ValueError):
        raise ResedisError(f"--calibration-split {spec!r}: expected stored, none, a fraction in (0, 1) or kfold:K") from None
    if not 0.0 < value < 1.0:
        raise ResedisError(f"--calibration-split {spec!r}: a fraction must be in (0, 1)")
    return "holdout", value


def evaluate_with_calibration(pipeline, dataset: Dataset, split: str | float | None = None, *, iou: str = "box",
                              seed: int = 0) -> tuple[list[QueryResult], Dataset, dict]:
    """Run ``pipeline`` on ``dataset`` and decide presence without fitting on what is
    reported. Returns (results of the reported queries, the dataset restricted to them,
    split report dict). See the module docstring for the modes."""
    mode, value = parse_split(split)
    tw = time.perf_counter()
    pipeline.warm_up(dataset)  # model loading is not query latency
    t0 = time.perf_counter()
    prepared = pipeline.prepare(as_queries(dataset=dataset), dataset)
    t1 = time.perf_counter()
    report: dict[str, Any] = {"mode": mode, "seed": seed}
    if mode in ("stored", "none"):
        params, threshold, source = pipeline.resolved()
        if mode == "none" and source == "calibrated":
            uncal = pipeline.uncalibrated_threshold()  # the checkpoint's presence_threshold or the default
            params, threshold, source = pipeline.default_params(), uncal.value, uncal.source
        tf = time.perf_counter()
        results = pipeline.finish(prepared, params, threshold)
        finish_s = time.perf_counter() - tf
        entry = pipeline.calibration() if source == "calibrated" else None
        report.update(threshold=threshold, params=params, source=source, evaluated_queries=len(dataset.queries))
        if pipeline.calibration_note and mode == "stored":
            report["note"] = pipeline.calibration_note
        if entry is not None:
            report["calibrated_on"] = {k: entry.get(k) for k in ("dataset", "queries", "query_ids_sha256", "fitted")}
            if entry.get("dataset") == dataset.name and entry.get("query_ids_sha256") == digest_ids([q.query_id for q in dataset.queries]):
                report["warning"] = ("the stored calibration was fitted on exactly these queries: metrics that "
                                     "depend on presence (precision, recall, F1, FA, N_acc) are optimistic; "
                                     "use --calibration-split")
        reported = dataset
    elif mode == "holdout":
        calib_ids, eval_ids = split_queries(dataset, value, seed=seed)
        fit = calibrate_prepared(pipeline, prepared, subset_dataset(dataset, calib_ids).queries, iou=iou,
                                 dataset_name=dataset.name)
        keep = set(eval_ids)
        tf = time.perf_counter()
        results = _select(pipeline.finish(prepared, fit.params, fit.threshold), keep)
        finish_s = time.perf_counter() - tf
        reported = subset_dataset(dataset, eval_ids)
        report.update(fraction=value, threshold=fit.threshold, params=fit.params, calibration_F1=fit.metrics["F1"],
                      calibration_queries=len(calib_ids), evaluated_queries=len(eval_ids),
                      calibration_query_ids=calib_ids)
    else:
        folds = kfold_splits(dataset, value, seed=seed)
        results_by_id: dict[str, QueryResult] = {}
        report["folds"] = []
        finish_s = 0.0
        for i, fold in enumerate(folds):
            train = [qid for j, f in enumerate(folds) if j != i for qid in f]
            fit = calibrate_prepared(pipeline, prepared, subset_dataset(dataset, train).queries, iou=iou,
                                     dataset_name=dataset.name)
            tf = time.perf_counter()
            fold_results = _select(pipeline.finish(prepared, fit.params, fit.threshold), set(fold))
            finish_s += (time.perf_counter() - tf) / len(folds)
            for r in fold_results:
                results_by_id[r.query_id] = r
            report["folds"].append({"queries": fold, "threshold": fit.threshold, "params": fit.params})
        results = [results_by_id[q.query_id] for q in dataset.queries]
        reported = dataset
        report.update(k=value, evaluated_queries=len(dataset.queries))
    t2 = time.perf_counter()
    # query_ms: model forwards + search (prepare) and one final fusion/ranking pass, per query
    report["seconds"] = {"warm_up": t0 - tw, "prepare": t1 - t0, "fitting_and_finish": t2 - t1, "final_finish": finish_s}
    report["query_ms"] = 1000 * (t1 - t0 + finish_s) / max(1, len(dataset.queries))
    return results, reported, report
