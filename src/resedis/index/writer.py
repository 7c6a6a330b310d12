"""Build or update an index: discover -> decode + preprocess (threads) -> encode -> commit.

:func:`build_index` decides what to do per file (new, changed, unchanged, known bad,
gone), then streams the work through :mod:`resedis.index.pipeline` and commits one batch
at a time with :mod:`resedis.index.commit` (atomic per batch, resumable after a kill).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from resedis.errors import IndexMismatchError, ResedisError
from resedis.index.ann import DEFAULT_MIN_ROWS as DEFAULT_ANN_MIN_ROWS, AnnConfig, optimize_ann
from resedis.index.commit import BatchWriter, Lock, compact, delete_ids, existing_entries, next_batch, repair
from resedis.index.fs import Location, as_location
from resedis.index.pipeline import Job, Plan, plan_jobs, prefetch, preprocessor
from resedis.index.manifest import (
    MANIFEST_NAME,
    Manifest,
    _now,
    canonical_spec,
    check_model,
    check_weights,
    read_manifest,
    write_manifest,
)
from resedis.quant import DEFAULT_STORAGE, check_storage
from resedis.index.store import Index, in_list
from resedis.io.images import DEFAULT_MAX_PIXELS, ImageWalk, pixel_limit, walk_images
from resedis.types import Skipped

log = logging.getLogger(__name__)

_Lock = Lock  # kept for callers that took the writer lock by this name

DEFAULT_MAX_REGIONS = 100
DEFAULT_NMS_IOU = 0.5
# Every batch adds a few table versions; compact (and drop old versions) this often.
_COMPACT_EVERY = 200


@dataclass
class IndexConfig:
    """How to build an index. ``model``, ``max_regions``, ``nms_iou`` and ``vector_dtype``
    left at None mean: the index's own setting, or for a new index the default model,
    100 regions, NMS IoU 0.5 and float16. An explicit value must match an existing index.

    vector_dtype: storage format of region vectors (:mod:`resedis.quant`): ``float16``
    (logits within about 1e-3 relative, see tests/test_index.py), ``float32``, ``int8`` or
    ``int4`` (per-row scaled codes + exact bias; logit error within the tested bound
    ``(step/2)·‖q̂‖₁``). None: the index's own, or :data:`DEFAULT_STORAGE` for a new index.
    max_pixels: decompression-bomb guard (images with more pixels are skipped).
    rehash: hash every file even when its size and mtime are unchanged.
    crops: also embed crops for the clip-crops pipeline (``resedis.pipelines.crops.CropConfig``),
    written in the same batches from the same decoded images; an index that has crops keeps
    them in sync on later runs even without it.
    ann_min_rows: build an ANN index over the region vectors once the index holds this
    many regions (``resedis.index.ann``; searches then re-score ANN candidates exactly).
    follow_symlinks: also index symlinks (files, folders) leading outside the image folder;
    by default they are recorded as skips (``resedis.io.images.walk_images``).
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
    crops: object | None = None
    ann_min_rows: int = DEFAULT_ANN_MIN_ROWS
    follow_symlinks: bool = False

    def validate(self) -> None:
        if self.crops is not None:
            self.crops.validate()
        if self.batch_size < 1:
            raise ResedisError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_regions is not None and self.max_regions < 1:
            raise ResedisError(f"max_regions must be >= 1, got {self.max_regions}")
        if self.nms_iou is not None and not 0.0 < self.nms_iou <= 1.0:
            raise ResedisError(f"nms_iou must be in (0, 1] (1 disables NMS), got {self.nms_iou}")
        if self.vector_dtype is not None:
            check_storage(self.vector_dtype)
        if self.max_pixels < 1:
            raise ResedisError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.workers < 1:
            raise ResedisError(f"workers must be >= 1, got {self.workers}")
        if self.ann_min_rows < 1:
            raise ResedisError(f"ann_min_rows must be >= 1, got {self.ann_min_rows}")


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


def locate(images_dir: str | os.PathLike, db, storage_options: dict[str, str] | None,
           follow_symlinks: bool = False) -> tuple[Path, Location, ImageWalk]:
    """-> (image root, index location, the walk of the root: image files + refused entries).
    The image folder is local; the index is a local directory (created here) or an object-store URI."""
    root = Path(images_dir).expanduser().resolve()
    loc = as_location(db, storage_options)
    walk = walk_images(root, exclude=[loc.local_path] if loc.is_local else [], follow_symlinks=follow_symlinks)
    loc.ensure_dir()
    return root, loc, walk


def commit_refused(writer: BatchWriter, report: IndexReport, plan: Plan) -> None:
    """Record the entries the folder walk refused (``plan.skips``) in a commit of their own;
    one that replaces an indexed image removes its rows, and so do ``plan.drop``. Drops the
    skip records of ``plan.forget``."""
    if plan.forget:
        delete_ids(writer.index.skipped_table, "image_id", plan.forget)
    for job, skip in plan.skips:
        writer.skips.append((job, skip))
        if job.known_sha is not None:
            writer.replaced.append(job.rel)
            report.removed += 1
    writer.replaced.extend(plan.drop)
    report.removed += len(plan.drop)
    report.new_skipped += len(plan.skips)
    if plan.skips or plan.drop:
        writer.commit()


def _open_for_write(db: Location, root: Path, config: IndexConfig, encoder):
    """-> (Index, model spec, encoder or None). Creates the manifest of a new index (loading ``encoder``
    if not given); refuses a model/root/dtype mismatch with an existing one."""
    if db.exists(MANIFEST_NAME):
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
    if any(name != ".lock" for name in db.list_names()):
        raise ResedisError(f"{db}: exists, is not empty, and has no {MANIFEST_NAME}; refusing to write an index into it")
    from resedis import __version__

    if encoder is None:
        from resedis.models import DEFAULT_MODEL

        encoder = _load_backend(canonical_spec(config.model or DEFAULT_MODEL), config.device)
    elif config.model is not None and canonical_spec(config.model) != canonical_spec(encoder.spec):
        raise IndexMismatchError(f"config.model {config.model!r} differs from the given encoder's spec {encoder.spec!r}")
    spec = canonical_spec(encoder.spec)
    from resedis.models.fingerprint import encoder_fingerprint

    manifest = Manifest(
        model=spec,
        weights_fingerprint=encoder_fingerprint(encoder),
        vector_dim=int(encoder.vector_dim),
        vector_dtype=config.vector_dtype or DEFAULT_STORAGE,
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


def _count_model_failures(report: IndexReport, failed: list[tuple[Job, Skipped]]) -> None:
    """Images counted as added/updated that the model then failed on become skips."""
    for job, _ in failed:
        report.encoded -= 1
        report.new_skipped += 1
        if job.known_sha is not None:
            report.updated -= 1
            report.removed += 1
        else:
            report.added -= 1


def _stored_crop_config(index):
    from resedis.pipelines.crops import stored_crop_config

    return stored_crop_config(index)


def build_index(
    images_dir: str | os.PathLike,
    db: str | os.PathLike,
    *,
    config: IndexConfig | None = None,
    progress: bool = True,
    encoder=None,
    storage_options: dict[str, str] | None = None,
) -> IndexReport:
    """Index every image under ``images_dir`` into the LanceDB directory ``db``: a local
    path or an object-store URI (``s3://bucket/prefix``, ``gs://``, ``az://``, ``file://``;
    credentials/endpoint from the environment and ``storage_options``, see
    :mod:`resedis.index.fs`). The image folder itself is always local.

    Incremental: files whose path, size and mtime (or, when those changed, sha256) match
    the index are left alone; changed files are re-encoded and replace their old rows;
    with ``config.prune`` entries of files no longer present are removed. Files recorded
    as skipped are retried only when their size or mtime changed. Image ids are POSIX
    paths relative to ``images_dir``. Bad files never abort the run: they are recorded
    (``Index.skipped()``) with a reason.

    ``encoder`` (optional): an already loaded RegionEncoder to use instead of loading
    ``config.model``; its ``spec`` must match the index's model.
    """
    from tqdm.auto import tqdm

    config = config or IndexConfig()
    config.validate()
    started = time.perf_counter()
    root, db_path, walk = locate(images_dir, db, storage_options, config.follow_symlinks)

    with Lock(db_path):
        index, spec, backend = _open_for_write(db_path, root, config, encoder)
        repair(index)
        indexed, skipped_before = existing_entries(index)
        report = IndexReport(db=str(db_path), root=str(root), model=spec)
        plan = plan_jobs(walk.files, root, indexed, skipped_before, rehash=config.rehash, refused=walk.refused)
        jobs, present = plan.jobs, plan.present
        report.unchanged += plan.unchanged

        if jobs:  # before loading the model: refuse to mix two models' vectors in one index
            check_weights(index.manifest, backend, db_path)
        with pixel_limit(config.max_pixels):
            if jobs and backend is None:
                backend = _load_backend(index.manifest.model, config.device)
                if backend.vector_dim != index.manifest.vector_dim:
                    raise IndexMismatchError(
                        f"{db_path}: index vectors have dimension {index.manifest.vector_dim}, "
                        f"model {index.manifest.model} gives {backend.vector_dim}"
                    )
            writer = BatchWriter(index, backend, root, next_batch(index))
            crop_config = config.crops or _stored_crop_config(index)
            if crop_config is not None:
                from resedis.pipelines.crops import CropWriter, repair_crops

                writer.crops = CropWriter(index, crop_config, device=config.device)
                repair_crops(index)
            commit_refused(writer, report, plan)
            bar = tqdm(total=len(jobs), unit="img", desc="indexing", disable=not (progress and jobs), dynamic_ncols=True)
            encode_started = time.perf_counter()
            window = max(2 * config.batch_size, 2 * config.workers)
            stream = prefetch(jobs, config.max_pixels, config.workers, window, preprocessor(backend))
            for job, result, prepared in stream:
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
                    _count_model_failures(report, writer.commit())
                    if writer.batch % _COMPACT_EVERY == 0:
                        compact(index)
                bar.update(1)
            report.encoded += writer.pending()
            _count_model_failures(report, writer.commit())
            bar.close()
            encode_seconds = time.perf_counter() - encode_started
            crop_seconds = writer.crops.seconds if writer.crops is not None else 0.0
            if writer.crops is not None:  # images indexed before crops were asked for
                from resedis.pipelines.crops import backfill_crops

                backfill_crops(index, writer.crops, progress=progress)

        if config.prune:
            gone = sorted(set(indexed) - present)
            if gone:
                delete_ids(index.images_table, "image_id", gone)
                delete_ids(index.regions_table, "image_id", gone)
                if writer.crops is not None:
                    writer.crops.delete(gone)
                report.removed += len(gone)
            gone_skips = sorted(set(skipped_before) - present)
            if gone_skips:
                delete_ids(index.skipped_table, "image_id", gone_skips)

        if jobs or (config.prune and report.removed):
            compact(index)
            manifest = read_manifest(db_path)  # keep keys written by others (calibration)
            manifest.updated = _now()
            if report.encoded > 0:  # region-index wall time per image (crop time excluded), for the ablation table
                from resedis.ablation import record_index_cost

                record_index_cost(manifest, encode_seconds - crop_seconds, report.encoded)
            write_manifest(db_path, manifest)
            index.manifest = manifest

        # An ANN index once the corpus is large enough (rows added later are folded in by compact()).
        optimize_ann(index.regions_table, AnnConfig(min_rows=config.ann_min_rows), fold_new_rows=False)

        report.skipped = index.skipped()
        report.seconds = time.perf_counter() - started
        if report.encoded:
            log.debug("encoded %d images in %.1f s", report.encoded, encode_seconds)
        return report


