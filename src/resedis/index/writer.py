"""Build or update an index: discover -> decode (background threads) -> encode -> commit.

Each batch is committed in this order, so that killing the process at any instant
leaves a consistent index (see :mod:`resedis.index.store` for the rule):

1. delete the ``images`` rows of files being replaced (their regions become orphans);
2. delete those files' regions and their old skip records;
3. append skip records for files of the batch that could not be decoded;
4. append the batch's regions (tagged with the batch id);
5. append the batch's ``images`` rows — the commit point.

A rerun first deletes orphan regions, then redoes whatever has no ``images`` row.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
from PIL import Image

from resedis.errors import IndexMismatchError, ResedisError
from resedis.index.store import (
    IMAGES,
    REGIONS,
    SKIPPED,
    VECTOR_DTYPES,
    Index,
    Manifest,
    canonical_spec,
    check_model,
    in_list,
    images_schema,
    read_manifest,
    regions_schema,
    skipped_schema,
    write_manifest,
    MANIFEST_NAME,
    _now,
)
from resedis.io.images import DEFAULT_MAX_PIXELS, LoadedImage, discover_images, load_image, pixel_limit
from resedis.types import ImageRegions, Skipped

log = logging.getLogger(__name__)

# Deletes with an IN list are chunked to keep the SQL predicate small.
_DELETE_CHUNK = 500
DEFAULT_MAX_REGIONS = 100
DEFAULT_NMS_IOU = 0.5
# Every batch adds a few table versions; compact (and drop old versions) this often.
_COMPACT_EVERY = 200


@dataclass
class IndexConfig:
    """How to build an index. ``model``, ``max_regions``, ``nms_iou`` and ``vector_dtype``
    left at None mean: the index's own setting, or for a new index the default model,
    100 regions, NMS IoU 0.5 and float16. An explicit value must match an existing index.

    vector_dtype: storage type of region vectors, ``float16`` (default: half the disk and
    memory; logits within about 1e-3 relative, see tests/test_index.py) or ``float32``.
    max_pixels: decompression-bomb guard (images with more pixels are skipped).
    rehash: hash every file even when its size and mtime are unchanged.
    """

    model: str | None = None
    batch_size: int = 8
    max_regions: int | None = None
    nms_iou: float | None = None
    device: str | None = None
    prune: bool = False
    vector_dtype: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    workers: int = 4
    rehash: bool = False

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ResedisError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_regions is not None and self.max_regions < 1:
            raise ResedisError(f"max_regions must be >= 1, got {self.max_regions}")
        if self.nms_iou is not None and not 0.0 < self.nms_iou <= 1.0:
            raise ResedisError(f"nms_iou must be in (0, 1] (1 disables NMS), got {self.nms_iou}")
        if self.vector_dtype is not None and self.vector_dtype not in VECTOR_DTYPES:
            raise ResedisError(f"vector_dtype must be one of {sorted(VECTOR_DTYPES)}, got {self.vector_dtype!r}")
        if self.max_pixels < 1:
            raise ResedisError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.workers < 1:
            raise ResedisError(f"workers must be >= 1, got {self.workers}")


@dataclass
class IndexReport:
    """What a build did. ``skipped`` lists every file currently recorded as unusable."""

    db: str
    root: str
    model: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    new_skipped: int = 0
    seconds: float = 0.0
    encoded: int = 0

    @property
    def images_per_s(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "db": self.db,
            "root": self.root,
            "model": self.model,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "skipped": [{"path": s.source, "reason": s.reason} for s in self.skipped],
            "new_skipped": self.new_skipped,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 3),
        }

    def summary(self) -> str:
        return (
            f"{self.added} added, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.removed} removed, {len(self.skipped)} skipped ({self.new_skipped} new) "
            f"in {self.seconds:.1f} s"
        )


@dataclass
class _Job:
    rel: str
    path: Path
    size: int
    mtime_ns: int
    known_sha: str | None  # sha256 of the indexed version, when the file was indexed before


class _Lock:
    """Exclusive advisory lock on ``DB/.lock``; released by the kernel if the process dies."""

    def __init__(self, db: Path):
        self.path = db / ".lock"
        self.fh = None

    def __enter__(self) -> _Lock:
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise ResedisError(f"{self.path.parent}: another process is writing this index; wait for it to finish") from None
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
        self.fh.close()


def _delete_ids(table, column: str, ids: list[str]) -> None:
    for start in range(0, len(ids), _DELETE_CHUNK):
        table.delete(in_list(column, ids[start : start + _DELETE_CHUNK]))


def repair(index: Index) -> int:
    """Delete orphan regions (no ``images`` row for their ``(image_id, batch)``). Returns rows deleted."""
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


def _open_for_write(db: Path, root: Path, config: IndexConfig, encoder):
    """-> (Index, model spec, encoder or None). Creates the manifest of a new index (loading ``encoder``
    if not given); refuses a model/root/dtype mismatch with an existing one."""
    if (db / MANIFEST_NAME).exists():
        manifest = read_manifest(db)
        check_model(manifest, config.model, db)
        if encoder is not None:
            check_model(manifest, encoder.spec, db)
        if Path(manifest.root) != root:
            raise ResedisError(
                f"{db}: this index holds images of {manifest.root}, not {root}; "
                "use a separate --db for another folder"
            )
        for name, asked, stored in (
            ("vector_dtype", config.vector_dtype, manifest.vector_dtype),
            ("max_regions", config.max_regions, manifest.max_regions),
            ("nms_iou", config.nms_iou, manifest.nms_iou),
        ):
            if asked is not None and asked != stored:
                raise IndexMismatchError(
                    f"{db}: the index was built with {name}={stored!r}, but {name}={asked!r} was asked for; "
                    "omit it to keep the index's setting, or build a new index with --db NEW_DIR"
                )
        return Index(db, manifest), manifest.model, encoder
    if any(p.name != ".lock" for p in db.iterdir()):
        raise ResedisError(f"{db}: exists, is not empty, and has no {MANIFEST_NAME}; refusing to write an index into it")
    from resedis import __version__

    if encoder is None:
        from resedis.models import DEFAULT_MODEL

        encoder = _load_backend(canonical_spec(config.model or DEFAULT_MODEL), config.device)
    elif config.model is not None and canonical_spec(config.model) != canonical_spec(encoder.spec):
        raise IndexMismatchError(f"config.model {config.model!r} differs from the given encoder's spec {encoder.spec!r}")
    spec = canonical_spec(encoder.spec)
    manifest = Manifest(
        model=spec,
        vector_dim=int(encoder.vector_dim),
        vector_dtype=config.vector_dtype or "float16",
        preprocessing=encoder.preprocessing(),
        root=str(root),
        max_regions=config.max_regions or DEFAULT_MAX_REGIONS,
        nms_iou=config.nms_iou or DEFAULT_NMS_IOU,
        package_version=__version__,
    )
    write_manifest(db, manifest)
    return Index(db, manifest), spec, encoder


def _load_backend(spec: str, device: str | None):
    from resedis.models import load_model

    backend = load_model(spec, device)
    if not hasattr(backend, "encode_images") or not hasattr(backend, "vector_dim"):
        raise ResedisError(f"model {spec} is not a region encoder; index needs an OWL-family model (owlv2:, owlvit:)")
    return backend


def _load_and_prepare(job: _Job, max_pixels: int, prepare) -> tuple[LoadedImage | Skipped, object]:
    loaded = load_image(job.path, max_pixels)
    if prepare is None or isinstance(loaded, Skipped):
        return loaded, None
    return loaded, prepare([loaded.image])


def _prefetch(
    jobs: list[_Job], max_pixels: int, workers: int, window: int, prepare=None
) -> Iterator[tuple[_Job, LoadedImage | Skipped, object]]:
    """Decode (and, with ``prepare``, preprocess for the model) on a thread pool, yielding
    in job order with ``window`` jobs in flight, so the model never waits on the disk."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="resedis-decode") as pool:
        pending: deque[tuple[_Job, Future]] = deque()
        it = iter(jobs)
        for job in it:
            pending.append((job, pool.submit(_load_and_prepare, job, max_pixels, prepare)))
            if len(pending) >= window:
                break
        while pending:
            job, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_load_and_prepare, nxt, max_pixels, prepare)))
            loaded, prepared = fut.result()
            yield job, loaded, prepared


def _preprocessor(backend):
    """``backend.preprocess`` when the backend splits preprocessing from the forward pass
    (OWL: ``preprocess`` + ``encode_preprocessed``), so it can run in the decode threads."""
    if callable(getattr(backend, "preprocess", None)) and callable(getattr(backend, "encode_preprocessed", None)):
        return backend.preprocess
    return None


def _encode(backend, images: list[Image.Image], prepared: list, max_regions: int, nms_iou: float) -> list[ImageRegions]:
    """One batched forward. Uses the preprocessed tensors when every image has them."""
    if not images:
        return []
    if prepared and all(p is not None for p in prepared):
        import torch

        from resedis.models.owl import keep_top_regions

        pixel_values = torch.cat([p[0] for p in prepared])
        sizes = [size for p in prepared for size in p[1]]
        return [keep_top_regions(r, max_regions, nms_iou) for r in backend.encode_preprocessed(pixel_values, sizes)]
    return backend.encode_images(images, max_regions, nms_iou)


def _region_rows(ids: list[str], regions: list[ImageRegions], batch: int, dim: int, dtype: str) -> pa.Table:
    counts = [len(r) for r in regions]
    n = sum(counts)
    boxes = np.concatenate([r.boxes for r in regions]).astype(np.float32) if n else np.zeros((0, 4), np.float32)
    vectors = np.concatenate([r.vectors for r in regions]) if n else np.zeros((0, dim))
    if vectors.shape[1] != dim:
        raise ResedisError(f"model returned vectors of dimension {vectors.shape[1]}, the index stores {dim}")
    vectors = vectors.astype(np.float16 if dtype == "float16" else np.float32)
    objectness = np.concatenate([r.objectness for r in regions]).astype(np.float32) if n else np.zeros(0, np.float32)
    return pa.table(
        {
            "image_id": pa.array([i for i, c in zip(ids, counts) for _ in range(c)], pa.string()),
            "region": pa.array(np.concatenate([np.arange(c, dtype=np.int32) for c in counts]) if n else [], pa.int32()),
            "box": pa.FixedSizeListArray.from_arrays(pa.array(boxes.ravel(), pa.float32()), 4),
            "objectness": pa.array(objectness, pa.float32()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), VECTOR_DTYPES[dtype]), dim),
            "batch": pa.array(np.full(n, batch, np.int64), pa.int64()),
        },
        schema=regions_schema(dim, dtype),
    )


class _Writer:
    """Accumulates one batch and commits it in the safe order."""

    def __init__(self, index: Index, backend, root: Path, config: IndexConfig, first_batch: int):
        self.index = index
        self.backend = backend
        self.root = root
        self.config = config
        self.batch = first_batch
        self.images: list[tuple[_Job, LoadedImage]] = []
        self.prepared: list = []  # per image: backend.preprocess output, or None
        self.skips: list[tuple[_Job, Skipped]] = []
        self.replaced: list[str] = []  # ids whose old rows must go (changed or now-bad files)

    def pending(self) -> int:
        return len(self.images)

    def commit(self) -> None:
        if not (self.images or self.skips or self.replaced):
            return
        idx, m = self.index, self.index.manifest
        ids = [job.rel for job, _ in self.images]
        images = [li.image for _, li in self.images]
        regions = _encode(self.backend, images, self.prepared, m.max_regions, m.nms_iou)
        if len(regions) != len(ids):
            raise ResedisError(f"model returned {len(regions)} results for {len(ids)} images")
        if self.replaced:
            _delete_ids(idx.images_table, "image_id", self.replaced)
            _delete_ids(idx.regions_table, "image_id", self.replaced)
        touched = ids + [job.rel for job, _ in self.skips]
        if touched:
            _delete_ids(idx.skipped_table, "image_id", touched)
        if self.skips:
            idx.skipped_table.add(
                pa.table(
                    {
                        "image_id": [job.rel for job, _ in self.skips],
                        "path": [str(job.path) for job, _ in self.skips],
                        "reason": [s.reason for _, s in self.skips],
                        "size_bytes": pa.array([job.size for job, _ in self.skips], pa.int64()),
                        "mtime_ns": pa.array([job.mtime_ns for job, _ in self.skips], pa.int64()),
                        "batch": pa.array([self.batch] * len(self.skips), pa.int64()),
                    },
                    schema=skipped_schema(),
                )
            )
        if ids:
            idx.regions_table.add(_region_rows(ids, regions, self.batch, m.vector_dim, m.vector_dtype))
            image_vectors = [
                None if r.image_vector is None else np.asarray(r.image_vector, np.float32).tolist() for r in regions
            ]
            idx.images_table.add(
                pa.table(
                    {
                        "image_id": ids,
                        "root": [str(self.root)] * len(ids),
                        "path": [str(job.path.resolve()) for job, _ in self.images],
                        "sha256": [li.sha256 for _, li in self.images],
                        "width": pa.array([li.width for _, li in self.images], pa.int32()),
                        "height": pa.array([li.height for _, li in self.images], pa.int32()),
                        "mtime_ns": pa.array([li.mtime_ns for _, li in self.images], pa.int64()),
                        "size_bytes": pa.array([li.size_bytes for _, li in self.images], pa.int64()),
                        "n_regions": pa.array([len(r) for r in regions], pa.int32()),
                        "batch": pa.array([self.batch] * len(ids), pa.int64()),
                        "image_vector": pa.array(image_vectors, pa.list_(pa.float32())),
                    },
                    schema=images_schema(),
                )
            )
        self.batch += 1
        self.images, self.prepared, self.skips, self.replaced = [], [], [], []


def _existing(index: Index) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """image_id -> (sha256, size, mtime_ns) for indexed images; image_id -> (size, mtime_ns) for skips."""
    img = index.read(IMAGES, ["image_id", "sha256", "size_bytes", "mtime_ns"]).to_pydict()
    indexed = {i: (s, b, m) for i, s, b, m in zip(img["image_id"], img["sha256"], img["size_bytes"], img["mtime_ns"])}
    sk = index.read(SKIPPED, ["image_id", "size_bytes", "mtime_ns"]).to_pydict()
    skipped = {i: (b, m) for i, b, m in zip(sk["image_id"], sk["size_bytes"], sk["mtime_ns"])}
    return indexed, skipped


def _next_batch(index: Index) -> int:
    top = 0
    for name in (IMAGES, REGIONS, SKIPPED):
        col = index.read(name, ["batch"])["batch"]
        if len(col):
            top = max(top, int(pa.compute.max(col).as_py()))
    return top + 1


def build_index(
    images_dir: str | os.PathLike,
    db: str | os.PathLike,
    *,
    config: IndexConfig | None = None,
    progress: bool = True,
    encoder=None,
) -> IndexReport:
    """Index every image under ``images_dir`` into the LanceDB directory ``db``.

    Incremental: files whose path, size and mtime (or, when those changed, sha256) match
    the index are left alone; changed files are re-encoded and replace their old rows;
    with ``config.prune`` entries of files no longer present are removed. Files recorded
    as skipped are retried only when their size or mtime changed. Image ids are POSIX
    paths relative to ``images_dir``. Bad files never abort the run: they are recorded
    (``Index.skipped()``) with a reason.

    ``encoder`` (optional): an already loaded RegionEncoder to use instead of loading
    ``config.model``; its ``spec`` must match the index's model.
    """
    import pyarrow.compute  # noqa: F401  (used via pa.compute)
    from tqdm.auto import tqdm

    config = config or IndexConfig()
    config.validate()
    started = time.perf_counter()
    root = Path(images_dir).expanduser().resolve()
    db_path = Path(db).expanduser().resolve()
    files = discover_images(root, exclude=[db_path])

    if db_path.exists() and not db_path.is_dir():
        raise ResedisError(f"{db_path}: exists and is not a directory")
    db_path.mkdir(parents=True, exist_ok=True)

    with _Lock(db_path):
        index, spec, backend = _open_for_write(db_path, root, config, encoder)
        repair(index)
        indexed, skipped_before = _existing(index)
        report = IndexReport(db=str(db_path), root=str(root), model=spec)

        jobs: list[_Job] = []
        present: set[str] = set()
        for path in files:
            rel = path.relative_to(root).as_posix()
            present.add(rel)
            try:
                st = path.stat()
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                size, mtime = -1, -1
            old = indexed.get(rel)
            if old is not None and not config.rehash and old[1] == size and old[2] == mtime:
                report.unchanged += 1
                continue
            if old is None and skipped_before.get(rel) == (size, mtime) and not config.rehash:
                continue  # known bad file, unchanged: not retried, still reported
            jobs.append(_Job(rel, path, size, mtime, old[0] if old else None))

        with pixel_limit(config.max_pixels):
            if jobs and backend is None:
                backend = _load_backend(index.manifest.model, config.device)
                if backend.vector_dim != index.manifest.vector_dim:
                    raise IndexMismatchError(
                        f"{db_path}: index vectors have dimension {index.manifest.vector_dim}, "
                        f"model {index.manifest.model} gives {backend.vector_dim}"
                    )
            writer = _Writer(index, backend, root, config, _next_batch(index))
            bar = tqdm(total=len(jobs), unit="img", desc="indexing", disable=not (progress and jobs), dynamic_ncols=True)
            encode_started = time.perf_counter()
            window = max(2 * config.batch_size, 2 * config.workers)
            prefetch = _prefetch(jobs, config.max_pixels, config.workers, window, _preprocessor(backend))
            for job, result, prepared in prefetch:
                if isinstance(result, Skipped):
                    writer.skips.append((job, Skipped(str(job.path), result.reason)))
                    if job.known_sha is not None:
                        writer.replaced.append(job.rel)
                        report.removed += 1
                    report.new_skipped += 1
                elif job.known_sha is not None and job.known_sha == result.sha256:
                    report.unchanged += 1  # touched but identical: keep the rows, note the new mtime
                    index.images_table.update(
                        where=in_list("image_id", [job.rel]), values={"mtime_ns": result.mtime_ns}
                    )
                else:
                    if job.known_sha is not None:
                        writer.replaced.append(job.rel)
                        report.updated += 1
                    else:
                        report.added += 1
                    writer.images.append((job, result))
                    writer.prepared.append(prepared)
                if writer.pending() >= config.batch_size:
                    report.encoded += writer.pending()
                    writer.commit()
                    if writer.batch % _COMPACT_EVERY == 0:
                        _compact(index)
                bar.update(1)
            report.encoded += writer.pending()
            writer.commit()
            bar.close()
            encode_seconds = time.perf_counter() - encode_started

        if config.prune:
            gone = sorted(set(indexed) - present)
            if gone:
                _delete_ids(index.images_table, "image_id", gone)
                _delete_ids(index.regions_table, "image_id", gone)
                report.removed += len(gone)
            gone_skips = sorted(set(skipped_before) - present)
            if gone_skips:
                _delete_ids(index.skipped_table, "image_id", gone_skips)

        if jobs or (config.prune and report.removed):
            _compact(index)
            manifest = read_manifest(db_path)  # keep keys written by others (calibration)
            manifest.updated = _now()
            write_manifest(db_path, manifest)
            index.manifest = manifest

        report.skipped = index.skipped()
        report.seconds = time.perf_counter() - started
        if report.encoded:
            log.debug("encoded %d images in %.1f s", report.encoded, encode_seconds)
        return report


def _compact(index: Index) -> None:
    """Merge the small per-batch fragments and drop superseded versions."""
    import datetime as dt

    for table in (index.images_table, index.regions_table, index.skipped_table):
        try:
            # Versions younger than a minute stay, so a concurrent reader never loses its files.
            table.optimize(cleanup_older_than=dt.timedelta(minutes=1))
        except Exception as exc:  # compaction is an optimisation; never fail the build on it
            log.warning("could not compact table %s: %s", table.name, exc)
