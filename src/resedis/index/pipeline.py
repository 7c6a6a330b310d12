"""The decode/preprocess/encode pipeline of the writer.

Files are read, hashed, decoded and (when the backend splits it out) preprocessed for the
model on a thread pool, in order, a bounded window ahead of the model, so the forward pass
never waits on the disk (PIL decoding and the image processors' numpy/scipy work release
the GIL). Boxes are xyxy in original-image pixels.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image

from resedis.io.images import LoadedImage, load_image
from resedis.models.base import PREPROCESS_SPLIT
from resedis.types import ImageRegions, Skipped


@dataclass
class Job:
    rel: str
    path: Path
    size: int
    mtime_ns: int
    known_sha: str | None  # sha256 of the indexed version, when the file was indexed before


@dataclass
class Plan:
    """What an indexing run has to do: ``jobs`` to (re-)encode, the ids of every file
    ``present`` in the folder, how many are ``unchanged`` (left alone), ``skips`` to
    record without reading (entries the folder walk refused, e.g. symlinks leaving it), and
    the ids of recorded skips to ``forget``: folders the walk refused before and now enters
    (a folder symlink with ``--follow-symlinks``, a folder readable again); indexed images
    to ``drop``: those under a folder the walk now refuses (the folder's skip covers them)."""

    jobs: list[Job]
    present: set[str]
    unchanged: int
    skips: list[tuple[Job, Skipped]] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)


def plan_jobs(files: list[Path], root: Path, indexed: dict[str, tuple], skipped_before: dict[str, tuple], *, rehash: bool,
              refused: Sequence[tuple[Path, str]] = ()) -> Plan:
    """The incremental rule, shared by the single-process and the Ray writer.

    ``indexed``: image id -> (sha256, size, mtime_ns) of indexed images; ``skipped_before``:
    image id -> (size, mtime_ns) of recorded skips (:func:`resedis.index.commit.existing_entries`).
    A file whose size and mtime match its indexed row is unchanged (unless ``rehash``); a
    known bad file whose size and mtime did not change is not retried (and not a job);
    every other file is a job, carrying the indexed sha256 when it replaces an entry.

    ``refused``: ``(path, reason)`` from :func:`resedis.io.images.walk_images`; each becomes a
    skip (replacing an indexed entry of that id), keyed by the entry's own ``lstat`` so that a
    run that accepts it (``--follow-symlinks``) sees a change and reads it; an identical
    recorded skip is left alone.
    """
    jobs: list[Job] = []
    present: set[str] = set()
    unchanged = 0
    for path in files:
        rel = path.relative_to(root).as_posix()
        present.add(rel)
        try:
            st = path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        old = indexed.get(rel)
        if old is not None and not rehash and old[1] == size and old[2] == mtime:
            unchanged += 1
            continue
        if old is None and skipped_before.get(rel) == (size, mtime) and not rehash:
            continue  # known bad file, unchanged: not retried, still reported
        jobs.append(Job(rel, path, size, mtime, old[0] if old else None))
    skips: list[tuple[Job, Skipped]] = []
    for path, reason in refused:
        rel = path.relative_to(root).as_posix()
        present.add(rel)
        try:
            st = os.lstat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        old = indexed.get(rel)
        if old is None and skipped_before.get(rel) == (size, mtime) and not rehash:
            continue
        skips.append((Job(rel, path, size, mtime, old[0] if old else None), Skipped(str(path), reason)))
    forget = sorted(rel for rel in skipped_before if rel not in present and (root / rel).is_dir())
    refused_ids = {path.relative_to(root).as_posix() for path, _ in refused}
    drop = sorted(i for i in indexed if i not in present and _under(i, refused_ids))
    present.update(drop)  # removed here, not again by --prune
    return Plan(jobs, present, unchanged, skips, forget, drop)


def _under(image_id: str, folders: set[str]) -> bool:
    parts = image_id.split("/")
    return any("/".join(parts[:k]) in folders for k in range(1, len(parts)))


def load_and_prepare(job: Job, max_pixels: int, prepare) -> tuple[LoadedImage | Skipped, object]:
    loaded = load_image(job.path, max_pixels)
    if prepare is None or isinstance(loaded, Skipped):
        return loaded, None
    return loaded, prepare([loaded.image])


def prefetch(
    jobs: list[Job], max_pixels: int, workers: int, window: int, prepare=None
) -> Iterator[tuple[Job, LoadedImage | Skipped, object]]:
    """Decode (and, with ``prepare``, preprocess for the model) on a thread pool, yielding
    in job order with ``window`` jobs in flight, so the model never waits on the disk."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="resedis-decode") as pool:
        pending: deque[tuple[Job, Future]] = deque()
        it = iter(jobs)
        for job in it:
            pending.append((job, pool.submit(load_and_prepare, job, max_pixels, prepare)))
            if len(pending) >= window:
                break
        while pending:
            job, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load_and_prepare, nxt, max_pixels, prepare)))
            loaded, prepared = fut.result()
            yield job, loaded, prepared


def preprocessor(backend):
    """``backend.preprocess`` when the backend splits preprocessing from the forward pass
    (OWL: ``preprocess`` + ``encode_preprocessed``), so it can run in the decode threads;
    None without that capability, or without a backend (nothing to encode)."""
    if backend is not None and PREPROCESS_SPLIT in backend.capabilities:
        return backend.preprocess
    return None


def encode_batch(backend, images: list[Image.Image], prepared: list, max_regions: int, nms_iou: float) -> list[ImageRegions]:
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
