"""Field-by-field validation of an index manifest (``DB/resedis.json``) as read from disk.

A manifest is a JSON file a person can edit (and damage): a field of the wrong type or
out of range must be refused when it is read, naming the field, what it holds, what it
must hold and how to fix it, instead of failing later inside the model or the store
(``"vector_dim": "abc"`` used to end in a traceback, ``"max_regions": -5`` in every image
being recorded as skipped).

:func:`manifest_problems` lists every problem of a parsed manifest (``verify`` reports
them all); :func:`check_manifest_fields` raises one :class:`ResedisError` naming them all
(``read_manifest`` calls it). Unknown keys are not checked: they belong to other versions
or other features and are kept as they are.

>>> [p.field for p in manifest_problems({"schema_version": 1, "model": 7, "vector_dim": "abc",
...     "vector_dtype": "float16", "root": "/data"})]
['model', 'vector_dim']
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass
from typing import Any, Callable

from resedis.errors import ResedisError
from resedis.quant import STORAGE_FORMATS

SCHEMA_VERSION = 1
VECTOR_DTYPE_NAMES = STORAGE_FORMATS  # the region storage formats (resedis.quant)
REQUIRED = ("model", "vector_dim", "vector_dtype", "root")
# The largest vector dimension accepted; OWL class embeddings are 512-1024 (+1 for the shift).
MAX_VECTOR_DIM = 1 << 16


@dataclass(frozen=True)
class FieldProblem:
    """One manifest field that is missing or holds the wrong type or an out-of-range value.

    ``expected``: what the field must hold, in words; ``fix``: what to do about it
    (``{db}`` in it stands for the index directory)."""

    field: str
    value: Any
    expected: str
    fix: str
    missing: bool = False

    def message(self, db: str = "DB") -> str:
        held = "is missing" if self.missing else f"holds {self.value!r} ({type(self.value).__name__})"
        return f"manifest field '{self.field}' {held}; it must be {self.expected}. Fix: {self.fix.format(db=db)}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_timestamp(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        _dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


_REBUILD = "run: resedis repair --db {db} (rewrites the manifest from the index tables)"

# field -> (check, what it must be, the fix). Checked in this order.
_RULES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "schema_version": (
        lambda v: _is_int(v) and 1 <= v <= SCHEMA_VERSION,
        f"an integer from 1 to {SCHEMA_VERSION}",
        "an index written by a newer resedis needs that version (pip install -U resedis); otherwise " + _REBUILD,
    ),
    "model": (
        lambda v: isinstance(v, str) and v.strip() != "" and not v.endswith(":"),
        "a model spec string ('family:source' such as 'owlv2:google/owlv2-base-patch16-ensemble', or a name such as 'demo')",
        "set it to the spec the index was built with, or run: resedis repair --db {db} --model SPEC",
    ),
    "vector_dim": (
        lambda v: _is_int(v) and 1 <= v <= MAX_VECTOR_DIM,
        f"an integer from 1 to {MAX_VECTOR_DIM} (the region vector width)",
        _REBUILD + " (the width is read from the regions table)",
    ),
    "vector_dtype": (
        lambda v: v in VECTOR_DTYPE_NAMES,
        f"one of {', '.join(VECTOR_DTYPE_NAMES)} (the region storage format)",
        "an index in another format was written by a newer resedis, which can read it (pip install -U resedis); "
        "otherwise " + _REBUILD + " (the format is read from the regions table)",
    ),
    "root": (
        lambda v: isinstance(v, str) and os.path.isabs(v),
        "the absolute path of the indexed image folder (a string)",
        _REBUILD + " (the folder is read from the images table)",
    ),
    "preprocessing": (
        lambda v: isinstance(v, dict),
        "an object (the model's preprocessing settings)",
        _REBUILD,
    ),
    "max_regions": (
        lambda v: _is_int(v) and v >= 1,
        "an integer >= 1 (regions kept per image; the default is 100)",
        "set it to the value the index was built with (default 100), or " + _REBUILD,
    ),
    "nms_iou": (
        lambda v: _is_number(v) and 0.0 < v <= 1.0,
        "a number in (0, 1] (NMS IoU; the default is 0.5)",
        "set it to the value the index was built with (default 0.5), or " + _REBUILD,
    ),
    "package_version": (lambda v: isinstance(v, str), "a string", _REBUILD),
    "created": (_is_timestamp, "an ISO 8601 timestamp string", _REBUILD),
    "updated": (_is_timestamp, "an ISO 8601 timestamp string", _REBUILD),
    "calibration": (
        lambda v: v is None or (isinstance(v, dict) and ("threshold" not in v or _is_number(v["threshold"]))),
        "null or an object whose 'threshold' is a finite number",
        "remove the field (or its 'threshold') and recalibrate: resedis calibrate DATASET --db {db}",
    ),
    "weights_fingerprint": (
        lambda v: v is None or (isinstance(v, str) and v.startswith("sha256:") and len(v) > len("sha256:")),
        "null or a string 'sha256:<hex>'",
        "set it to null (the weights then go unchecked), or " + _REBUILD,
    ),
}


def manifest_problems(data: Any) -> list[FieldProblem]:
    """Every problem of a parsed manifest (``json.loads`` of ``resedis.json``): required
    fields missing, known fields of the wrong type or out of range. Empty when it is valid.
    A ``schema_version`` above this version's is a problem too (the manifest may then be
    valid for a newer resedis: its other fields are not checked)."""
    if not isinstance(data, dict):
        return [FieldProblem("(manifest)", data, "a JSON object", _REBUILD)]
    problems = []
    for name in REQUIRED + ("schema_version",):
        if name not in data:
            check, expected, fix = _RULES[name]
            problems.append(FieldProblem(name, None, expected, fix, missing=True))
    version = data.get("schema_version")
    if _is_int(version) and version > SCHEMA_VERSION:
        check, expected, fix = _RULES["schema_version"]
        return problems + [FieldProblem("schema_version", version, expected, fix)]
    for name, (check, expected, fix) in _RULES.items():
        if name in data and not check(data[name]):
            problems.append(FieldProblem(name, data[name], expected, fix))
    return problems


def check_manifest_fields(data: Any, source: str, db: str = "DB") -> None:
    """Raise ResedisError naming every invalid field of the manifest ``data`` read from
    ``source`` (see :func:`manifest_problems`); return quietly when it is valid."""
    problems = manifest_problems(data)
    if not problems:
        return
    if len(problems) == 1:
        raise ResedisError(f"{source}: {problems[0].message(db)}")
    lines = "\n".join(f"  - {p.message(db)}" for p in problems)
    raise ResedisError(f"{source}: {len(problems)} manifest fields are invalid:\n{lines}")
