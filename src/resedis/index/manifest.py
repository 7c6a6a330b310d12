"""What an index is and which model built it: the manifest ``DB/resedis.json``.

The manifest records the model spec, the weights fingerprint, preprocessing, vector
dim/dtype, schema version, package version, created/updated, root and calibration; the
checks here refuse a model or weights other than those the region vectors were encoded
with. The tables themselves live in :mod:`resedis.index.store`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from resedis.errors import IndexMismatchError, ResedisError
from resedis.index.fs import Location, as_location
from resedis.quant import STORAGE_FORMATS

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST_NAME = "resedis.json"
VECTOR_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}  # float storage formats -> Arrow type


def canonical_spec(spec: str) -> str:
    """The spec as ``family:source``, a bare family given its default source and a local
    directory made absolute, so that one model has one spelling (for comparison)."""
    from resedis.models import _canonical, parse_spec

    return str(_canonical(parse_spec(spec)))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Manifest:
    """The self-description of an index (``DB/resedis.json``).

    ``calibration`` (optional) is ``{"threshold": float, ...}`` written by calibration;
    keys this version does not know are kept in ``extra`` and written back unchanged.
    ``weights_fingerprint``: ``"sha256:<hex>"`` of the weights the region vectors were
    encoded with (:mod:`resedis.models.fingerprint`); None in manifests written before it
    was recorded ("unknown": such an index is used as before, with a one-time warning).
    ``vector_dtype``: the storage format of the region vectors, one of
    :data:`resedis.quant.STORAGE_FORMATS` (``float16``/``float32``: the vector
    itself; ``int8``/``int4``: per-row scaled codes + exact bias, :mod:`resedis.quant`).
    """

    model: str
    vector_dim: int
    vector_dtype: str
    preprocessing: dict
    root: str
    max_regions: int
    nms_iou: float
    schema_version: int = SCHEMA_VERSION
    package_version: str = ""
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)
    calibration: dict | None = None
    weights_fingerprint: str | None = None
    extra: dict = field(default_factory=dict)

    _KEYS = (
        "model", "vector_dim", "vector_dtype", "preprocessing", "root", "max_regions", "nms_iou",
        "schema_version", "package_version", "created", "updated", "calibration", "weights_fingerprint",
    )

    def to_json(self) -> dict:
        out = {key: getattr(self, key) for key in self._KEYS}
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: Any, source: str) -> Manifest:
        if not isinstance(data, dict):
            raise ResedisError(f"{source}: manifest must be a JSON object")
        version = data.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ResedisError(f"{source}: field 'schema_version' missing or not an integer ({version!r}); not a resedis index manifest")
        if version > SCHEMA_VERSION:
            raise ResedisError(
                f"{source}: index schema version {version} was written by a newer resedis "
                f"(package {data.get('package_version', '?')}); this version reads schema <= {SCHEMA_VERSION}. Upgrade resedis."
            )
        if version < 1:
            raise ResedisError(f"{source}: unknown index schema version {version}")
        missing = [k for k in ("model", "vector_dim", "vector_dtype", "root") if k not in data]
        if missing:
            raise ResedisError(f"{source}: manifest lacks field(s) {', '.join(missing)}")
        fingerprint = data.get("weights_fingerprint")
        if fingerprint is not None and not (isinstance(fingerprint, str) and fingerprint):
            raise ResedisError(f"{source}: field 'weights_fingerprint' must be a string (\"sha256:<hex>\") or null, got {fingerprint!r}")
        if data["vector_dtype"] not in STORAGE_FORMATS:
            raise ResedisError(
                f"{source}: field 'vector_dtype' (the region storage format) must be one of {list(STORAGE_FORMATS)}, "
                f"got {data['vector_dtype']!r}; an index written by a newer resedis needs that version"
            )
        known = {k: data[k] for k in cls._KEYS if k in data}
        extra = {k: v for k, v in data.items() if k not in cls._KEYS}
        known.setdefault("preprocessing", {})
        known.setdefault("max_regions", 0)
        known.setdefault("nms_iou", 0.0)
        return cls(**known, extra=extra)

    @property
    def storage(self) -> str:
        """The region storage format (the manifest key is ``vector_dtype``, kept for old indexes)."""
        return self.vector_dtype

    @property
    def threshold(self) -> float | None:
        """The calibrated presence threshold, when calibration stored one."""
        if isinstance(self.calibration, dict) and isinstance(self.calibration.get("threshold"), (int, float)):
            return float(self.calibration["threshold"])
        return None


def read_manifest(db: str | os.PathLike | Location) -> Manifest:
    """``DB/resedis.json`` of a local index directory or an object-store URI (:mod:`resedis.index.fs`)."""
    loc = as_location(db)
    try:
        text = loc.read_bytes(MANIFEST_NAME).decode("utf-8")
    except FileNotFoundError:
        raise ResedisError(
            f"{db}: not a resedis index (no {MANIFEST_NAME}); build one with: resedis index IMAGES_DIR --db {db}"
        ) from None
    except UnicodeDecodeError as exc:
        raise ResedisError(f"{loc / MANIFEST_NAME}: manifest is not UTF-8 text ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResedisError(f"{loc / MANIFEST_NAME}: manifest is not valid JSON ({exc})") from None
    return Manifest.from_json(data, str(loc / MANIFEST_NAME))


def write_manifest(db: str | os.PathLike | Location, manifest: Manifest) -> None:
    """Write ``DB/resedis.json`` atomically: locally temp file, fsync, rename; on an
    object store one PUT of the whole object (see :meth:`Location.write_atomic`)."""
    text = json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n"
    as_location(db).write_atomic(MANIFEST_NAME, text.encode("utf-8"))


def check_model(manifest: Manifest, requested: str | None, db: Path) -> None:
    """Raise IndexMismatchError when ``requested`` is not the model the index was built with."""
    if requested is None:
        return
    if canonical_spec(requested) != canonical_spec(manifest.model):
        raise IndexMismatchError(
            f"{db}: the index was built with model {manifest.model!r}, but {requested!r} was asked for. "
            "Region vectors of different models are not comparable: use the index's model "
            "(omit --model), or build a separate index with --db NEW_DIR."
        )


_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def warn_once(key: tuple[str, str], logger: logging.Logger, msg: str, *args) -> None:
    """``logger.warning(msg, *args)`` the first time ``key`` (e.g. ``("regions", str(db))``)
    is seen in this process; later calls with the same key are silent."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(msg, *args)


def check_weights(manifest: Manifest, encoder, db) -> None:
    """Raise IndexMismatchError when the weights of ``encoder`` (a loaded backend; None: the
    index's model spec as it resolves now) are not those the index was built with
    (:mod:`resedis.models.fingerprint`). The spec can stay while its weights change (``demo``
    retrained, ``resedis finetune`` rerun into the same directory); new text vectors against
    old region vectors score nonsense, and an update would mix two models. A manifest without
    a fingerprint (built before they were recorded) is "unknown": allowed, with one log
    warning per index and process."""
    from resedis.models.fingerprint import encoder_weights_dir, short_fingerprint, spec_weights_dir, weights_fingerprint

    stored = manifest.weights_fingerprint
    if stored is None:
        warn_once(
            ("regions", str(db)), log,
            "%s: the index records no weights fingerprint (built before resedis recorded one), so it "
            "cannot be checked that model %s still has the weights its vectors were encoded with; if "
            "those weights changed since, rebuild the index into a new --db",
            db, manifest.model,
        )
        return
    weights_dir = encoder_weights_dir(encoder) if encoder is not None else spec_weights_dir(manifest.model)
    fingerprint = weights_fingerprint(weights_dir)
    if stored != fingerprint:
        raise IndexMismatchError(
            f"{db}: the index was built with model {manifest.model!r} weights {short_fingerprint(stored)}, "
            f"but the weights at {weights_dir} are now {short_fingerprint(fingerprint)}: they were retrained or "
            "replaced since the index was built, and vectors of different weights are not comparable "
            "(scores would be meaningless, an update would mix two models). Rebuild the index with the "
            f"current weights into a new directory (resedis index {manifest.root} --db NEW_DB --model {manifest.model}), "
            "or restore the weights the index was built with."
        )
