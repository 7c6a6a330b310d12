"""The index against the naive way, on one synthetic corpus with the same queries.

Naive (what people do with OWL or Grounding DINO today): for a query, run the detector's
own forward pass (``OwlBackend.detector_logits``: processor + ``Owl*ForObjectDetection``)
on every image, keep each image's boxes the way the index keeps them (top
``max_regions`` by objectness after NMS, a query-independent step), and rank all boxes
of the corpus by the query's logit with the same per-image NMS the search uses. Images
are decoded once beforehand and kept in memory (generous to the naive way: its decode
time is not counted). Each query is answered on its own (one forward per image per
query), as a user with a single question would.

Index: :meth:`resedis.search.Searcher.search` on an index of the same images, built
with ``vector_dtype="float32"`` so the comparison is exact (float16 storage changes
logits by ~1e-3 relative; its effect on ranking is tested in tests/test_search.py).
The searcher is warmed once (region matrix in memory, as in a running server).

``same_hits``: for every query and corpus size, the two top-k lists hold the same
images and boxes in the same order (boxes within 1e-3 px, scores within 1e-5).
Corpus growth: the index grows incrementally (50 → 100 → 200 images by default);
naive time at a size is the sum of its measured per-image forwards over those images.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resedis.boxes import visible

BOX_TOL_PX = 1e-3
SCORE_TOL = 1e-5


@dataclass
class NaiveBenchConfig:
    """images: corpus size (largest step); steps: corpus sizes compared (each ≤ images);
    queries: distinct expressions; top_k: hits compared; repeats: timed index searches
    per query (median); seed: synthetic corpus seed."""

    images: int = 200
    steps: tuple[int, ...] = (50, 100, 200)
    queries: int = 3
    top_k: int = 10
    repeats: int = 5
    seed: int = 0
    max_regions: int = 100
    nms_iou: float = 0.5


def make_corpus(workdir: Path, config: NaiveBenchConfig) -> tuple[Path, list[str]]:
    """Synthetic corpus (``resedis synth``) -> (images dir, distinct query texts)."""
    from resedis.synth import generate

    out = workdir / "corpus"
    if not (out / "images").is_dir():
        generate(out, images=config.images, queries=max(config.queries, 1) * 2, absent=0, seed=config.seed, progress=False)
    texts: list[str] = []
    for path in sorted((out / "expressions").glob("*.json")):
        text = json.loads(path.read_text())["expression"]
        if text not in texts:
            texts.append(text)
    if len(texts) < config.queries:
        raise RuntimeError(f"synthetic corpus has {len(texts)} distinct expressions, {config.queries} needed")
    return out / "images", texts[: config.queries]


def naive_per_image(backend, images: dict, texts: list[str], max_regions: int, nms_iou: float) -> dict:
    """Run ``detector_logits`` for every (query, image) -> per query: per image
    ``(seconds, kept boxes (n, 4), kept logits (n,))``, kept = the index's region selection
    less the boxes with no visible area in their image (the search never returns those)."""
    from resedis.models.owl import select_regions

    out: dict[str, dict] = {}
    for text in texts:
        per_image = {}
        for image_id, image in images.items():
            t0 = time.perf_counter()
            boxes, logits, objectness = backend.detector_logits(image, [text])
            keep = select_regions(np.asarray(boxes, np.float32), np.asarray(objectness, np.float32), max_regions, nms_iou)
            keep = keep[visible(np.asarray(boxes)[keep], *image.size)]  # never a hit (resedis.search_corpus)
            seconds = time.perf_counter() - t0
            per_image[image_id] = (seconds, np.asarray(boxes, np.float32)[keep], np.asarray(logits, np.float32)[keep, 0])
        out[text] = per_image
    return out


def naive_hits(per_image: dict, image_ids: list[str], top_k: int, nms_iou: float) -> list[tuple[str, np.ndarray, float]]:
    """Rank the kept boxes of ``image_ids`` like the search does -> [(image_id, box, score)]."""
    from resedis.search import rank_hits, sigmoid

    boxes = np.concatenate([per_image[i][1] for i in image_ids]) if image_ids else np.zeros((0, 4), np.float32)
    logits = np.concatenate([per_image[i][2] for i in image_ids]) if image_ids else np.zeros(0, np.float32)
    owner = np.concatenate([np.full(len(per_image[i][2]), n) for n, i in enumerate(image_ids)]).astype(np.int64)
    ranked = rank_hits(logits, owner, boxes, top_k, nms_iou)
    return [(image_ids[int(owner[r])], boxes[r], float(sigmoid(v))) for r, v in ranked]


def same_hits(naive: list, index_hits: list) -> tuple[bool, float, float]:
    """-> (identical?, max box difference px, max score difference) of two ranked hit lists."""
    if len(naive) != len(index_hits):
        return False, float("inf"), float("inf")
    box_diff = score_diff = 0.0
    same = True
    for (image_id, box, score), hit in zip(naive, index_hits):
        if str(hit.image_id) != image_id:
            same = False
            continue
        box_diff = max(box_diff, float(np.max(np.abs(np.asarray(hit.box, np.float32) - box))))
        score_diff = max(score_diff, abs(hit.score - score))
    same = same and box_diff <= BOX_TOL_PX and score_diff <= SCORE_TOL
    return same, box_diff, score_diff


def link_images(src: list[Path], dst_dir: Path) -> None:
    dst_dir.mkdir(parents=True, exist_ok=True)
    for path in src:
        target = dst_dir / path.name
        if not target.exists():
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)


def run_naive_vs_index(workdir: Path, model_spec: str, config: NaiveBenchConfig, progress: bool = False) -> dict:
    """The ``naive_vs_index`` section: per corpus size, seconds per query both ways,
    speedup = naive / index, and whether the hits are the same."""
    from resedis.index import IndexConfig, build_index
    from resedis.io.images import open_rgb
    from resedis.models import load_model
    from resedis.search import Searcher

    images_dir, texts = make_corpus(workdir, config)
    all_paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    steps = sorted({min(s, len(all_paths)) for s in config.steps} | {min(config.images, len(all_paths))})
    backend = load_model(model_spec, "cpu")
    decoded = {p.name: open_rgb(p) for p in all_paths[: steps[-1]]}
    t0 = time.perf_counter()
    naive = naive_per_image(backend, decoded, texts, config.max_regions, config.nms_iou)
    naive_total_s = time.perf_counter() - t0

    grow_dir = workdir / "growing"
    db = workdir / "growing.db"
    shutil.rmtree(grow_dir, ignore_errors=True)
    shutil.rmtree(db, ignore_errors=True)
    index_config = IndexConfig(
        model=model_spec, batch_size=8, vector_dtype="float32", max_regions=config.max_regions, nms_iou=config.nms_iou
    )
    rows = []
    for n in steps:
        link_images(all_paths[:n], grow_dir)
        t0 = time.perf_counter()
        build_index(grow_dir, db, config=index_config, progress=progress, encoder=backend)
        build_s = time.perf_counter() - t0
        searcher = Searcher(db, encoder=backend, nms_iou=config.nms_iou)
        searcher.search(texts[0], top_k=config.top_k)  # warm: region matrix loaded once, as in a server
        image_ids = [p.name for p in all_paths[:n]]
        index_times, same, box_diff, score_diff = [], True, 0.0, 0.0
        for text in texts:
            times = []
            for _ in range(config.repeats):
                t1 = time.perf_counter()
                result = searcher.search(text, top_k=config.top_k)
                times.append(time.perf_counter() - t1)
            index_times.append(float(np.median(times)))
            ok, bd, sd = same_hits(naive_hits(naive[text], image_ids, config.top_k, config.nms_iou), result.hits)
            same, box_diff, score_diff = same and ok, max(box_diff, bd), max(score_diff, sd)
        naive_s = float(np.mean([sum(naive[t][i][0] for i in image_ids) for t in texts]))
        index_s = float(np.mean(index_times))
        rows.append(
            {
                "images": n,
                "naive_s_per_query": naive_s,
                "index_s_per_query": index_s,
                "speedup": naive_s / index_s,
                "same_hits": same,
                "max_box_diff_px": box_diff if np.isfinite(box_diff) else None,
                "max_score_diff": score_diff if np.isfinite(score_diff) else None,
                "index_build_s": round(build_s, 3),
                "index_regions": int(len(searcher.corpus())),
            }
        )
    largest = rows[-1]
    return {
        **{k: largest[k] for k in ("images", "naive_s_per_query", "index_s_per_query", "speedup", "same_hits")},
        "model": model_spec,
        "queries": len(texts),
        "query_texts": texts,
        "top_k": config.top_k,
        "naive_forward_ms_per_image": round(1000 * naive_total_s / (len(texts) * len(decoded)), 3),
        "by_corpus_size": rows,
        "speedup_growth": [round(r["speedup"], 2) for r in rows],
        "method": "naive = detector_logits on every image per query (images pre-decoded); "
        "index = Searcher.search (warm, float32 vectors); same_hits = same images, boxes and scores in the same order",
    }
