"""The region store: one LanceDB directory plus a JSON manifest.

Layout of ``DB/``::

    resedis.json        manifest (model spec, weights fingerprint, preprocessing, vector
                        dim/dtype, schema version, package version, created/updated, root,
                        calibration): see :mod:`resedis.index.manifest`
    images.lance/       one row per indexed image
    regions.lance/      one row per kept region (box + augmented class vector)
    skipped.lance/      one row per file that could not be indexed, with its reason
    crops.lance/        optional: crop embeddings (resedis.index.crops)
    masks.lance/        optional: SAM masks of returned hits, a cache (resedis.index.masks)
    .lock               held (flock) by the one process writing the index

Consistency rule (what makes a batch atomic): an image is *indexed* iff its row exists
in ``images``. Its regions are written before that row, carry the same ``batch`` id,
and a region whose ``(image_id, batch)`` has no ``images`` row is an orphan left by an
interrupted batch: readers ignore it and the writer deletes it before resuming.
Boxes are xyxy in original-image (EXIF-rotated) pixels.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from resedis.errors import DamagedIndexError, ResedisError
from resedis.storage_errors import first_line, storage_error
from resedis.index.ann import AnnBuild, AnnConfig, optimize_ann
from resedis.index.fs import Location, as_location
from resedis.index.columns import manifest_proj_width, vector_fields
from resedis.index.manifest import MANIFEST_NAME, VECTOR_DTYPES, Manifest, check_model, read_manifest  # noqa: F401 (re-exported)
from resedis.types import Skipped

IMAGES, REGIONS, SKIPPED = "images", "regions", "skipped"
CHECKSUM = "checksum"  # images column: per-image checksum of the stored rows
# Side tables, kept in step with ``images`` by their own modules: crops.lance
# (resedis.index.crops) and masks.lance (resedis.index.masks).
CROPS, MASKS = "crops", "masks"


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
            # "v1:<hex>" over the image's rows as stored (resedis.index.checksum); null in
            # rows written before checksums were recorded
            pa.field(CHECKSUM, pa.string(), nullable=True),
        ]
    )


def regions_schema(vector_dim: int, vector_dtype: str, proj_width: int | None = None) -> pa.Schema:
    """``vector_dtype``: the storage format (:data:`resedis.quant.STORAGE_FORMATS`);
    ``proj_width``: a compact index's ANN column width (None: a new index's)."""
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("region", pa.int32(), nullable=False),  # rank within the image (objectness order)
            pa.field("box", pa.list_(pa.float32(), 4), nullable=False),  # xyxy original pixels
            pa.field("objectness", pa.float32(), nullable=False),
            *vector_fields(vector_dim, vector_dtype, proj_width),  # "vector", or codes/step/bias/proj (resedis.quant)
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


def sql_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def in_list(column: str, values: list[str]) -> str:
    return f"{column} IN ({', '.join(sql_quote(v) for v in values)})"


def disk_bytes(path: str | os.PathLike | Location) -> int:
    """Bytes of every file below ``path``, a local directory or an object-store location
    (files vanishing meanwhile are skipped)."""
    return as_location(path).total_bytes()


class Index:
    """An opened index: manifest + its tables. Cheap to open; read-mostly.

    Use :func:`open_index`; the writer (:func:`resedis.index.build_index`) opens it for
    writing. Tables are read at their latest committed version on every access. Code
    outside :mod:`resedis.index` reads through the methods here (:meth:`read`,
    :meth:`count`, :meth:`version`, ...) and never holds a LanceDB table: the table
    handles (``images_table``, :meth:`table`) are for the index package's own modules.
    """

    def __init__(self, path: str | os.PathLike | Location, manifest: Manifest, *, create: bool = False):
        """``create``: create missing tables (the writer: a new index, or one whose tables
        were lost and are rebuilt by the run). A reader refuses an index that lost some of
        its tables (DamagedIndexError: searching it would answer "0 hits" in silence); an
        index none of whose tables exist yet (nothing committed) reads as empty."""
        self.location = as_location(path)
        # A pathlib.Path for a local index (as always); for an object-store index its
        # Location (``str()`` is the URI, ``/`` joins, no local file operations).
        self.path = self.location.local_path if self.location.is_local else self.location
        self.manifest = manifest
        self._db = self.location.connect()
        schemas = {
            IMAGES: images_schema(),
            REGIONS: regions_schema(manifest.vector_dim, manifest.vector_dtype, manifest_proj_width(manifest)),
            SKIPPED: skipped_schema(),
        }
        self._tables = {}
        missing = []
        for name in schemas:
            try:
                self._tables[name] = self._db.open_table(name)
            except ValueError:  # not created yet (new index, or killed before its first batch), or lost
                missing.append(name)
            except Exception as exc:  # noqa: BLE001 - a storage failure, or a damaged table
                raise storage_error(exc, self.location / f"{name}.lance") or DamagedIndexError(
                    f"{self.location}: table {name} cannot be opened ({first_line(exc)}): the index is damaged; "
                    f"see: resedis verify --db {self.location}, then run: resedis repair --db {self.location}"
                ) from exc
        if missing and not create and len(missing) < len(schemas):
            lost = ", ".join(f"{name}.lance" for name in missing)
            raise DamagedIndexError(
                f"{self.location}: the index is damaged: table {lost} is missing; "
                f"see: resedis verify --db {self.location}, then run: resedis repair --db {self.location}"
            )
        for name in missing:
            self._tables[name] = self._db.create_table(name, schema=schemas[name], exist_ok=True)
        if create and CHECKSUM not in self._tables[IMAGES].schema.names:
            # an index from before checksums: new rows carry one, old rows read as null
            self._tables[IMAGES].add_columns({CHECKSUM: "CAST(NULL AS STRING)"})

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
        """A table (or some of its columns) at its latest version, as Arrow. A storage
        failure raises StorageError; rows that fail to decode raise DamagedIndexError."""
        tbl = self._tables[table]
        try:
            if columns is None:
                return tbl.to_arrow()
            return tbl.search().select(columns).limit(None).to_arrow()
        except Exception as exc:  # noqa: BLE001 - Lance reports damage as ValueError/RuntimeError/OSError
            raise self.read_error(table, exc) from exc
        except BaseException as exc:  # Lance panics on some damage (pyo3 PanicException)
            if type(exc).__name__ != "PanicException":
                raise
            raise self.read_error(table, exc) from exc

    def read_error(self, table: str, exc: BaseException) -> Exception:
        """What reading ``table`` failing with ``exc`` means: a storage failure
        (StorageError), a programming error (``exc`` itself: a column that does not
        exist), or damage (DamagedIndexError naming verify and repair)."""
        storage = storage_error(exc, self.location / f"{table}.lance")
        if storage is not None:
            return storage
        if isinstance(exc, Exception) and ("No field named" in str(exc) or "Schema error" in str(exc)):
            return exc
        return DamagedIndexError(
            f"{self.location}: table {table} has rows that cannot be read ({first_line(exc)}): the index is damaged; "
            f"see: resedis verify --db {self.location}, then run: resedis repair --db {self.location}"
        )

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

    def table(self, name: str, schema: pa.Schema | None = None):
        """The LanceDB table ``name`` (for :mod:`resedis.index` modules: side tables such as
        ``crops`` and ``masks``); None when it does not exist, unless ``schema`` is given:
        then it is created with that schema."""
        if name in self._tables:
            return self._tables[name]
        try:
            return self._db.open_table(name)
        except ValueError:
            if schema is None:
                return None
            return self._db.create_table(name, schema=schema, exist_ok=True)

    def count(self, name: str) -> int:
        """Rows of table ``name`` (0 when the index has no such table); orphans included."""
        table = self.table(name)
        return 0 if table is None else table.count_rows()

    def table_version(self, name: str) -> int | None:
        """The current version of table ``name`` (None when absent): changes on every write."""
        table = self.table(name)
        return None if table is None else table.version

    def table_bytes(self, names: tuple[str, ...] | list[str]) -> int:
        """Bytes on disk (or in the object store) of these tables' directories."""
        return sum((self.location / f"{name}.lance").total_bytes() for name in names)

    def rebuild_ann(self, config: AnnConfig | None = None) -> AnnBuild | None:
        """(Re)train the ANN index over all region vectors now (``resedis index --optimize``);
        None when there are no regions. The caller holds the writer lock
        (:class:`resedis.index.commit.Lock`)."""
        return optimize_ann(self.regions_table, config or AnnConfig(), rebuild=True)


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
