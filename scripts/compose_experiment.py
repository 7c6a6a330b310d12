"""Offline measurement of compositional search (resedis.expressions) on an indexed corpus.

Every query is parsed; every phrase (subject, anchors, excluded phrases) and every whole
expression is scored by the same exact inner product over all regions (the detector's
own logits); the parse's cues are combined with :func:`resedis.expressions.compose` (resedis.expressions.fusion), and
the combined logits are ranked exactly like ``Searcher`` ranks (per-image NMS, top-k),
then scored per expression type with ``resedis.eval.evaluate_predictions``. Printed:
BR@1@0.5 per type, N_acc and FA/query, for today's search (the whole expression) and
for several fusion settings.

    resedis synth /tmp/c --images 200 --queries 150 --absent 20 --seed 4242
    resedis index /tmp/c/images --db /tmp/c.db --model demo
    PYTHONPATH=src python scripts/compose_experiment.py /tmp/c /tmp/c.db

The subject term is either the parsed subject phrase (``subject=phrase``) or the whole
expression's logit (``subject=whole``: today's score plus geometric cues on top).
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from resedis.eval import evaluate_predictions
from resedis.expressions import FusionWeights, compose, parse
from resedis.io import load_dataset
from resedis.search import (
    Searcher,
    map_dataset_images,
    normalize_text,
    rank_hits,
    sigmoid,
)
from resedis.types import Hit, QueryResult

TYPES = ("attribute", "position", "relation", "absent")


def form(p) -> str:
    """The parse's form: superlative / relation kind / position / attribute."""
    if p.superlatives:
        return "superlative"
    if p.relations:
        return p.relations[0].kind
    return "position" if p.positions else "attribute"


def settings() -> dict[str, tuple[str, FusionWeights | None]]:
    base = FusionWeights()

    def scaled(k: float) -> FusionWeights:
        return dataclasses.replace(base, position=base.position * k, position_relative=base.position_relative * k,
                                   size=base.size * k, relation=base.relation * k)

    return {
        "today (whole expression)": ("whole", None),
        "phrase, no cues": ("phrase", scaled(0.0)),
        "phrase + default cues": ("phrase", base),
        "whole + default cues": ("whole", base),
        "whole + cues x0.5": ("whole", scaled(0.5)),
        "whole + cues x2": ("whole", scaled(2.0)),
        "whole + abs position only": ("whole", dataclasses.replace(base, position_relative=0)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", help="corpus folder written by `resedis synth`")
    ap.add_argument("db", help="its index built by `resedis index --model demo`")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--settings", nargs="*", metavar="NAME", help="run only these settings (names as printed)")
    args = ap.parse_args()

    dataset = load_dataset(args.dataset)
    searcher = Searcher(args.db)
    corpus = searcher.corpus()
    mapping, _ = map_dataset_images(corpus, searcher.index.manifest.root, dataset)
    sizes = np.array([[dataset.images[m].width, dataset.images[m].height] if m is not None else [1, 1]
                      for m in mapping], dtype=np.float64)
    threshold = searcher.threshold
    queries = dataset.queries
    parsed = [parse(q.expression) for q in queries]
    texts = sorted({normalize_text(q.expression) for q in queries} | {t for p in parsed for t in p.phrases()})
    logits = corpus.logits(searcher.encode(texts))  # (R, T)
    column = {t: logits[:, k].astype(np.float64) for k, t in enumerate(texts)}
    boxes = np.asarray(corpus.boxes, dtype=np.float64)
    region_image = np.asarray(corpus.region_image)
    print(f"{len(queries)} queries, {len(corpus)} regions, {len(texts)} distinct texts, threshold {threshold:.3f}")
    unparsed = sum(p.fallback for p in parsed)
    print(f"parser fallbacks: {unparsed}")

    header = f"{'setting':34s}" + "".join(f"{t:>11s}" for t in TYPES[:3]) + f"{'all':>8s}{'N_acc':>8s}{'FA/q':>7s}"
    print(header)
    for name, (subject, weights) in settings().items():
        if args.settings and name not in args.settings:
            continue
        results = []
        for q, p in zip(queries, parsed):
            whole = column[normalize_text(q.expression)]
            if weights is None:
                z = whole
            else:
                phrase_logits = dict(column)
                if subject == "whole":
                    phrase_logits[p.subject.text] = whole
                z = compose(p, phrase_logits, boxes, region_image, sizes, weights).logits
            hits = []
            for region, value in rank_hits(z, region_image, boxes, args.top_k, searcher.nms_iou):
                image = mapping[int(region_image[region])]
                if image is None:
                    continue
                score = float(sigmoid(value))
                hits.append(Hit(image, tuple(float(v) for v in boxes[region]), score, score >= threshold))
            results.append(QueryResult(q.query_id, q.expression, hits))
        ev = evaluate_predictions(dataset, results)
        by_type = ev.breakdown["type"]
        row = f"{name:34s}" + "".join(f"{by_type.get(t, {}).get('BR@1@0.5', float('nan')):11.3f}" for t in TYPES[:3])
        n_acc = ev.metrics["N_acc"]
        row += f"{ev.metrics['BR@1@0.5']:8.3f}{(n_acc if n_acc is not None else float('nan')):8.3f}"
        row += f"{ev.metrics['FA_per_query']:7.2f}"
        forms: dict[str, list[float]] = {}
        for p, rec in zip(parsed, ev.per_query):
            if not rec["absent"] and form(p) not in ("attribute", "position"):
                forms.setdefault(form(p), []).append(rec["BR@1@0.5"])
        row += "   " + " ".join(f"{k} {np.mean(v):.2f}/{len(v)}" for k, v in sorted(forms.items()))
        pos = by_type.get("position", {})
        row += f"   position IR@1 {pos.get('IR@1', float('nan')):.2f} Pr@50 {pos.get('Pr@50', float('nan')):.2f}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
