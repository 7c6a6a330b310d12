"""Peak RSS of indexing against the number of images: does memory stay bounded?

For each size N, N tiny PNGs (1x1 pixels by default, distinct colours so every file has
its own hash) are indexed from scratch by the real writer with the tiny OWLv2 checkpoint,
each run in its own process (:func:`resedis.bench.machine.run_isolated`), and the
process's peak RSS is recorded with the index's size on disk after the run. Tiny images
make the per-image cost of the model negligible, so what grows is the writer's own
bookkeeping: the figure that must not grow with N (goal: the peak at the largest size
within 1.2x of the peak at the smallest).

>>> from resedis.bench.memory import index_memory
>>> index_memory([3000, 12000], "owlv2:/tmp/tiny/owlv2", "scratch/")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from resedis.bench import machine


def write_tiny_images(folder: Path, n: int, side: int = 1, per_folder: int = 1000) -> Path:
    """``n`` distinct ``side`` x ``side`` PNGs under ``folder`` (sub-folders of ``per_folder``);
    files already there are kept, so a larger size reuses a smaller one's."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"{i // per_folder:04d}" / f"{i:07d}.png"
        if path.exists():
            continue
        path.parent.mkdir(exist_ok=True)
        colour = (i % 256, (i // 256) % 256, (i // 65536) % 256)
        Image.new("RGB", (side, side), colour).save(path)
    return folder


def _index_once(images: str, db: str, model: str, batch_size: int) -> dict:
    """Child process: build the index, return its report figures."""
    import torch

    from resedis.index import IndexConfig, build_index
    from resedis.models import load_model

    torch.set_num_threads(1)
    encoder = load_model(model, "cpu")
    started = time.perf_counter()
    report = build_index(images, db, config=IndexConfig(batch_size=batch_size), progress=False, encoder=encoder)
    return {"added": report.added, "skipped": len(report.skipped), "seconds": round(time.perf_counter() - started, 1)}


def index_memory(sizes: list[int], model: str, workdir: str | os.PathLike, *, side: int = 1, batch_size: int = 8) -> dict:
    """Peak RSS (MiB) of indexing each of ``sizes`` tiny images from scratch (see the module
    doc) -> ``{"runs": [{images, peak_rss_mb, disk_mb, seconds}], "growth": peak(max)/peak(min)}``."""
    work = Path(workdir)
    runs = []
    for n in sorted(sizes):
        folder = work / f"images_{n}"
        write_tiny_images(folder, n, side)
        db = work / f"db_{n}"
        shutil.rmtree(db, ignore_errors=True)
        result, rss = machine.run_isolated(_index_once, str(folder), str(db), model, batch_size)
        disk = sum(f.stat().st_size for f in db.rglob("*") if f.is_file())
        runs.append({"images": n, "peak_rss_mb": round(rss, 1), "disk_mb": round(disk / 2**20, 2), **result})
        shutil.rmtree(db, ignore_errors=True)
    growth = runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"] if runs else None
    return {"model": model, "side": side, "batch_size": batch_size, "runs": runs,
            "growth": round(growth, 3) if growth else None}


def run_index_memory(sizes: list[int], out: str | os.PathLike, *, workdir: str | os.PathLike | None = None,
                     side: int = 1, batch_size: int = 8) -> dict:
    """``resedis bench --index-memory``: :func:`index_memory` with a tiny OWLv2 checkpoint
    written for the run; the report is written to ``out`` as JSON and returned. Scratch
    data lives in ``workdir`` (kept) or a temporary directory (removed)."""
    from resedis.testing.tiny import make_tiny_checkpoints

    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be positive image counts, got {sizes}")
    scratch = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="resedis-bench-memory-"))
    try:
        tiny = make_tiny_checkpoints(scratch / "tiny", families=["owlv2"])["owlv2"]
        report = {"section": "index_memory", **index_memory(sizes, f"owlv2:{tiny}", scratch, side=side, batch_size=batch_size)}
    finally:
        if not workdir:
            shutil.rmtree(scratch, ignore_errors=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report
