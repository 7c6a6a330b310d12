"""Decode-ahead for the index writer: read, hash, decode and preprocess on threads; encode in batches.

Files are read, hashed, decoded and (when the backend splits it out) preprocessed for the
model on a thread pool, in order, a bounded window ahead of the model, so the forward pass
never waits on the disk (PIL decoding and the image processors' numpy/scipy work release
the GIL). Boxes are xyxy in original-image pixels.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

from PIL import Image

from resedis.index.plan import FileTask
from resedis.io.images import LoadedImage, load_image
from resedis.models.base import PREPROCESS_SPLIT
from resedis.types import ImageRegions, Skipped


def load_and_prepare(task: FileTask, max_pixels: int, prepare) -> tuple[LoadedImage | Skipped, object]:
    loaded = load_image(task.path, max_pixels)
    if prepare is None or isinstance(loaded, Skipped):
        return loaded, None
    return loaded, prepare([loaded.image])


def prefetch(
    tasks: list[FileTask], max_pixels: int, workers: int, window: int, prepare=None
) -> Iterator[tuple[FileTask, LoadedImage | Skipped, object]]:
    """Decode (and, with ``prepare``, preprocess for the model) on a thread pool, yielding
    in task order with ``window`` tasks in flight, so the model never waits on the disk."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="resedis-decode") as pool:
        pending: deque[tuple[FileTask, Future]] = deque()
        it = iter(tasks)
        for task in it:
            pending.append((task, pool.submit(load_and_prepare, task, max_pixels, prepare)))
            if len(pending) >= window:
                break
        while pending:
            task, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load_and_prepare, nxt, max_pixels, prepare)))
            loaded, prepared = fut.result()
            yield task, loaded, prepared


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
