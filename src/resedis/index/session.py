"""One indexing run, whoever encodes: the part of indexing that the single-process writer
(:func:`resedis.index.writer.build_index`) and Ray (:func:`resedis.distributed.index_with_ray`)
share, written once.

An :class:`IndexingSession` holds the writer lock, opens (or creates) the index, repairs
what an interrupted run left, plans the work (:func:`resedis.index.plan.plan_tasks`),
takes each file's outcome (:meth:`IndexingSession.add`: a skip, an unchanged file, or a
decoded image with its regions, encoded here or elsewhere), commits batches
(:class:`resedis.index.commit.BatchWriter`, compacting every :data:`COMPACT_EVERY`
batches), keeps the side tables in step, prunes, compacts, records the indexing cost and
updates the manifest. Drivers only decide how the images are decoded and encoded::

    with IndexingSession(images_dir, db, config) as session:
        backend = session.region_encoder()
        session.start(backend, open_side_tables(session.index, config))
        for task, loaded, prepared in prefetch(session.tasks, ...):
            session.add(task, loaded, prepared=prepared)
        session.end_encoding()
    report = session.report  # complete once the block is left
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Sequence

from resedis.version import __version__
from resedis.errors import IndexMismatchError, ResedisError
from resedis.quant import DEFAULT_STORAGE
from resedis.index.ann import AnnConfig, optimize_ann
from resedis.index.commit import BatchWriter, Lock, compact, delete_ids, existing_entries, next_batch, repair
from resedis.index.config import DEFAULT_MAX_REGIONS, REGION_NMS_IOU, IndexConfig, IndexReport
from resedis.index.crops import CropWriter, stored_crop_config
from resedis.index.estimate import WARMUP_IMAGES, IndexEstimate, backend_gflops
from resedis.index.fs import Location, as_location
from resedis.index.manifest import (
    MANIFEST_NAME,
    Manifest,
    canonical_spec,
    check_model,
    check_preprocessing,
    check_weights,
    read_manifest,
    record_index_cost,
    utc_now,
    write_manifest,
)
from resedis.index.plan import FileTask, plan_tasks
from resedis.index.side import SideTable
from resedis.index.store import Index, in_list
from resedis.models.base import require_kind
from resedis.models.spec import REGION_TEXT
from resedis.io.images import ImageWalk, LoadedImage, walk_images
from resedis.models import DEFAULT_MODEL, load_model
from resedis.models.fingerprint import encoder_fingerprint
from resedis.types import ImageRegions, Skipped

log = logging.getLogger(__name__)

# Every batch adds a few table versions; compact (and drop old versions) this often.
COMPACT_EVERY = 200


def locate(images_dir: str | os.PathLike, db, storage_options: dict[str, str] | None,
           follow_symlinks: bool = False) -> tuple[Path, Location, ImageWalk]:
    """-> (image root, index location, the walk of the root: image files + refused entries).
    The image folder is local; the index is a local directory (created here) or an object-store URI."""
    root = Path(images_dir).expanduser().resolve()
    loc = as_location(db, storage_options)
    walk = walk_images(root, exclude=[loc.local_path] if loc.is_local else [], follow_symlinks=follow_symlinks)
    loc.ensure_dir()
    return root, loc, walk


def load_region_encoder(spec: str, device: str | None):
    """The region encoder ``spec`` names; ResedisError when that model is not one."""
    backend = load_model(spec, device)
    require_kind(backend, REGION_TEXT, "index needs an OWL-family model (owlv2:, owlvit:)")
    return backend


def open_for_write(db: Location, root: Path, config: IndexConfig, encoder):
    """-> (Index, model spec, encoder or None). Creates the manifest of a new index (loading ``encoder``
    if not given); refuses a model/root/dtype mismatch with an existing one."""
    if db.exists(MANIFEST_NAME):
        manifest = read_manifest(db)
        check_model(manifest, config.model, db)
        if encoder is not None:
            check_model(manifest, encoder.spec, db)
            check_preprocessing(manifest, encoder, db)
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
        return Index(db, manifest, create=True), manifest.model, encoder
    if any(name != ".lock" for name in db.list_names()):
        raise ResedisError(f"{db}: exists, is not empty, and has no {MANIFEST_NAME}; refusing to write an index into it")
    if encoder is None:
        encoder = load_region_encoder(canonical_spec(config.model or DEFAULT_MODEL), config.device)
    elif config.model is not None and canonical_spec(config.model) != canonical_spec(encoder.spec):
        raise IndexMismatchError(f"config.model {config.model!r} differs from the given encoder's spec {encoder.spec!r}")
    spec = canonical_spec(encoder.spec)
    manifest = Manifest(
        model=spec,
        weights_fingerprint=encoder_fingerprint(encoder),
        vector_dim=int(encoder.vector_dim),
        vector_dtype=config.vector_dtype or DEFAULT_STORAGE,
        preprocessing=encoder.preprocessing(),
        root=str(root),
        max_regions=config.max_regions or DEFAULT_MAX_REGIONS,
        nms_iou=config.nms_iou or REGION_NMS_IOU,
        package_version=__version__,
    )
    write_manifest(db, manifest)
    return Index(db, manifest, create=True), spec, encoder


def open_side_tables(index: Index, config: IndexConfig, device: str | None = None) -> list[SideTable]:
    """The side tables this run keeps in step with ``images``: those ``config`` asks for and
    those the index already has (an index with crops keeps them in sync without --crop-model)."""
    crop_config = config.crops or stored_crop_config(index)
    return [] if crop_config is None else [CropWriter(index, crop_config, device=device)]


def stored_side_tables(index: Index) -> list[str]:
    """Names of the side tables the index records in its manifest (e.g. ``["crops"]``)."""
    return [] if stored_crop_config(index) is None else [CropWriter.name]


class IndexingSession:
    """One indexing run of ``images_dir`` into ``db`` (see the module docstring).

    Entering it takes the writer lock, opens the index (creating it, and loading the
    region encoder for its manifest, when new), repairs it and plans the run:
    :attr:`tasks` are the files to read, :attr:`report` counts the outcomes. Then
    :meth:`start`, :meth:`add` per task, :meth:`end_encoding`; leaving the ``with`` block
    without an exception finishes the run (prune, compaction, cost, manifest, ANN), then
    releases the lock.
    """

    def __init__(self, images_dir: str | os.PathLike, db: str | os.PathLike, config: IndexConfig, *,
                 encoder=None, storage_options: dict[str, str] | None = None, progress: bool = True):
        config.validate()
        self.config = config
        self.progress = progress
        self.started = time.perf_counter()
        self.root, self.location, self.walk = locate(images_dir, db, storage_options, config.follow_symlinks)
        self._encoder = encoder
        self._lock = Lock(self.location)
        self.writer: BatchWriter | None = None
        self.encode_seconds = 0.0
        self._encode_started: float | None = None
        self._encoding_ended = False

    def __enter__(self) -> IndexingSession:
        self._lock.__enter__()
        try:
            self.index, spec, self._encoder = open_for_write(self.location, self.root, self.config, self._encoder)
            repair(self.index)
            self.indexed, self.skipped_before = existing_entries(self.index)
            self.report = IndexReport(db=str(self.location), root=str(self.root), model=spec)
            self.plan = plan_tasks(self.walk.files, self.root, self.indexed, self.skipped_before,
                                   rehash=self.config.rehash, refused=self.walk.refused,
                                   retry_skipped=self.config.retry_skipped)
            self.report.unchanged += self.plan.unchanged
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish()
        finally:
            self._lock.__exit__(exc_type, exc, tb)

    @property
    def tasks(self) -> list[FileTask]:
        return self.plan.tasks

    def region_encoder(self):
        """The region encoder to encode :attr:`tasks` with in this process (the one given, or
        the index's model loaded now; None when there is nothing to encode), after checking
        that its weights are those the index was built with."""
        if not self.tasks:
            return self._encoder
        # before loading the model: refuse to mix two models' vectors in one index
        check_weights(self.index.manifest, self._encoder, self.location)
        if self._encoder is None:
            m = self.index.manifest
            self._encoder = load_region_encoder(m.model, self.config.device)
            check_preprocessing(m, self._encoder, self.location)
            if self._encoder.vector_dim != m.vector_dim:
                raise IndexMismatchError(
                    f"{self.location}: index vectors have dimension {m.vector_dim}, model {m.model} gives {self._encoder.vector_dim}"
                )
        return self._encoder

    def start(self, backend, side_tables: Sequence[SideTable] = ()) -> None:
        """Begin committing: ``backend`` encodes the decoded images (None: :meth:`add` gets
        their regions); ``side_tables`` are repaired, then kept in step. Commits the
        entries the folder walk refused, then starts the encoding clock."""
        self.writer = BatchWriter(self.index, backend, self.root, next_batch(self.index), side_tables)
        for table in self.writer.side_tables:
            table.repair()
        self._commit_refused()
        where = getattr(backend, "device", None) if backend is not None else "ray workers"
        self.estimate = IndexEstimate(len(self.tasks), self.report.model, str(where or self.config.device or "?"),
                                      backend_gflops(backend) if backend is not None and self.tasks else None,
                                      warmup_images=min(self.config.batch_size, WARMUP_IMAGES))
        self._encode_started = time.perf_counter()
        self.estimate.start()

    def _commit_refused(self) -> None:
        """Record the entries the folder walk refused (``plan.skips``) in a commit of their own;
        one that replaces an indexed image removes its rows, and so do ``plan.drop``. Drops the
        skip records of ``plan.forget``."""
        writer, report, plan = self.writer, self.report, self.plan
        if plan.forget:
            delete_ids(self.index.skipped_table, "image_id", plan.forget)
        for task, skip in plan.skips:
            writer.skips.append((task, skip))
            if task.known_sha is not None:
                writer.replaced.append(task.rel)
                report.removed += 1
        writer.replaced.extend(plan.drop)
        report.removed += len(plan.drop)
        report.new_skipped += len(plan.skips)
        if plan.skips or plan.drop:
            writer.commit()

    def add(self, task: FileTask, result: LoadedImage | Skipped, *, prepared=None, regions: ImageRegions | None = None) -> None:
        """The outcome of one task: a skip (the file could not be read, or the model failed on
        it), a file identical to its indexed version (only its mtime is updated), or a new or
        changed image, queued with its preprocessed input (``prepared``) or, when encoded
        elsewhere, its ``regions``. Commits a batch once ``config.batch_size`` images wait."""
        writer, report = self.writer, self.report
        if isinstance(result, Skipped):
            writer.skips.append((task, Skipped(str(task.path), result.reason)))
            if task.known_sha is not None:
                writer.replaced.append(task.rel)
                report.removed += 1
            report.new_skipped += 1
        elif task.known_sha is not None and task.known_sha == result.sha256:
            report.unchanged += 1  # touched but identical: keep the rows, note the new mtime
            self.index.images_table.update(where=in_list("image_id", [task.rel]), values={"mtime_ns": result.mtime_ns})
        else:
            if task.known_sha is not None:
                writer.replaced.append(task.rel)
                report.updated += 1
            else:
                report.added += 1
            writer.images.append((task, result))
            writer.prepared.append(prepared)
            if regions is not None:
                writer.regions.append(regions)
        if writer.pending() >= self.config.batch_size:
            self._commit()
            if writer.batch % COMPACT_EVERY == 0:
                compact(self.index)

    def _commit(self) -> None:
        report = self.report
        report.encoded += self.writer.pending()
        for task, _ in self.writer.commit():  # images counted as added/updated that the model failed on
            report.encoded -= 1
            report.new_skipped += 1
            if task.known_sha is not None:
                report.updated -= 1
                report.removed += 1
            else:
                report.added -= 1
        if (line := self.estimate.observe(report.encoded)) is not None:
            log.info("%s", line)  # `resedis index` prints it: the run's length, before most of it

    def end_encoding(self) -> None:
        """Commit the last batch, stop the encoding clock (time spent in side tables is
        theirs, not the region index's), then let the side tables backfill images indexed
        before they existed and record their cost."""
        self._encoding_ended = True
        self._commit()
        self.encode_seconds = time.perf_counter() - self._encode_started
        self.encode_seconds -= sum(table.seconds for table in self.writer.side_tables)
        for table in self.writer.side_tables:
            table.backfill(progress=self.progress)
            table.save_stats()

    def _finish(self) -> None:
        """Prune, compact, record the cost and update the manifest, fold in the ANN index."""
        if self.writer is None:
            raise ResedisError("IndexingSession: start() was never called; nothing was indexed")
        if not self._encoding_ended:
            self.end_encoding()
        index, config, report = self.index, self.config, self.report
        if config.prune:
            gone = sorted(set(self.indexed) - self.plan.present)
            if gone:
                self.writer.delete(gone)
                report.removed += len(gone)
            gone_skips = sorted(set(self.skipped_before) - self.plan.present)
            if gone_skips:
                delete_ids(index.skipped_table, "image_id", gone_skips)
        if self.tasks or (config.prune and report.removed):
            compact(index, end_of_run=True)
            manifest = read_manifest(self.location)  # keep keys written by others (calibration)
            manifest.updated = utc_now()
            if report.encoded > 0:  # region-index wall time per image (side tables excluded), for the ablation table
                record_index_cost(manifest, self.encode_seconds, report.encoded)
            write_manifest(self.location, manifest)
            index.manifest = manifest
        # An ANN index once the corpus is large enough (rows added later are folded in by compact()).
        optimize_ann(index.regions_table, AnnConfig(min_rows=config.ann_min_rows), fold_new_rows=False)
        report.skipped = index.skipped()
        report.seconds = time.perf_counter() - self.started
        if report.encoded:
            log.debug("encoded %d images in %.1f s", report.encoded, self.encode_seconds)
