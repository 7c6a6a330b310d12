"""Score a predictions file against a benchmark: metrics, breakdowns, warnings.

The metric definitions live in :mod:`resedis.metrics` (``docs/metrics.md``); this module
checks predictions against the dataset, drops what cannot be scored (and says so),
and slices the queries by expression type, category and target layout.

Example::

    from resedis.io import load_dataset, read_predictions
    from resedis.eval import evaluate_predictions

    ds = load_dataset("bench/")
    res = evaluate_predictions(ds, read_predictions("preds.jsonl"))
    print(res.metrics["BR@1@0.5"], res.warnings)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from resedis import metrics
from resedis.eval_protocols.suite import DEFAULT_PROTOCOL, PROTOCOLS, protocol_metrics
from resedis.io.coco import check_rle
from resedis.masks import normalize_segmentation
from resedis.metrics import IOU_MODES
from resedis.types import EXPRESSION_TYPES, Dataset, FormatError, Hit, ImageId, ImageInfo, Query, QueryResult

# Bucket names for queries that carry no type / category.
UNKNOWN_TYPE = "(untyped)"
NO_CATEGORY = "(none)"
TARGET_LAYOUTS = ("single instance", "several instances, one image", "several images", "absent")

_MAX_LISTED = 10  # ids named in one warning line before "... and N more"


@dataclass
class EvalResult:
    """The outcome of :func:`evaluate_predictions`.

    metrics:   the :func:`resedis.metrics.evaluate` dict over every dataset query
    per_query: one dict per dataset query (dataset order), from
               :func:`resedis.metrics.per_query` (``AP50``, ``IR@K``, ``BR@K@τ``,
               ``tp``, ``fa_images``, ...), with ``type`` / ``category`` set to their
               bucket names and ``targets`` (see :data:`TARGET_LAYOUTS`)
    breakdown: ``{"type": {name: metrics}, "category": {...}, "targets": {...}}``;
               every slice partitions the dataset queries, so the ``queries``
               counts of one slice add up to ``metrics["queries"]``
    warnings:  human-readable lines about predictions that were excluded or look wrong
    excluded:  the same, as data: ``unknown_queries`` (ids), ``duplicate_queries``
               (ids), ``unknown_images`` (ids), ``unknown_image_detections`` (count),
               ``missing_queries`` (dataset queries with no prediction line; scored
               as empty), ``out_of_bounds_detections`` (count; kept)
    results:   the scored detections, ``{query_id: [Hit, ...]}`` (file order kept)
    protocol / protocol_metrics: the ``--protocol`` asked for and its metric dict
               (:mod:`resedis.eval_protocols.suite`); empty for the default ``resedis``
    """

    metrics: dict
    per_query: list[dict]
    breakdown: dict[str, dict[str, dict]]
    warnings: list[str] = field(default_factory=list)
    excluded: dict[str, Any] = field(default_factory=dict)
    results: dict[str, list[Hit]] = field(default_factory=dict)
    iou: str = "box"
    protocol: str = DEFAULT_PROTOCOL
    protocol_metrics: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The metrics at the top level, plus ``breakdown``, ``warnings``, ``excluded``."""
        out = dict(self.metrics)
        out["iou"] = self.iou
        if self.protocol != DEFAULT_PROTOCOL:
            out["protocol"] = self.protocol
            out[self.protocol] = _jsonable(self.protocol_metrics)
        out["breakdown"] = self.breakdown
        out["warnings"] = list(self.warnings)
        out["excluded"] = _jsonable(self.excluded)
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _name_some(ids: Sequence[Any]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_MAX_LISTED])
    more = len(ids) - _MAX_LISTED
    return shown + (f", ... and {more} more" if more > 0 else "")


def _id_hint(image_id: ImageId, known: dict[ImageId, Any]) -> str:
    """Point out the common int-vs-str id mix-up instead of silently coercing."""
    if isinstance(image_id, str) and image_id.strip().lstrip("-").isdigit() and int(image_id) in known:
        return " (the dataset uses integer ids: write 12, not \"12\")"
    if isinstance(image_id, int) and str(image_id) in known:
        return " (the dataset uses string ids)"
    return ""


def _checked_mask(hit: Hit, info: ImageInfo, source: str) -> Hit:
    """``hit`` with its mask validated against the image: ``size`` must be the image's
    ``[height, width]`` and the runs must cover it exactly; uncompressed (list) counts
    are converted to compressed RLE. FormatError (field ``mask...``) otherwise."""
    mask = hit.mask
    if mask is None:
        return hit
    check_rle(mask, info.height, info.width, source, "mask")
    if isinstance(mask.get("counts"), list):
        try:
            mask = normalize_segmentation(mask, info.height, info.width)
        except ValueError as exc:
            raise FormatError(source, "mask.counts", str(exc)) from None
    elif not isinstance(mask.get("counts"), str):
        raise FormatError(source, "mask.counts", f"expected a string or a list of run lengths, "
                          f"got {type(mask.get('counts')).__name__}")
    return Hit(hit.image_id, hit.box, hit.score, hit.present, mask, hit.path)


def _check_results(
    dataset: Dataset, results: Sequence[QueryResult]
) -> tuple[dict[str, list[Hit]], list[str], dict[str, Any]]:
    """Keep what can be scored; name everything that cannot."""
    known_queries = {q.query_id for q in dataset.queries}
    images = dataset.images
    kept: dict[str, list[Hit]] = {}
    unknown_queries: list[str] = []
    duplicates: list[str] = []
    unknown_images: Counter = Counter()
    out_of_bounds = 0
    first_oob: str | None = None

    for res in results:
        if res.query_id not in known_queries:
            unknown_queries.append(res.query_id)
            continue
        if res.query_id in kept:
            duplicates.append(res.query_id)
            continue
        hits: list[Hit] = []
        for i, hit in enumerate(res.hits):
            info = images.get(hit.image_id)
            if info is None:
                unknown_images[hit.image_id] += 1
                continue
            src = f"predictions: query {res.query_id!r} detections[{i}] (image {hit.image_id!r})"
            hit = _checked_mask(hit, info, src)
            x0, y0, x1, y1 = hit.box
            if x0 < -1 or y0 < -1 or x1 > info.width + 1 or y1 > info.height + 1:
                out_of_bounds += 1
                if first_oob is None:
                    first_oob = (
                        f"query {res.query_id!r}, image {hit.image_id!r} "
                        f"({info.width}x{info.height}), box {list(hit.box)}"
                    )
            hits.append(hit)
        kept[res.query_id] = hits

    missing = [q.query_id for q in dataset.queries if q.query_id not in kept]
    warnings: list[str] = []
    if unknown_queries:
        warnings.append(
            f"{len(unknown_queries)} prediction line(s) name query ids that are not in the dataset "
            f"and were excluded: {_name_some(unknown_queries)}"
        )
    if duplicates:
        warnings.append(
            f"{len(duplicates)} prediction line(s) repeat a query id already seen; only the first "
            f"line of each query was scored: {_name_some(sorted(set(duplicates)))}"
        )
    if unknown_images:
        ids = list(unknown_images)
        hint = _id_hint(ids[0], images)
        warnings.append(
            f"{sum(unknown_images.values())} detection(s) name {len(ids)} image id(s) that are not in "
            f"the dataset and were excluded: {_name_some(ids)}{hint}"
        )
    if out_of_bounds:
        warnings.append(
            f"{out_of_bounds} detection(s) extend beyond their image (kept; boxes must be xyxy in "
            f"original pixels), first: {first_oob}"
        )
    if missing:
        warnings.append(
            f"{len(missing)} dataset quer(y/ies) have no prediction line and were scored as empty: "
            f"{_name_some(missing)}"
        )
    excluded = {
        "unknown_queries": unknown_queries,
        "duplicate_queries": duplicates,
        "unknown_images": list(unknown_images),
        "unknown_image_detections": int(sum(unknown_images.values())),
        "missing_queries": missing,
        "out_of_bounds_detections": out_of_bounds,
    }
    return kept, warnings, excluded


def target_layout(query: Query) -> str:
    """Which of :data:`TARGET_LAYOUTS` a query's ground truth has."""
    if query.is_absent:
        return "absent"
    if len(query.target_images) > 1:
        return "several images"
    return "single instance" if len(query.instances) == 1 else "several instances, one image"


def _slices(queries: Sequence[Query]) -> dict[str, dict[str, list[Query]]]:
    by_type: dict[str, list[Query]] = {}
    by_category: dict[str, list[Query]] = {}
    by_layout: dict[str, list[Query]] = {name: [] for name in TARGET_LAYOUTS}
    for q in queries:
        by_type.setdefault(q.type or UNKNOWN_TYPE, []).append(q)
        by_category.setdefault(q.category or NO_CATEGORY, []).append(q)
        by_layout[target_layout(q)].append(q)
    type_order = [t for t in EXPRESSION_TYPES if t in by_type] + sorted(
        t for t in by_type if t not in EXPRESSION_TYPES
    )
    return {
        "type": {t: by_type[t] for t in type_order},
        "category": {c: by_category[c] for c in sorted(by_category)},
        "targets": {name: qs for name, qs in by_layout.items() if qs},
    }


def evaluate_predictions(
    dataset: Dataset, results: Sequence[QueryResult], *, iou: str = "box", protocol: str = DEFAULT_PROTOCOL
) -> EvalResult:
    """Score ``results`` (one :class:`QueryResult` per query) on ``dataset``.

    Prediction lines naming unknown query ids, repeated query ids, and detections naming
    unknown image ids are excluded and reported in ``warnings`` / ``excluded``; dataset
    queries with no line are scored as empty predictions. Boxes are xyxy pixels. A
    detection mask whose size is not its image's ``[H, W]`` or whose runs do not cover
    it is a :class:`FormatError`; uncompressed RLE masks are accepted (converted).
    ``iou`` is ``"box"`` or ``"mask"`` (mask IoU where both sides have masks).
    ``protocol``: also score with another benchmark's protocol (``d3``, ``grec``, ``reir``,
    ``saco``; see :mod:`resedis.eval_protocols.suite`) into ``protocol_metrics``.
    """
    if iou not in IOU_MODES:
        raise ValueError(f"iou must be one of {IOU_MODES}, got {iou!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    kept, warnings, excluded = _check_results(dataset, results)
    queries = dataset.queries
    per_query = metrics.per_query(queries, kept, iou=iou, n_images=len(dataset.images))
    for q, row in zip(queries, per_query):
        row["type"] = q.type or UNKNOWN_TYPE
        row["category"] = q.category or NO_CATEGORY
        row["targets"] = target_layout(q)
    overall = metrics.aggregate(per_query)

    row_of = {row["query_id"]: row for row in per_query}
    breakdown: dict[str, dict[str, dict]] = {}
    for slice_name, groups in _slices(queries).items():
        breakdown[slice_name] = {
            name: metrics.aggregate([row_of[q.query_id] for q in subset]) for name, subset in groups.items()
        }
    return EvalResult(
        metrics=overall,
        per_query=per_query,
        breakdown=breakdown,
        warnings=warnings,
        excluded=excluded,
        results=kept,
        iou=iou,
        protocol=protocol,
        protocol_metrics={} if protocol == DEFAULT_PROTOCOL
        else protocol_metrics(protocol, queries, kept, dataset.images, iou=iou),
    )


def format_metrics_table(m: dict) -> str:
    """A plain-text table of the headline metrics, for the terminal."""

    def fmt(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    lines = [f"queries: {m.get('queries', '?')} (absent: {m.get('absent_queries', '?')})", ""]
    lines.append("image retrieval   " + "  ".join(f"IR@{k} {fmt(m.get(f'IR@{k}'))}" for k in (1, 5, 10)))
    lines.append(f"top-1 precision   Pr@50 {fmt(m.get('Pr@50'))}  (over {fmt(m.get('Pr@50_count'))} queries)")
    lines.append("box recall        " + "".join(f"{'τ=' + str(t):>10}" for t in (0.5, 0.7, 0.9)))
    for k in (1, 5, 10):
        lines.append(f"  BR@{k:<14}" + "".join(f"{fmt(m.get(f'BR@{k}@{t}')):>10}" for t in (0.5, 0.7, 0.9)))
    lines.append(f"detection         mAP50 {fmt(m.get('mAP50'))}")
    lines.append(
        "discovery         "
        f"precision {fmt(m.get('precision'))}  recall {fmt(m.get('recall'))}  F1 {fmt(m.get('F1'))}"
    )
    lines.append(
        f"                  FA_per_query {fmt(m.get('FA_per_query'))}  N_acc {fmt(m.get('N_acc'))}"
    )
    lines.append(
        f"presence (SA-Co)  IL_MCC {fmt(m.get('IL_MCC'))}  pmF1 {fmt(m.get('pmF1'))}  cgF1 {fmt(m.get('cgF1'))}"
    )
    return "\n".join(lines)
