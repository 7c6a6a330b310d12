"""Measure the negation term of ``owl+compose`` against synthetic ground truth.

For every (shape, colour) pair present in a corpus rendered by `resedis synth`, the query
"a SHAPE" with ``--not COLOUR`` (excluded phrase "COLOUR SHAPE") is answered at several
negation weights (weight 0 = no negation = the plain `owl` answer). Each of its top-10 hits
is matched (IoU >= 0.5) against the scene objects (the per-object shape / colour labels in
``instances.json``):
* excluded: the hit is an object of that shape AND colour — what the user asked to drop;
* allowed: an object of that shape and another colour — what the user wants.
Printed per weight: the share of top-10 hits that are excluded / allowed, and the number of
excluded objects per query that are decided present (false alarms of the negative term).

    PYTHONPATH=src python scripts/negation_experiment.py /tmp/c /tmp/c.db
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from resedis.boxes import box_iou
from resedis.pipelines import PipelineConfig
from resedis.pipelines.base import QueryText
from resedis.query import QueryEngine

WEIGHTS = (0.0, 2.0, 4.0, 8.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("db")
    ap.add_argument("--top-k", type=int, default=10)
    args = ap.parse_args()
    inst = json.loads((Path(args.dataset) / "instances.json").read_text())
    names = {im["id"]: im["file_name"] for im in inst["images"]}
    objects: dict[str, list[tuple[np.ndarray, str, str]]] = {}
    for a in inst["annotations"]:
        x, y, w, h = a["bbox"]
        attrs = a["attributes"]
        objects.setdefault(names[a["image_id"]], []).append((np.array([x, y, x + w, y + h]), attrs["shape"], attrs["color"]))
    pairs = sorted({(s, c) for objs in objects.values() for _, s, c in objs})
    engine = QueryEngine(args.db, PipelineConfig(top_k=args.top_k))
    pipe = engine.pipeline("owl+compose")
    params, threshold, _ = pipe.resolved()
    queries = [QueryText(f"{s}-{c}", f"a {s}", (c,)) for s, c in pairs]
    prepared = pipe.prepare(queries)
    print(f"{len(queries)} queries 'a SHAPE' --not COLOUR on {args.dataset}; threshold {threshold:.3f}")
    print(f"{'negation weight':>16} {'excluded@10':>12} {'allowed@10':>11} {'excluded present/q':>19}")
    for weight in WEIGHTS:
        results = pipe.finish(prepared, {**params, "negation": weight}, threshold)
        excluded = allowed = total = present_excluded = 0
        for (shape, colour), r in zip(pairs, results):
            for h in r.hits:
                objs = [o for o in objects.get(str(h.image_id), [])]
                match = None
                if objs:
                    ious = box_iou(np.asarray([h.box], float), np.stack([o[0] for o in objs]))[0]
                    j = int(np.argmax(ious))
                    match = objs[j] if ious[j] >= 0.5 else None
                total += 1
                if match is not None and match[1] == shape:
                    if match[2] == colour:
                        excluded += 1
                        present_excluded += h.present
                    else:
                        allowed += 1
        print(f"{weight:16.1f} {excluded / max(1, total):12.3f} {allowed / max(1, total):11.3f} "
              f"{present_excluded / len(queries):19.2f}")


if __name__ == "__main__":
    main()
