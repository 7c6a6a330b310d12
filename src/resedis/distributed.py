"""Distributed indexing on Ray (``pip install 'resedis[ray]'``).

Decoding and the region encoder run as a Ray Data ``map_batches`` stage on an actor
pool — one model per actor, one GPU per actor when the cluster has GPUs — and the driver
commits the results through the same :class:`resedis.index.commit.BatchWriter` the
single-process writer uses, so the index is the same LanceDB directory, schema,
manifest and atomic-batch rule (:mod:`resedis.index.store`). Incremental behaviour is
the writer's: unchanged files are skipped, changed ones replaced, ``prune`` removes
deleted ones, bad files are recorded with their reason, a killed run resumes.

Workers open the image files by path, so on a multi-node cluster the folder must be
mounted at the same path on every node (NFS, a shared volume); the index is written by
the driver only, to a local directory or an object-store URI (``s3://bucket/prefix``;
see :mod:`resedis.index.fs` for credentials), which the workers never touch.

>>> from resedis.distributed import index_with_ray
>>> index_with_ray("photos/", "photos.db", address="auto", num_workers=8)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from resedis.errors import IndexMismatchError, ResedisError
from resedis.index.commit import BatchWriter, Lock, compact, delete_ids, existing_entries, next_batch, repair
from resedis.index.pipeline import plan_jobs
from resedis.index.manifest import _now, check_weights, read_manifest, write_manifest
from resedis.index.store import in_list
from resedis.index.writer import IndexConfig, IndexReport, _count_model_failures, _open_for_write, commit_refused, locate
from resedis.types import ImageRegions, Skipped

log = logging.getLogger(__name__)


def _require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ResedisError("distributed indexing needs Ray: pip install 'resedis[ray]' (ray[data])") from None
    return ray


@dataclass
class _Decoded:
    """What the commit needs of a decoded image (the pixels stayed on the worker)."""

    path: Path
    sha256: str
    size_bytes: int
    mtime_ns: int
    width: int
    height: int
    image: None = None


class _PrecomputedWriter(BatchWriter):
    """BatchWriter whose batch was already encoded on the Ray workers."""

    def __init__(self, index, root: Path, first_batch: int):
        super().__init__(index, None, root, first_batch)
        self.regions: list[ImageRegions] = []

    def _encode(self) -> tuple[list[ImageRegions], list]:
        regions, self.regions = self.regions, []
        return regions, []


class RegionEncoderActor:
    """Ray Data callable class: a batch of files -> decoded, encoded, flattened regions.

    One model per actor (loaded once). Output columns (pyarrow): ``rel``, ``reason``
    (null when encoded), ``sha256``, ``width``, ``height``, ``size_bytes``, ``mtime_ns``,
    ``boxes`` (N*4 float32, xyxy original px), ``objectness`` (N), ``vectors`` (N*D),
    ``image_vector`` (E or null), ``weights`` (the fingerprint of the weights this actor
    loaded, :mod:`resedis.models.fingerprint`: the driver refuses vectors from other weights,
    e.g. a node whose copy of the model differs).
    """

    def __init__(self, model: str, device: str | None, max_regions: int, nms_iou: float, max_pixels: int, threads: int | None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        from resedis.models import load_model
        from resedis.models.fingerprint import encoder_fingerprint

        self.backend = load_model(model, device)
        self.weights = encoder_fingerprint(self.backend)
        self.max_regions, self.nms_iou, self.max_pixels = max_regions, nms_iou, max_pixels

    def _encode(self, images) -> list:
        """-> per image: ImageRegions, or the exception the model raised on it."""
        from resedis.index.pipeline import encode_batch

        try:
            return encode_batch(self.backend, images, [None] * len(images), self.max_regions, self.nms_iou)
        except Exception:  # noqa: BLE001 - isolate the image that breaks the model, as the writer does
            out = []
            for image in images:
                try:
                    out.extend(encode_batch(self.backend, [image], [None], self.max_regions, self.nms_iou))
                except Exception as exc:  # noqa: BLE001
                    out.append(exc)
            return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        from resedis.io.images import load_image, pixel_limit

        rels = batch.column("rel").to_pylist()
        paths = batch.column("path").to_pylist()
        with pixel_limit(self.max_pixels):
            loaded = [load_image(p, self.max_pixels) for p in paths]
        ok = [i for i, li in enumerate(loaded) if not isinstance(li, Skipped)]
        encoded = dict(zip(ok, self._encode([loaded[i].image for i in ok])))
        cols: dict[str, list] = {k: [] for k in ("rel", "reason", "sha256", "width", "height", "size_bytes",
                                                 "mtime_ns", "boxes", "objectness", "vectors", "image_vector")}
        for i, (rel, li) in enumerate(zip(rels, loaded)):
            result = encoded.get(i)
            reason = li.reason if isinstance(li, Skipped) else None
            if isinstance(result, Exception):
                reason = f"model failed on this image ({type(result).__name__}: {result})"
            cols["rel"].append(rel)
            cols["reason"].append(reason)
            good = reason is None
            cols["sha256"].append(li.sha256 if good else None)
            cols["width"].append(li.width if good else None)
            cols["height"].append(li.height if good else None)
            cols["size_bytes"].append(li.size_bytes if good else None)
            cols["mtime_ns"].append(li.mtime_ns if good else None)
            cols["boxes"].append(np.asarray(result.boxes, np.float32).ravel() if good else None)
            cols["objectness"].append(np.asarray(result.objectness, np.float32) if good else None)
            cols["vectors"].append(np.asarray(result.vectors, np.float32).ravel() if good else None)
            vec = result.image_vector if good else None
            cols["image_vector"].append(None if vec is None else np.asarray(vec, np.float32))
        f32 = pa.list_(pa.float32())
        return pa.table(
            {
                "rel": pa.array(cols["rel"], pa.string()),
                "reason": pa.array(cols["reason"], pa.string()),
                "sha256": pa.array(cols["sha256"], pa.string()),
                "width": pa.array(cols["width"], pa.int32()),
                "height": pa.array(cols["height"], pa.int32()),
                "size_bytes": pa.array(cols["size_bytes"], pa.int64()),
                "mtime_ns": pa.array(cols["mtime_ns"], pa.int64()),
                "boxes": pa.array(cols["boxes"], f32),
                "objectness": pa.array(cols["objectness"], f32),
                "vectors": pa.array(cols["vectors"], f32),
                "image_vector": pa.array(cols["image_vector"], f32),
                "weights": pa.array([self.weights] * len(rels), pa.string()),
            }
        )


def _regions_of(row: dict, dim: int) -> ImageRegions:
    boxes = np.asarray(row["boxes"], np.float32).reshape(-1, 4)
    vec = row["image_vector"]
    return ImageRegions(
        boxes=boxes,
        objectness=np.asarray(row["objectness"], np.float32),
        vectors=np.asarray(row["vectors"], np.float32).reshape(-1, dim),
        image_vector=None if vec is None else np.asarray(vec, np.float32),
    )


def _check_worker_weights(manifest, batch: pa.Table, db) -> None:
    """Refuse a batch encoded with weights other than the index's (when it records them)."""
    from resedis.models.fingerprint import short_fingerprint

    if manifest.weights_fingerprint is None:
        return
    other = sorted(set(batch.column("weights").to_pylist()) - {manifest.weights_fingerprint})
    if other:
        raise IndexMismatchError(
            f"{db}: a Ray worker loaded model {manifest.model!r} with weights {short_fingerprint(other[0])}, "
            f"but the index was built with weights {short_fingerprint(manifest.weights_fingerprint)}; "
            "every node must see the same weights (the same path or Hugging Face cache). Nothing of this "
            "batch was written; rebuild into a new --db to use the other weights."
        )


def index_with_ray(
    images_dir: str | os.PathLike,
    db: str | os.PathLike,
    config: IndexConfig | None = None,
    *,
    address: str | None = None,
    num_workers: int = 2,
    gpus_per_worker: float | None = None,
    threads_per_worker: int | None = 1,
    progress: bool = True,
    storage_options: dict[str, str] | None = None,
) -> IndexReport:
    """:func:`resedis.index.build_index` with decoding + encoding on a Ray actor pool.

    address: a Ray cluster (``"auto"``, ``"ray://head:10001"``); None starts/joins a local
    one (an already initialised Ray session is reused). num_workers: actors, one model
    each. gpus_per_worker: None = 1 when the cluster has GPUs, else 0 (CPU workers with
    ``threads_per_worker`` torch threads). Same result as ``build_index`` with the same
    config: the same images, regions (to float tolerance) and skip records. ``db`` and
    ``storage_options``: as for ``build_index`` (a local path or an object-store URI).
    """
    ray = _require_ray()
    from tqdm.auto import tqdm

    config = config or IndexConfig()
    config.validate()
    if num_workers < 1:
        raise ResedisError(f"num_workers must be >= 1, got {num_workers}")
    if config.crops is not None:
        raise ResedisError("crop embeddings (--crop-model) are not supported with --ray; index crops without --ray")
    started = time.perf_counter()
    if not Path(images_dir).expanduser().is_dir():
        raise ResedisError(f"{images_dir}: no such image folder")
    root, db_path, walk = locate(images_dir, db, storage_options, config.follow_symlinks)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    device = config.device or ("cuda" if gpus_per_worker > 0 else "cpu")

    with Lock(db_path):
        index, spec, _ = _open_for_write(db_path, root, config, None)
        from resedis.pipelines.crops import stored_crop_config

        if stored_crop_config(index) is not None:
            raise ResedisError(f"{db_path}: this index stores crop embeddings; update it without --ray")
        repair(index)
        indexed, skipped_before = existing_entries(index)
        report = IndexReport(db=str(db_path), root=str(root), model=spec)
        plan = plan_jobs(walk.files, root, indexed, skipped_before, rehash=config.rehash, refused=walk.refused)
        jobs, present = plan.jobs, plan.present
        report.unchanged += plan.unchanged
        by_rel = {job.rel: job for job in jobs}
        m = index.manifest
        writer = _PrecomputedWriter(index, root, next_batch(index))
        commit_refused(writer, report, plan)
        if jobs:  # the driver's view of the weights first, then every worker's (below)
            check_weights(m, None, db_path)
            items = [{"rel": j.rel, "path": str(j.path)} for j in jobs]
            ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), num_workers * 4)))
            ds = ds.map_batches(
                RegionEncoderActor,
                fn_constructor_kwargs=dict(
                    model=m.model, device=device, max_regions=m.max_regions, nms_iou=m.nms_iou,
                    max_pixels=config.max_pixels, threads=threads_per_worker,
                ),
                batch_size=config.batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=num_workers),
                num_cpus=1,
                num_gpus=gpus_per_worker,
            )
            bar = tqdm(total=len(jobs), unit="img", desc="indexing (ray)", disable=not progress, dynamic_ncols=True)
            for batch in ds.iter_batches(batch_size=config.batch_size, batch_format="pyarrow"):
                _check_worker_weights(m, batch, db_path)
                for row in batch.to_pylist():
                    job = by_rel[row["rel"]]
                    if row["reason"] is not None:
                        writer.skips.append((job, Skipped(str(job.path), row["reason"])))
                        if job.known_sha is not None:
                            writer.replaced.append(job.rel)
                            report.removed += 1
                        report.new_skipped += 1
                    elif job.known_sha is not None and job.known_sha == row["sha256"]:
                        report.unchanged += 1
                        index.images_table.update(where=in_list("image_id", [job.rel]), values={"mtime_ns": row["mtime_ns"]})
                    else:
                        if job.known_sha is not None:
                            writer.replaced.append(job.rel)
                            report.updated += 1
                        else:
                            report.added += 1
                        writer.images.append(
                            (job, _Decoded(job.path, row["sha256"], row["size_bytes"], row["mtime_ns"], row["width"], row["height"]))
                        )
                        writer.regions.append(_regions_of(row, m.vector_dim))
                    bar.update(1)
                report.encoded += writer.pending()
                _count_model_failures(report, writer.commit())
            bar.close()

        if config.prune:
            gone = sorted(set(indexed) - present)
            if gone:
                delete_ids(index.images_table, "image_id", gone)
                delete_ids(index.regions_table, "image_id", gone)
                report.removed += len(gone)
            gone_skips = sorted(set(skipped_before) - present)
            if gone_skips:
                delete_ids(index.skipped_table, "image_id", gone_skips)
        if jobs or (config.prune and report.removed):
            compact(index)
            manifest = read_manifest(db_path)
            manifest.updated = _now()
            write_manifest(db_path, manifest)
            index.manifest = manifest
        from resedis.index.ann import AnnConfig, optimize_ann

        optimize_ann(index.regions_table, AnnConfig(min_rows=config.ann_min_rows), fold_new_rows=False)
        report.skipped = index.skipped()
        report.seconds = time.perf_counter() - started
        return report
