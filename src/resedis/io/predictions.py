"""Predictions JSONL: one line per query.

Each line::

    {"query_id": str, "expression": str,
     "detections": [{"image_id": int | str, "box": [x0, y0, x1, y1], "score": float,
                     "present": bool, "mask": RLE | null}, ...]}

Boxes are xyxy absolute pixels; masks compressed COCO RLE. ``expression`` may be
omitted (read as ``""``); ``present`` defaults to true; an optional ``timings`` object
of numbers is kept. Blank lines are ignored.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterable

from resedis.types import FormatError, Hit, QueryResult


def _parse_line(src: str, line: str) -> QueryResult:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise FormatError(src, "<json>", f"invalid JSON at column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise FormatError(src, "<line>", f"expected a JSON object, got {type(data).__name__}")
    if "query_id" not in data:
        raise FormatError(src, "query_id", "missing")
    qid = data["query_id"]
    if not isinstance(qid, str) or not qid:
        raise FormatError(src, "query_id", f"expected a non-empty string, got {qid!r}")
    expression = data.get("expression", "")
    if not isinstance(expression, str):
        raise FormatError(src, "expression", f"expected a string, got {expression!r}")
    if "detections" not in data:
        raise FormatError(src, "detections", "missing (use [] for no detections)")
    dets = data["detections"]
    if not isinstance(dets, list):
        raise FormatError(src, "detections", f"expected a list, got {type(dets).__name__}")
    hits = [Hit.from_json(d, source=f"{src} detections[{i}]") for i, d in enumerate(dets)]
    timings = data.get("timings")
    if timings is not None:
        if not isinstance(timings, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in timings.values()
        ):
            raise FormatError(src, "timings", "expected an object of finite numbers")
        timings = {str(k): float(v) for k, v in timings.items()}
    return QueryResult(query_id=qid, expression=expression, hits=hits, timings=timings)


def read_predictions(path: str | Path) -> list[QueryResult]:
    """Read and validate a predictions JSONL file, in file order.

    Raises :class:`FormatError` naming ``file:line`` and the field for bad JSON, a
    missing/invalid ``query_id``, a malformed detection (box, score, present, mask) or
    a query id that appears on two lines.
    """
    path = Path(path)
    if not path.is_file():
        raise FormatError(str(path), "<file>", "predictions file not found")
    results: list[QueryResult] = []
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            src = f"{path}:{lineno}"
            result = _parse_line(src, line)
            if result.query_id in first_line:
                raise FormatError(src, "query_id", f"duplicate query id {result.query_id!r} "
                                  f"(first on line {first_line[result.query_id]})")
            first_line[result.query_id] = lineno
            results.append(result)
    return results


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_predictions(path: str | Path, results: Iterable[QueryResult]) -> Path:
    """Write results as JSONL atomically (temp file in the same folder + rename).

    Refuses duplicate query ids (ValueError) so that what is written can be read back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file open()'s usual mode
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in results:
                if r.query_id in seen:
                    raise ValueError(f"duplicate query id {r.query_id!r} in results")
                seen.add(r.query_id)
                f.write(json.dumps(r.to_json(), separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
