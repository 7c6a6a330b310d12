"""Committing batches to the store, and keeping it tidy.

Each batch is committed in this order, so that killing the process at any instant
leaves a consistent index (see :mod:`resedis.index.store` for the rule):

1. delete the ``images`` rows of files being replaced (their regions become orphans);
2. delete those files' regions, side-table rows and their old skip records;
3. append skip records for files of the batch that could not be decoded;
4. append the batch's regions and side-table rows (tagged with the batch id);
5. append the batch's ``images`` rows — the commit point.

A rerun first deletes orphan regions (:func:`repair`), then redoes whatever has no
``images`` row. One writer at a time: :class:`Lock`.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from resedis.ann_projection import AnnProjection
from resedis.errors import ResedisError
from resedis.index.checksum import batch_checksums
from resedis.index.columns import index_projection, vector_columns
from resedis.index.fs import Location
from resedis.index.plan import FileTask
from resedis.index.prefetch import encode_batch
from resedis.index.side import SideTable
from resedis.index.store import (
    CHECKSUM,
    IMAGES,
    REGIONS,
    SKIPPED,
    Index,
    images_schema,
    in_list,
    regions_schema,
    skipped_schema,
)
from resedis.io.images import LoadedImage
from resedis.types import ImageRegions, Skipped

log = logging.getLogger(__name__)

# Deletes with an IN list are chunked to keep the SQL predicate small.
_DELETE_CHUNK = 500
# The model failing on this many images in a row (no success between) stops the run.
MAX_MODEL_FAILURES_IN_A_ROW = 3


class Lock:
    """Exclusive advisory lock on ``DB/.lock``; released by the kernel if the process dies.

    An index on an object store has no such lock (object stores offer no flock): there
    each table commit is still atomic (Lance), but running two writers of the same index
    at once is the user's to avoid; the lock is then a no-op.
    """

    def __init__(self, db: Path | Location):
        if isinstance(db, Location):
            db = db.local_path  # None on an object store: no lock there
        self.path = None if db is None else Path(db) / ".lock"
        self.fh = None

    def __enter__(self) -> Lock:
        if self.path is None:
            return self
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise ResedisError(f"{self.path.parent}: another process is writing this index; wait for it to finish") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.fh is None:
            return
        fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
        self.fh.close()
        self.fh = None


def delete_ids(table, column: str, ids: list[str]) -> None:
    for start in range(0, len(ids), _DELETE_CHUNK):
        table.delete(in_list(column, ids[start : start + _DELETE_CHUNK]))


def repair(index: Index) -> int:
    """Delete orphan regions (no ``images`` row for their ``(image_id, batch)``), and forget
    images whose regions are incomplete so the run re-encodes them. Returns regions deleted."""
    incomplete = index.incomplete_images()
    if incomplete:
        log.warning(
            "%d indexed images have missing or extra regions (damaged regions table?); re-encoding them",
            len(incomplete),
        )
        delete_ids(index.images_table, "image_id", incomplete)  # their leftover regions become orphans
    orphans = index.orphan_keys()
    if not orphans:
        return 0
    before = index.regions_table.count_rows()
    by_batch: dict[int, list[str]] = {}
    for image_id, batch in orphans:
        by_batch.setdefault(batch, []).append(image_id)
    for batch, ids in by_batch.items():
        for start in range(0, len(ids), _DELETE_CHUNK):
            chunk = ids[start : start + _DELETE_CHUNK]
            index.regions_table.delete(f"batch = {int(batch)} AND {in_list('image_id', chunk)}")
    removed = before - index.regions_table.count_rows()
    log.info("removed %d orphan regions left by an interrupted batch", removed)
    return removed


def region_rows(ids: list[str], regions: list[ImageRegions], batch: int, dim: int, dtype: str,
                projection: AnnProjection | None = None) -> pa.Table:
    """The ``regions`` rows of one batch; every column takes its type from :func:`regions_schema`
    (``vector_columns`` rounds the vectors to the storage format)."""
    counts = [len(r) for r in regions]
    n = sum(counts)
    vectors = np.concatenate([r.vectors for r in regions]) if n else np.zeros((0, dim))
    if vectors.shape[1] != dim:
        raise ResedisError(f"model returned vectors of dimension {vectors.shape[1]}, the index stores {dim}")
    boxes = np.concatenate([r.boxes for r in regions]).ravel() if n else np.zeros(0)  # x0 y0 x1 y1 x0 ...
    return pa.table(
        {
            "image_id": [i for i, c in zip(ids, counts) for _ in range(c)],
            "region": [k for c in counts for k in range(c)],
            "box": pa.FixedSizeListArray.from_arrays(pa.array(boxes), 4),
            "objectness": np.concatenate([r.objectness for r in regions]) if n else np.zeros(0),
            **vector_columns(vectors, dtype, projection),  # the storage format's columns (resedis.quant)
            "batch": [batch] * n,
        },
        schema=regions_schema(dim, dtype, None if projection is None else projection.width),
    )


class BatchWriter:
    """Accumulates one batch (decoded images, skips, ids to replace) and commits it in the
    safe order; encodes with the index's own ``max_regions`` / ``nms_iou``.

    ``backend`` None: the images arrive already encoded (``regions``, e.g. from Ray workers;
    ``LoadedImage`` then needs no pixels unless a side table reads them)."""

    def __init__(self, index: Index, backend, root: Path, first_batch: int, side_tables: list[SideTable] | None = None):
        self.index = index
        self.backend = backend
        self.root = root
        self.batch = first_batch
        self.side_tables = list(side_tables or [])
        self.images: list[tuple[FileTask, LoadedImage]] = []
        self.prepared: list = []  # per image: backend.preprocess output, or None
        self.regions: list[ImageRegions] = []  # per image, when encoded elsewhere (backend None)
        self.skips: list[tuple[FileTask, Skipped]] = []
        self.replaced: list[str] = []  # ids whose old rows must go (changed or now-bad files)
        self.failures_in_a_row = 0  # images the model failed on since its last success

    def pending(self) -> int:
        return len(self.images)

    def delete(self, ids: list[str]) -> None:
        """Delete the images, regions and side-table rows of these ids (not their skips)."""
        delete_ids(self.index.images_table, "image_id", ids)
        delete_ids(self.index.regions_table, "image_id", ids)
        for table in self.side_tables:
            table.delete(ids)

    def _encode(self) -> tuple[list[ImageRegions], list[tuple[FileTask, Skipped]]]:
        """Encode the batch; if the model raises, retry image by image and turn the images
        it still fails on into skips. Repeated failures with no success in between mean
        the model (not the images) is broken: then the error is raised."""
        if self.backend is None:  # encoded elsewhere
            regions, self.regions = self.regions, []
            if len(regions) != len(self.images):
                raise ResedisError(f"{len(self.images)} images to commit but {len(regions)} precomputed regions; "
                                   "with no region encoder, every image needs its regions")
            return regions, []
        m = self.index.manifest
        images = [li.image for _, li in self.images]
        try:
            regions = encode_batch(self.backend, images, self.prepared, m.max_regions, m.nms_iou)
            if len(regions) != len(images):
                raise ResedisError(f"model returned {len(regions)} results for {len(images)} images")
            self.failures_in_a_row = 0 if images else self.failures_in_a_row
            return regions, []
        except ResedisError:
            raise
        except Exception as batch_error:  # noqa: BLE001 - isolate the image that breaks the model
            log.warning("model failed on a batch (%s: %s); retrying image by image", type(batch_error).__name__, batch_error)
        kept, regions, failed = [], [], []
        for (task, loaded), prepared in zip(self.images, self.prepared):
            try:
                regions.extend(encode_batch(self.backend, [loaded.image], [prepared], m.max_regions, m.nms_iou))
                kept.append((task, loaded))
                self.failures_in_a_row = 0
            except Exception as exc:  # noqa: BLE001
                self.failures_in_a_row += 1
                if self.failures_in_a_row >= MAX_MODEL_FAILURES_IN_A_ROW:
                    raise ResedisError(
                        f"the model failed on {self.failures_in_a_row} images in a row (last: {task.path}: "
                        f"{type(exc).__name__}: {exc}); stopping — this looks like a model/device problem"
                    ) from exc
                failed.append((task, Skipped(str(task.path), f"model failed on this image ({type(exc).__name__}: {exc})")))
        self.images = kept
        return regions, failed

    def commit(self) -> list[tuple[FileTask, Skipped]]:
        """Write the batch; returns the images the model failed on (recorded as skips)."""
        if not (self.images or self.skips or self.replaced):
            return []
        idx, m = self.index, self.index.manifest
        regions, failed = self._encode()
        self.skips.extend(failed)
        ids = [task.rel for task, _ in self.images]
        if self.replaced:
            self.delete(self.replaced)
        touched = ids + [task.rel for task, _ in self.skips]
        if touched:
            delete_ids(idx.skipped_table, "image_id", touched)
        if self.skips:
            idx.skipped_table.add(
                pa.table(
                    {
                        "image_id": [task.rel for task, _ in self.skips],
                        "path": [str(task.path) for task, _ in self.skips],
                        "reason": [s.reason for _, s in self.skips],
                        "size_bytes": [task.size for task, _ in self.skips],
                        "mtime_ns": [task.mtime_ns for task, _ in self.skips],
                        "batch": [self.batch] * len(self.skips),
                    },
                    schema=skipped_schema(),  # the columns' types
                )
            )
        if ids:
            projection = index_projection(idx, [r.vectors for r in regions])  # compact storage: its ANN projection
            rows = region_rows(ids, regions, self.batch, m.vector_dim, m.vector_dtype, projection)
            idx.regions_table.add(rows)
            # checksums over the rows exactly as written (bit rot shows in resedis verify)
            checksums = batch_checksums(
                [(task.rel, li.sha256, li.width, li.height, len(r)) for (task, li), r in zip(self.images, regions)],
                rows, self.batch,
            )
            for table in self.side_tables:  # same decoded images, before the commit point
                table.add(ids, [li.image for _, li in self.images], regions, self.batch)
            idx.images_table.add(
                pa.table(
                    {
                        "image_id": ids,
                        "root": [str(self.root)] * len(ids),
                        "path": [str(task.path.resolve()) for task, _ in self.images],
                        "sha256": [li.sha256 for _, li in self.images],
                        "width": [li.width for _, li in self.images],
                        "height": [li.height for _, li in self.images],
                        "mtime_ns": [li.mtime_ns for _, li in self.images],
                        "size_bytes": [li.size_bytes for _, li in self.images],
                        "n_regions": [len(r) for r in regions],
                        "batch": [self.batch] * len(ids),
                        "image_vector": [None if r.image_vector is None else np.asarray(r.image_vector) for r in regions],
                        CHECKSUM: checksums,
                    },
                    schema=images_schema(),  # the columns' types
                )
            )
        self.batch += 1
        self.images, self.prepared, self.skips, self.replaced = [], [], [], []
        return failed


def existing_entries(index: Index) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """image_id -> (sha256, size, mtime_ns) for indexed images; image_id -> (size, mtime_ns,
    reason) for skips."""
    img = index.read(IMAGES, ["image_id", "sha256", "size_bytes", "mtime_ns"]).to_pydict()
    indexed = {i: (s, b, m) for i, s, b, m in zip(img["image_id"], img["sha256"], img["size_bytes"], img["mtime_ns"])}
    sk = index.read(SKIPPED, ["image_id", "size_bytes", "mtime_ns", "reason"]).to_pydict()
    skipped = {i: (b, m, r) for i, b, m, r in zip(sk["image_id"], sk["size_bytes"], sk["mtime_ns"], sk["reason"])}
    return indexed, skipped


def next_batch(index: Index) -> int:
    top = 0
    for name in (IMAGES, REGIONS, SKIPPED):
        col = index.read(name, ["batch"])["batch"]
        if len(col):
            top = max(top, int(pc.max(col).as_py()))
    return top + 1


# Versions younger than this stay when old ones are dropped, so a concurrent reader never
# loses the files of the version it is reading.
KEEP_VERSIONS_FOR = dt.timedelta(minutes=1)


def compact(index: Index, *, end_of_run: bool = False) -> None:
    """Merge the small per-batch fragments and drop superseded versions (older than
    :data:`KEEP_VERSIONS_FOR`). ``end_of_run`` (the writer holds the lock, no other writer
    can be mid-commit): also delete data files no version reads any more — Lance keeps
    such "unverified" files otherwise, and an index was about 5x its live data after a
    build."""
    for table in (index.images_table, index.regions_table, index.skipped_table):
        try:
            table.optimize(cleanup_older_than=KEEP_VERSIONS_FOR, delete_unverified=end_of_run)
        except Exception as exc:  # compaction is an optimisation; never fail the build on it
            log.warning("could not compact table %s: %s", table.name, exc)
