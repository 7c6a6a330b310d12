"""End-to-end indexing and search jobs, each run in its own process for a clean peak RSS,
and the writer's overlapped rate compared with the sum of its stages.

``index_job`` runs the real writer (:func:`resedis.index.build_index`: discovery,
threaded decode + preprocess, batched forward, region selection, Lance commits).
Comparing its images/s with the serial sum of the stage times measured by
:mod:`resedis.bench.indexing` shows whether decoding overlaps the model
(``overlap_gain`` > 1) or whether per-batch overhead (commits, Python) is eating time
(``overlap_gain`` < 1).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _backend(model: str):
    """A spec (``owlv2:/dir``) -> loaded backend; a :data:`resedis.bench.indexing.MODELS`
    name -> random-weight backend at the real size."""
    from resedis.bench.indexing import MODELS, random_backend

    if model in MODELS:
        return random_backend(model)[0]
    from resedis.models import load_model

    return load_model(model, "cpu")


def index_job(images_dir: str, db: str, model: str, batch_size: int, threads: int | None) -> dict:
    """Build an index of ``images_dir`` with the writer -> rate and timings (child process)."""
    from resedis.index import IndexConfig, build_index

    _set_threads(threads)
    backend = _backend(model)
    t0 = time.perf_counter()
    report = build_index(images_dir, db, config=IndexConfig(batch_size=batch_size), progress=False, encoder=backend)
    seconds = time.perf_counter() - t0
    return {
        "model": model,
        "images": report.encoded,
        "batch_size": batch_size,
        "seconds": round(seconds, 3),
        "images_per_s": round(report.encoded / seconds, 4) if seconds > 0 else None,
    }


def search_job(db: str, model: str, texts: list[str], repeats: int, threads: int | None) -> dict:
    """Open a Searcher on ``db`` and answer ``texts`` ``repeats`` times (child process)."""
    from resedis.search import Searcher

    _set_threads(threads)
    t0 = time.perf_counter()
    searcher = Searcher(db, encoder=_backend(model))
    searcher.corpus()
    load_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        for text in texts:
            t1 = time.perf_counter()
            searcher.search(text, top_k=10)
            times.append(time.perf_counter() - t1)
    return {
        "regions": len(searcher.corpus()),
        "queries": len(times),
        "load_s": round(load_s, 3),
        "p50_ms": round(1000 * float(np.median(times)), 3),
    }


def stage_rate(model: str, images_dir: Path, batch_size: int, images: int) -> dict:
    """Serial stage times of ``model`` on the first ``images`` files (same stages as the writer)."""
    from resedis.bench.indexing import time_batch

    backend = _backend(model)
    family = backend.family
    paths = sorted(p for p in Path(images_dir).iterdir() if p.is_file())[:images]
    time_batch(backend, family, paths[:1], 100, 0.5)  # warm-up
    totals = {"decode": 0.0, "preprocess": 0.0, "forward": 0.0, "select": 0.0}
    for start in range(0, len(paths), batch_size):
        for key, value in time_batch(backend, family, paths[start : start + batch_size], 100, 0.5).items():
            totals[key] += value
    per_image_ms = {f"{k}_ms": round(1000 * v / len(paths), 3) for k, v in totals.items()}
    serial = sum(totals.values()) / len(paths)
    return {"images": len(paths), "batch_size": batch_size, **per_image_ms, "serial_images_per_s": round(1.0 / serial, 4)}
