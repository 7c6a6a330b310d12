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
from resedis.index.manifest_fields import SCHEMA_VERSION, check_manifest_fields
from resedis.models.fingerprint import encoder_weights_dir, fingerprint_matches, short_fingerprint, spec_weights_dir
from resedis.models.spec import canonical_spec
from resedis.quant import FLOAT_FORMATS

log = logging.getLogger(__name__)

MANIFEST_NAME = "resedis.json"
VECTOR_DTYPES = {name: getattr(pa, name)() for name in FLOAT_FORMATS}  # float storage formats -> Arrow type of `vector`


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (the manifest's ``created``/``updated``)."""
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
    :data:`resedis.quant.STORAGE_FORMATS` (``float16``/``float32``: the vector itself;
    ``int8``/``int4``: per-row scaled codes + exact bias, :mod:`resedis.quant`).
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
    created: str = field(default_factory=utc_now)
    updated: str = field(default_factory=utc_now)
    calibration: dict | None = None
    weights_fingerprint: str | None = None
    extra: dict = field(default_factory=dict)

    KEYS = (
        "model", "vector_dim", "vector_dtype", "preprocessing", "root", "max_regions", "nms_iou",
        "schema_version", "package_version", "created", "updated", "calibration", "weights_fingerprint",
    )

    def to_json(self) -> dict:
        out = {key: getattr(self, key) for key in self.KEYS}
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
        # every field by type and range (resedis.index.manifest_fields), naming the field and the fix
        check_manifest_fields(data, source, db=source.rsplit("/", 1)[0] if source.endswith(MANIFEST_NAME) else "DB")
        known = {k: data[k] for k in cls.KEYS if k in data}
        extra = {k: v for k, v in data.items() if k not in cls.KEYS}
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
        if any(name.endswith(".lance") for name in loc.list_names()):
            raise ResedisError(
                f"{db}: the index manifest {MANIFEST_NAME} is missing (the tables are there); rebuild it with: "
                f"resedis repair --db {db} --model SPEC (SPEC: the model the index was built with)"
            ) from None
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


def record_index_cost(manifest: Manifest, seconds: float, images: int) -> None:
    """Fold one indexing run (``seconds`` of wall time for ``images`` images) into the
    manifest's running mean ``index_seconds_per_image`` (``index_timed_images`` counts);
    the ablation table reports it as the region index's cost per image."""
    n_old = int(manifest.extra.get("index_timed_images", 0))
    old = float(manifest.extra.get("index_seconds_per_image", 0.0))
    manifest.extra["index_timed_images"] = n_old + images
    manifest.extra["index_seconds_per_image"] = (old * n_old + seconds) / (n_old + images)


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
    matches, fingerprint = fingerprint_matches(stored, weights_dir)  # v1 (weights only) or v2 (+ processor)
    if not matches:
        raise IndexMismatchError(
            f"{db}: the index was built with model {manifest.model!r} weights {short_fingerprint(stored)}, "
            f"but the weights at {weights_dir} are now {short_fingerprint(fingerprint)}: they were retrained or "
            "replaced since the index was built, and vectors of different weights are not comparable "
            "(scores would be meaningless, an update would mix two models). Rebuild the index with the "
            f"current weights into a new directory (resedis index {manifest.root} --db NEW_DB --model {manifest.model}), "
            "or restore the weights the index was built with."
        )


#: Preprocessing keys that describe but do not decide the pixels/tokens (class names vary
#: across transformers versions, dtype is the precision the model ran in): never compared.
PREPROCESSING_INFO_KEYS = frozenset({"image_processor", "dtype"})


def _same_setting(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(a)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_setting(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_setting(a[k], b[k]) for k in a)
    return a == b


def check_preprocessing(manifest: Manifest, backend, db) -> None:
    """Raise IndexMismatchError when ``backend.preprocessing()`` (how the loaded model turns
    images and texts into inputs) differs from the ``preprocessing`` the index recorded.

    Compared: the keys both records have, except :data:`PREPROCESSING_INFO_KEYS`; a key only
    one side has (added by a later resedis, or dropped) is not a mismatch, so older indexes
    keep working. A manifest without a preprocessing record is "unknown": allowed, with one
    log warning per index and process."""
    stored = manifest.preprocessing or {}
    if not stored:
        warn_once(("preprocessing", str(db)), log,
                  "%s: the index records no preprocessing, so it cannot be checked that model %s still "
                  "preprocesses images as when the index was built", db, manifest.model)
        return
    current = backend.preprocessing()
    diff = sorted(k for k in stored.keys() & current.keys()
                  if k not in PREPROCESSING_INFO_KEYS and not _same_setting(stored[k], current[k]))
    if diff:
        detail = "; ".join(f"{k}: index {stored[k]!r}, model now {current[k]!r}" for k in diff)
        raise IndexMismatchError(
            f"{db}: the index was built with model {manifest.model!r} preprocessing other than the loaded "
            f"model's ({detail}). Region vectors of differently preprocessed images are not comparable: "
            "use the model and processor files the index was built with, or rebuild the index into a new "
            f"directory (resedis index {manifest.root} --db NEW_DB --model {manifest.model})."
        )
