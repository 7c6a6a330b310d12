"""COCO detection results in and out: other detectors' output scored by resedis, and ours
written for COCO tools.

The COCO results format (cocodataset.org "results format"; what pycocotools'
``COCO.loadRes`` reads) is one JSON list::

    [{"image_id": 42, "category_id": 7, "bbox": [x, y, w, h], "score": 0.93}, ...]

with ``bbox`` in absolute pixels (top-left corner, width, height); an optional
``segmentation`` (COCO RLE) is kept as the detection's mask. resedis adds one optional key,
``present`` (true/false, default true), so that a round trip keeps the presence decisions;
COCO tools ignore it.

**Category -> query.** A results file names categories, resedis scores queries. The
mapping is either given (``category_map``: ``{category_id: query_id}``, e.g. a JSON file
``{"7": "q_red_cup"}``) or, without one, ``str(category_id)`` is the query id: true for D³,
whose descriptions are its categories (category id = ``sent_id`` = resedis query id). When
writing, ``category_id`` is the query id, as an int when it is all digits, else the string
itself (pass a ``category_map`` to write other ids).

Example::

    >>> results = read_coco_results("owlvit_d3.json")              # doctest: +SKIP
    >>> write_coco_results("ours.json", results)                    # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from resedis.types import FormatError, Hit, QueryResult


def is_coco_results_file(path: str | Path) -> bool:
    """True when the file's first non-blank character opens a JSON list (COCO results);
    a predictions JSONL file starts with an object."""
    with open(path, encoding="utf-8") as f:
        while True:
            chunk = f.read(4096)
            if not chunk:
                return False
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0] == "["


def load_category_map(path: str | Path) -> dict[str, str]:
    """A JSON object ``{category_id: query_id}`` -> ``{str(category_id): query_id}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise FormatError(str(path), "<json>", f"cannot read the category map: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) and v for v in data.values()):
        raise FormatError(str(path), "<root>", 'expected an object {"<category_id>": "<query_id>", ...}')
    return {str(k): v for k, v in data.items()}


def _number(src: str, field_name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise FormatError(src, field_name, f"expected a finite number, got {v!r}")
    return float(v)


def coco_to_results(
    records: Any, *, category_map: Mapping[Any, str] | None = None, source: str = "<coco results>"
) -> list[QueryResult]:
    """COCO result records -> one :class:`QueryResult` per query, in order of first appearance;
    each query's detections keep file order. A category missing from ``category_map`` is a
    :class:`FormatError` (so a wrong map cannot silently drop detections)."""
    if not isinstance(records, list):
        raise FormatError(source, "<root>", f"expected a JSON list of results, got {type(records).__name__}")
    cmap = {str(k): v for k, v in category_map.items()} if category_map is not None else None
    by_query: dict[str, list[Hit]] = {}
    for i, rec in enumerate(records):
        src = f"{source}[{i}]"
        if not isinstance(rec, dict):
            raise FormatError(src, "<record>", f"expected an object, got {type(rec).__name__}")
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in rec:
                raise FormatError(src, key, "missing")
        cat = rec["category_id"]
        if isinstance(cat, bool) or not isinstance(cat, (int, str)):
            raise FormatError(src, "category_id", f"expected an int or a string, got {cat!r}")
        if cmap is not None and str(cat) not in cmap:
            raise FormatError(src, "category_id", f"category {cat!r} is not in the category map")
        query_id = cmap[str(cat)] if cmap is not None else str(cat)
        bbox = rec["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise FormatError(src, "bbox", f"expected [x, y, w, h], got {bbox!r}")
        x, y, w, h = (_number(src, "bbox", v) for v in bbox)
        if w < 0 or h < 0:
            raise FormatError(src, "bbox", f"negative width or height in {bbox!r} (COCO boxes are [x, y, w, h])")
        hit = Hit.from_json({"image_id": rec["image_id"], "box": [x, y, x + w, y + h], "score": rec["score"],
                             "present": rec.get("present", True), "mask": rec.get("segmentation")}, source=src)
        by_query.setdefault(query_id, []).append(hit)
    return [QueryResult(query_id=q, expression="", hits=hits) for q, hits in by_query.items()]


def read_coco_results(path: str | Path, *, category_map: Mapping[Any, str] | None = None) -> list[QueryResult]:
    """Read a COCO results JSON file (see the module doc)."""
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(str(path), "<file>", "COCO results file not found") from None
    except json.JSONDecodeError as exc:
        raise FormatError(str(path), "<json>", f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
    return coco_to_results(records, category_map=category_map, source=str(path))


def results_to_coco(results: Iterable[QueryResult], *, category_map: Mapping[str, Any] | None = None) -> list[dict]:
    """QueryResults -> COCO result records. ``category_map``: ``{query_id: category_id}``;
    without it the query id (an int when all digits)."""
    out = []
    for r in results:
        if category_map is not None:
            if r.query_id not in category_map:
                raise ValueError(f"query {r.query_id!r} is not in the category map")
            cat = category_map[r.query_id]
        else:
            cat = int(r.query_id) if r.query_id.isdigit() else r.query_id
        for h in r.hits:
            x0, y0, x1, y1 = (float(v) for v in h.box)
            rec = {"image_id": h.image_id, "category_id": cat, "bbox": [x0, y0, x1 - x0, y1 - y0],
                   "score": float(h.score), "present": bool(h.present)}
            if h.mask is not None:
                rec["segmentation"] = h.mask
            out.append(rec)
    return out


def write_coco_results(
    path: str | Path, results: Iterable[QueryResult], *, category_map: Mapping[str, Any] | None = None
) -> Path:
    """Write :func:`results_to_coco` as one JSON list."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results_to_coco(results, category_map=category_map)) + "\n", encoding="utf-8")
    return path
