#!/usr/bin/env python
"""Evaluate a trained detector on a synthetic corpus through the DEFAULT pipeline:
``resedis index`` (region vectors in LanceDB) + ``search_dataset`` (exact MIPS, per-image
NMS) with the presence threshold stored in the model's ``resedis_checkpoint.json``; scored with
``resedis.metrics.evaluate``, by query type, beside the seeded random baseline.

    python scripts/eval_demo_model.py --model DIR --corpus DIR [--seed S] --db DB --json OUT.json

``--corpus`` is generated with ``resedis synth`` (200 images, 150 queries, 20 absent,
``--seed``) when it does not exist. Subsets: ``attribute+position`` = attribute and
position queries for the recall metrics plus every absent query for N_acc (N_acc is
only defined on absent queries); ``relation`` = relation queries (+ absent queries).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

KEYS = ("BR@1@0.5", "IR@1", "mAP50", "F1", "N_acc", "FA_per_query")


def subsets(dataset):
    absent = [q for q in dataset.queries if q.is_absent]
    by = lambda *types: [q for q in dataset.queries if q.type in types]  # noqa: E731
    return {
        "all": dataset.queries,
        "attribute+position": by("attribute", "position") + absent,
        "attribute": by("attribute") + absent,
        "position": by("position") + absent,
        "relation": by("relation") + absent,
    }


def score(dataset, results) -> dict:
    from resedis.metrics import evaluate

    hits = {r.query_id: r.hits for r in results}
    out = {}
    for name, queries in subsets(dataset).items():
        m = evaluate(queries, {q.query_id: hits.get(q.query_id, []) for q in queries})
        out[name] = {k: m[k] for k in KEYS} | {"queries": len([q for q in queries if not q.is_absent]),
                                                "absent_queries": len([q for q in queries if q.is_absent])}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory (owlv2 checkpoint with resedis_checkpoint.json)")
    ap.add_argument("--corpus", required=True, help="synthetic corpus directory (generated if missing)")
    ap.add_argument("--seed", type=int, default=7, help="seed used to generate a missing corpus (default 7)")
    ap.add_argument("--db", required=True, help="index directory to build (must not exist: an index of the same "
                    "model directory would keep the vectors of earlier weights)")
    ap.add_argument("--json", required=True, help="where to write the metrics")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from resedis.baselines import random_predictions
    from resedis.index import IndexConfig, build_index
    from resedis.io import load_dataset
    from resedis.models.checkpoint import read_checkpoint_meta
    from resedis.search import search_dataset
    from resedis.synth import generate

    if Path(args.db).exists():
        raise SystemExit(f"--db {args.db} exists; give a new path")
    corpus = Path(args.corpus)
    if not (corpus / "instances.json").is_file():
        generate(corpus, images=200, queries=150, absent=20, seed=args.seed, progress=False)
    dataset = load_dataset(corpus)
    model_dir = Path(args.model).resolve()
    meta = read_checkpoint_meta(model_dir)  # resedis_checkpoint.json (or the older resedis.json)
    if meta is None:
        raise SystemExit(f"{model_dir}: no checkpoint metadata (resedis_checkpoint.json) with a presence_threshold")
    threshold = float(meta["presence_threshold"])
    t0 = time.time()
    build_index(corpus / "images", args.db, config=IndexConfig(model=f"owlv2:{model_dir}", batch_size=16,
                                                              device=args.device))
    t1 = time.time()
    results = search_dataset(args.db, dataset, top_k=20, threshold=threshold, device=args.device)
    t2 = time.time()
    report = {
        "model": str(model_dir),
        "corpus": str(corpus),
        "pipeline": "build_index (max_regions 100, NMS 0.5, float16 vectors) + search_dataset (top_k 20)",
        "presence_threshold": threshold,
        "index_s": round(t1 - t0, 1),
        "search_s": round(t2 - t1, 1),
        "model_metrics": score(dataset, results),
        "random_baseline": score(dataset, random_predictions(dataset, seed=0)),
    }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print("| subset | queries | absent | BR@1@0.5 | IR@1 | mAP50 | F1 | N_acc | random BR@1@0.5 | random N_acc |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, m in report["model_metrics"].items():
        r = report["random_baseline"][name]
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"| {name} | {m['queries']} | {m['absent_queries']} | {fmt(m['BR@1@0.5'])} | {fmt(m['IR@1'])} | "
              f"{fmt(m['mAP50'])} | {fmt(m['F1'])} | {fmt(m['N_acc'])} | {fmt(r['BR@1@0.5'])} | {fmt(r['N_acc'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
