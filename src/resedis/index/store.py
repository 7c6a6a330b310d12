"""The region store: one LanceDB directory plus a JSON manifest.

Layout of ``DB/``::

    resedis.json        manifest (model spec, weights fingerprint, preprocessing, vector
                        dim/dtype, schema version, package version, created/updated, root,
                        calibration)
    images.lance/       one row per indexed image
    regions.lance/      one row per kept region (box + augmented class vector)
    skipped.lance/      one row per file that could not be indexed, with its reason
    .lock               held (flock) by the one process writing the index

Consistency rule (what makes a batch atomic): an image is *indexed* iff its row exists
in ``images``. Its regions are written before that row, carry the same ``batch`` id,
and a region whose ``(image_id, batch)`` has no ``images`` row is an orphan left by an
interrupted batch: readers ignore it and the writer deletes it before resuming.
Boxes are xyxy in original-image (EXIF-rotated) pixels.
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

import numpy as np
import pyarrow as pa

from resedis.errors import IndexMismatchError, ResedisError
from resedis.index.fs import Location, as_location
from resedis.types import Skipped

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST_NAME = "resedis.json"
IMAGES, REGIONS, SKIPPED = "images", "regions", "skipped"
VECTOR_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}


def canonical_spec(spec: str) -> str:
    """The spec as ``family:source``, a bare family given its default source and a local
    directory made absolute, so that one model has one spelling (for comparison)."""
    from resedis.models import _canonical, parse_spec

    return str(_canonical(parse_spec(spec)))


def images_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),  # POSIX path relative to root
            pa.field("root", pa.string(), nullable=False),
            pa.field("path", pa.string(), nullable=False),  # absolute path when indexed
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("width", pa.int32(), nullable=False),
            pa.field("height", pa.int32(), nullable=False),
            pa.field("mtime_ns", pa.int64(), nullable=False),
            pa.field("size_bytes", pa.int64(), nullable=False),
            pa.field("n_regions", pa.int32(), nullable=False),
            pa.field("batch", pa.int64(), nullable=False),
            pa.field("image_vector", pa.list_(pa.float32()), nullable=True),
        ]
    )


def regions_schema(vector_dim: int, vector_dtype: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("region", pa.int32(), nullable=False),  # rank within the image (objectness order)
            pa.field("box", pa.list_(pa.float32(), 4), nullable=False),  # xyxy original pixels
            pa.field("objectness", pa.float32(), nullable=False),
            pa.field("vector", pa.list_(VECTOR_DTYPES[vector_dtype], vector_dim), nullable=False),
            pa.field("batch", pa.int64(), nullable=False),
        ]
    )


def skipped_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),  # POSIX path relative to root
            pa.field("path", pa.string(), nullable=False),
            pa.field("reason", pa.string(), nullable=False),
            pa.field("size_bytes", pa.int64(), nullable=False),
            pa.field("mtime_ns", pa.int64(), nullable=False),
            pa.field("batch", pa.int64(), nullable=False),
        ]
    )


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
        if data["vector_dtype"] not in VECTOR_DTYPES:
            raise ResedisError(f"{source}: field 'vector_dtype' must be one of {sorted(VECTOR_DTYPES)}, got {data['vector_dtype']!r}")
        known = {k: data[k] for k in cls._KEYS if k in data}
        extra = {k: v for k, v in data.items() if k not in cls._KEYS}
        known.setdefault("preprocessing", {})
        known.setdefault("max_regions", 0)
        known.setdefault("nms_iou", 0.0)
        return cls(**known, extra=extra)

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


_warned_unknown: set[str] = set()
_warned_lock = threading.Lock()


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
        with _warned_lock:
            first = str(db) not in _warned_unknown
            _warned_unknown.add(str(db))
        if first:
            log.warning(
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


def sql_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def in_list(column: str, values: list[str]) -> str:
    return f"{column} IN ({', '.join(sql_quote(v) for v in values)})"


def disk_bytes(path: str | os.PathLike | Location) -> int:
    """Bytes of every file below ``path``, a local directory or an object-store location
    (files vanishing meanwhile are skipped)."""
    return as_location(path).total_bytes()


class Index:
    """An opened index: manifest + the three tables. Cheap to open; read-mostly.

    Use :func:`open_index`; the writer (:func:`resedis.index.build_index`) opens it for
    writing. Tables are read at their latest committed version on every access.
    """

    def __init__(self, path: str | os.PathLike | Location, manifest: Manifest):
        self.location = as_location(path)
        # A pathlib.Path for a local index (as always); for an object-store index its
        # Location (``str()`` is the URI, ``/`` joins, no local file operations).
        self.path = self.location.local_path if self.location.is_local else self.location
        self.manifest = manifest
        self._db = self.location.connect()
        schemas = {
            IMAGES: images_schema(),
            REGIONS: regions_schema(manifest.vector_dim, manifest.vector_dtype),
            SKIPPED: skipped_schema(),
        }
        self._tables = {}
        for name, schema in schemas.items():
            try:
                self._tables[name] = self._db.open_table(name)
            except ValueError:  # not created yet (new index, or killed before its first batch)
                self._tables[name] = self._db.create_table(name, schema=schema, exist_ok=True)
            except (OSError, RuntimeError) as exc:
                raise ResedisError(f"{self.location}: could not open table {name}: {exc}") from exc

    def __repr__(self) -> str:
        return f"Index({str(self.path)!r}, model={self.manifest.model!r})"

    @property
    def images_table(self):
        return self._tables[IMAGES]

    @property
    def regions_table(self):
        return self._tables[REGIONS]

    @property
    def skipped_table(self):
        return self._tables[SKIPPED]

    def manifest_stamp(self) -> object:
        """A value that changes whenever the manifest is rewritten (e.g. calibration stored a
        threshold); None when it cannot be read."""
        return self.location.stamp(MANIFEST_NAME)

    def version(self) -> tuple[int, int]:
        """(images, regions) table versions: changes whenever either is written."""
        return (self.images_table.version, self.regions_table.version)

    def read(self, table: str, columns: list[str] | None = None) -> pa.Table:
        """A table (or some of its columns) at its latest version, as Arrow."""
        tbl = self._tables[table]
        if columns is None:
            return tbl.to_arrow()
        return tbl.search().select(columns).limit(None).to_arrow()

    def orphan_keys(self) -> set[tuple[str, int]]:
        """``(image_id, batch)`` of regions with no images row (left by an interrupted batch)."""
        done = self.read(IMAGES, ["image_id", "batch"])
        regions = self.read(REGIONS, ["image_id", "batch"])
        done_keys = set(zip(done["image_id"].to_pylist(), done["batch"].to_pylist()))
        region_keys = set(zip(regions["image_id"].to_pylist(), regions["batch"].to_pylist()))
        return region_keys - done_keys

    def incomplete_images(self) -> list[str]:
        """Image ids whose stored region count differs from their ``n_regions`` (regions
        lost or damaged outside resedis, e.g. a deleted ``regions.lance``). Sorted."""
        done = self.read(IMAGES, ["image_id", "batch", "n_regions"]).to_pydict()
        regions = self.read(REGIONS, ["image_id", "batch"])
        counts: dict[tuple[str, int], int] = {}
        for key in zip(regions["image_id"].to_pylist(), regions["batch"].to_pylist()):
            counts[key] = counts.get(key, 0) + 1
        return sorted(
            image_id
            for image_id, batch, n in zip(done["image_id"], done["batch"], done["n_regions"])
            if counts.get((image_id, batch), 0) != n
        )

    def stats(self) -> dict:
        """``images, regions, skipped, model, schema_version, bytes`` (+ vector facts)."""
        n_images = self.images_table.count_rows()
        orphans = self.orphan_keys()
        n_orphan = 0
        if orphans:
            regions = self.read(REGIONS, ["image_id", "batch"])
            keys = zip(regions["image_id"].to_pylist(), regions["batch"].to_pylist())
            n_orphan = sum(1 for key in keys if key in orphans)
        return {
            "images": n_images,
            "regions": self.regions_table.count_rows() - n_orphan,
            "skipped": self.skipped_table.count_rows(),
            "model": self.manifest.model,
            "weights_fingerprint": self.manifest.weights_fingerprint,
            "schema_version": self.manifest.schema_version,
            "bytes": self.location.total_bytes(),
            "vector_dim": self.manifest.vector_dim,
            "vector_dtype": self.manifest.vector_dtype,
            "root": self.manifest.root,
            "orphan_regions": n_orphan,
            "incomplete_images": len(self.incomplete_images()),
            "created": self.manifest.created,
            "updated": self.manifest.updated,
        }

    def skipped(self) -> list[Skipped]:
        """Every recorded skip, ``Skipped(path, reason)``, sorted by path."""
        rows = self.read(SKIPPED, ["path", "reason"]).to_pylist()
        return sorted((Skipped(r["path"], r["reason"]) for r in rows), key=lambda s: s.source)

    def searcher(self, *, device: str | None = None):
        """A :class:`resedis.search.Searcher` over this index (loads the text encoder)."""
        from resedis.search import Searcher

        return Searcher(self, device=device)


def open_index(
    db: str | os.PathLike | Location, *, model: str | None = None, storage_options: dict[str, str] | None = None
) -> Index:
    """Open an existing index: a local directory or an object-store URI (``s3://bucket/prefix``,
    ``gs://...``, ``az://...``, ``file://...``; credentials and endpoint from the environment
    and ``storage_options``, see :mod:`resedis.index.fs`). ``model`` (optional) must match
    the index's model spec.

    Raises ResedisError when ``db`` is not an index, has an unsupported schema or cannot
    be reached, and IndexMismatchError when ``model`` differs from the one the index was
    built with.
    """
    loc = as_location(db, storage_options)
    if loc.is_local and not loc.local_path.is_dir():
        raise ResedisError(f"{db}: no such index directory; build one with: resedis index IMAGES_DIR --db {db}")
    manifest = read_manifest(loc)
    check_model(manifest, model, loc.local_path or loc)
    return Index(loc, manifest)


def column_matrix(column: pa.ChunkedArray | pa.Array, width: int, dtype: Any) -> np.ndarray:
    """A fixed-size-list Arrow column -> (N, width) numpy array of ``dtype``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], type=column.type)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=dtype).reshape(-1, width)
