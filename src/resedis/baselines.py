"""Reference predictions that need no model: an oracle and a seeded random guesser.

They exercise the evaluation before any search engine exists: the oracle must score
1.0 on every recall/precision metric and raise no false alarm; the random guesser
scores near chance.
"""

from __future__ import annotations

import numpy as np

from resedis.types import Dataset, Hit, QueryResult


def oracle_predictions(dataset: Dataset) -> list[QueryResult]:
    """Ground truth as predictions: one detection per target instance.

    box = the instance's box (xyxy pixels), mask = its RLE, ``present=True``; scores
    strictly decrease in dataset order (``(n - i) / n`` for instance ``i`` of ``n``),
    so the ranking is the dataset's order. Absent queries get no detections.
    """
    out = []
    for q in dataset.queries:
        n = len(q.instances)
        hits = []
        for i, inst in enumerate(q.instances):
            info = dataset.images.get(inst.image_id)
            hits.append(Hit(image_id=inst.image_id, box=tuple(float(v) for v in inst.box), score=(n - i) / n,
                            present=True, mask=inst.rle, path=info.path if info is not None else None))
        out.append(QueryResult(query_id=q.query_id, expression=q.expression, hits=hits))
    return out


def random_predictions(dataset: Dataset, *, seed: int = 0, detections_per_query: int = 10) -> list[QueryResult]:
    """Seeded random guesses: ``detections_per_query`` detections per query, each on a
    uniformly drawn corpus image, with a uniform random box inside that image
    (``0 <= x0 <= x1 <= width``, same for y), a uniform score in [0, 1) and
    ``present = score > 0.5``; no masks. Same seed and dataset -> same predictions.
    """
    if detections_per_query < 0:
        raise ValueError(f"detections_per_query must be >= 0, got {detections_per_query}")
    rng = np.random.default_rng(seed)
    images = list(dataset.images.values())
    out = []
    for q in dataset.queries:
        hits = []
        if images:
            picks = rng.integers(0, len(images), size=detections_per_query)
            xs = np.sort(rng.uniform(0.0, 1.0, size=(detections_per_query, 2)), axis=1)
            ys = np.sort(rng.uniform(0.0, 1.0, size=(detections_per_query, 2)), axis=1)
            scores = rng.uniform(0.0, 1.0, size=detections_per_query)
            for k in range(detections_per_query):
                info = images[int(picks[k])]
                box = (float(xs[k, 0] * info.width), float(ys[k, 0] * info.height),
                       float(xs[k, 1] * info.width), float(ys[k, 1] * info.height))
                score = float(scores[k])
                hits.append(Hit(image_id=info.id, box=box, score=score, present=score > 0.5, path=info.path))
        out.append(QueryResult(query_id=q.query_id, expression=q.expression, hits=hits))
    return out
