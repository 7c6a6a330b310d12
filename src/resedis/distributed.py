"""Distributed indexing on Ray (``pip install 'resedis[ray]'``).

Decoding and the region encoder run as a Ray Data ``map_batches`` stage on an actor
pool — one model per actor, one GPU per actor when the cluster has GPUs — and the driver
commits the results through the same :class:`resedis.index.commit.BatchWriter` the
single-process writer uses, so the index is the same LanceDB directory, schema,
manifest and atomic-batch rule (:mod:`resedis.index.store`). Everything but the encoding
is the single-process writer's :class:`resedis.index.session.IndexingSession`:
unchanged files are skipped, changed ones replaced, ``prune`` removes deleted ones, bad
files are recorded with their reason, a killed run resumes, tables are compacted, and the
indexing cost is recorded in the manifest. Side tables (crop embeddings) are refused: their
encoders need the decoded pixels, which stay on the workers.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from resedis.errors import IndexMismatchError, ResedisError
from resedis.index.config import IndexConfig, IndexReport
from resedis.index.manifest import check_weights
from resedis.index.prefetch import encode_batch
from resedis.index.session import IndexingSession, stored_side_tables
from resedis.io.images import load_image, pixel_limit
from resedis.models import load_model
from resedis.models.fingerprint import encoder_fingerprint, short_fingerprint, spec_weights_dir, weights_fingerprint
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
        self.backend = load_model(model, device)
        self.weights = encoder_fingerprint(self.backend)
        self.max_regions, self.nms_iou, self.max_pixels = max_regions, nms_iou, max_pixels

    def _encode(self, images) -> list:
        """-> per image: ImageRegions, or the exception the model raised on it."""
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


def accepted_fingerprints(manifest) -> set[str] | None:
    """The worker fingerprints that stand for the index's weights: the recorded one, plus the
    current (v2) fingerprint of the spec's weights on the driver once :func:`check_weights`
    has matched them (an index recorded before v2 holds a v1 fingerprint, which the workers,
    reporting v2, can never equal). None: the index records none (nothing to check)."""
    if manifest.weights_fingerprint is None:
        return None
    return {manifest.weights_fingerprint, weights_fingerprint(spec_weights_dir(manifest.model))}


def check_worker_weights(manifest, accepted: set[str] | None, batch: pa.Table, db) -> None:
    """Refuse a batch encoded with weights other than the index's (when it records them);
    ``accepted``: :func:`accepted_fingerprints`."""
    if accepted is None:
        return
    other = sorted(set(batch.column("weights").to_pylist()) - accepted)
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
    The recorded indexing cost includes starting the actors (their model loads).
    """
    ray = _require_ray()
    from tqdm.auto import tqdm

    config = config or IndexConfig()
    config.validate()
    if num_workers < 1:
        raise ResedisError(f"num_workers must be >= 1, got {num_workers}")
    if config.crops is not None:
        raise ResedisError(
            "crop embeddings (--crop-model) are not supported with --ray: the crop encoder needs the decoded "
            "images, which stay on the Ray workers; index without --ray to embed crops"
        )
    if not Path(images_dir).expanduser().is_dir():
        raise ResedisError(f"{images_dir}: no such image folder")
    with IndexingSession(images_dir, db, config, storage_options=storage_options, progress=progress) as session:
        sides = stored_side_tables(session.index)
        if sides:
            raise ResedisError(
                f"{session.location}: this index stores {', '.join(sides)} (side tables the Ray workers cannot "
                "keep in step: they need the decoded images on the driver); update it without --ray"
            )
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        if gpus_per_worker is None:
            gpus_per_worker = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        device = config.device or ("cuda" if gpus_per_worker > 0 else "cpu")
        session.start(None)
        tasks = session.tasks
        m = session.index.manifest
        if tasks:  # the driver's view of the weights first, then every worker's (below)
            check_weights(m, None, session.location)
            accepted = accepted_fingerprints(m)
            by_rel = {task.rel: task for task in tasks}
            items = [{"rel": t.rel, "path": str(t.path)} for t in tasks]
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
            with tqdm(total=len(tasks), unit="img", desc="indexing (ray)", disable=not progress, dynamic_ncols=True) as bar:
                for batch in ds.iter_batches(batch_size=config.batch_size, batch_format="pyarrow"):
                    check_worker_weights(m, accepted, batch, session.location)
                    for row in batch.to_pylist():
                        task = by_rel[row["rel"]]
                        if row["reason"] is not None:
                            session.add(task, Skipped(str(task.path), row["reason"]))
                        else:
                            decoded = _Decoded(task.path, row["sha256"], row["size_bytes"], row["mtime_ns"],
                                               row["width"], row["height"])
                            session.add(task, decoded, regions=_regions_of(row, m.vector_dim))
                        bar.update(1)
        session.end_encoding()
    return session.report
