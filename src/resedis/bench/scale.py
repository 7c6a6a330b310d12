"""Query cost at library scale (millions of regions) with bounded memory.

Unlike :mod:`resedis.bench.query`, nothing here holds the region matrix: the synthetic
OWL-like regions (:mod:`resedis.bench.synthetic`, deterministic per chunk) are written to
an index-schema ``regions`` table chunk by chunk, in the chosen storage format
(:mod:`resedis.quant`); the exact reference top-k of the sampled queries is computed by a
streaming scan that regenerates the same chunks and scores them as stored (decoded codes
for the compact formats), keeping only a running top-100 per query; the ANN queries run
in a separate process whose peak RSS is reported (it reads what a Searcher with an ANN
index reads: ids, batches and boxes of every region, then candidates' rows only).

    python -m resedis.bench.scale --rows 10000000 --storage int4 --out scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from resedis import quant
from resedis.ann_projection import AnnProjection, fit_projection, proj_dims, projection_from_json, projection_to_json
from resedis.bench.synthetic import SyntheticSpec, query_vectors, recall_at, region_vectors
from resedis.index.ann import AnnConfig, ann_candidates, build_ann_index, prewarm_ann_index
from resedis.index.columns import vector_columns
from resedis.index.store import column_matrix, disk_bytes, regions_schema
from resedis.search import HIT_NMS_IOU, rank_hits, rank_rows
from resedis.search_corpus import Corpus

CHUNK = 100_000
REGIONS_PER_IMAGE = 100


def _stored(block: np.ndarray, storage: str) -> np.ndarray:
    """The float32 vectors a search actually scores for ``block`` stored as ``storage``."""
    if storage == "float32":
        return block.astype(np.float32)
    if storage == "float16":
        return block.astype(np.float16).astype(np.float32)
    codes, step, bias = quant.quantize(block, storage)
    return quant.dequantize(codes, step, bias, storage, block.shape[1])


def write_table(path: Path, rows: int, storage: str, spec: SyntheticSpec, chunk: int = CHUNK) -> tuple[float, AnnProjection | None]:
    """Stream ``rows`` synthetic regions into ``path/regions.lance`` in one commit ->
    (seconds, the ANN projection of a compact format: fitted on the first chunk, as the
    index writer fits it on its first batch)."""
    import lancedb

    t0 = time.perf_counter()
    schema = regions_schema(spec.dim, storage)
    rng = np.random.default_rng([spec.seed, 4])
    fitted: list[np.ndarray] = []

    def batches():
        start = 0
        for block in region_vectors(rows, spec, chunk=chunk, dtype=np.float32):
            m = block.shape[0]
            if quant.is_compact(storage) and not fitted:
                fitted.append(fit_projection(block, proj_dims(spec.dim)))
            row = np.arange(start, start + m)
            xy = rng.uniform(0, 600, (m, 2)).astype(np.float32)
            boxes = np.concatenate([xy, xy + rng.uniform(8, 200, (m, 2)).astype(np.float32)], axis=1)
            image = row // REGIONS_PER_IMAGE
            names = np.char.add(np.char.add("img/", np.char.zfill(image.astype("U7"), 7)), ".jpg")
            yield pa.RecordBatch.from_pydict(
                {
                    "image_id": pa.array(names.tolist(), pa.string()),
                    "region": pa.array((row % REGIONS_PER_IMAGE).astype(np.int32)),
                    "box": pa.FixedSizeListArray.from_arrays(pa.array(boxes.ravel(), pa.float32()), 4),
                    "objectness": pa.array(np.zeros(m, np.float32)),
                    **vector_columns(block, storage, fitted[0] if fitted else None),
                    "batch": pa.array(image.astype(np.int64)),
                },
                schema=schema,
            )
            start += m

    # One commit for the whole stream (no per-chunk versions, no compaction rewrite after).
    lancedb.connect(str(path)).create_table("regions", pa.RecordBatchReader.from_batches(schema, batches()), schema=schema)
    return time.perf_counter() - t0, (fitted[0] if fitted else None)


def streaming_exact_top(rows: int, storage: str, spec: SyntheticSpec, queries: np.ndarray, k: int = 100,
                        chunk: int = CHUNK) -> np.ndarray:
    """(Q, k) exact top-k row numbers over the stored vectors, one chunk in memory at a time."""
    best_s = np.full((queries.shape[0], 0), -np.inf, np.float32)
    best_i = np.zeros((queries.shape[0], 0), np.int64)
    start = 0
    for block in region_vectors(rows, spec, chunk=chunk, dtype=np.float32):
        scores = (_stored(block, storage) @ queries.T).T
        idx = np.broadcast_to(np.arange(start, start + block.shape[0]), scores.shape)
        s = np.concatenate([best_s, scores], axis=1)
        i = np.concatenate([best_i, idx], axis=1)
        keep = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, keep, axis=1), np.take_along_axis(i, keep, axis=1)
        start += block.shape[0]
    return best_i


def _no_matrix():
    raise RuntimeError("the ANN path read the region matrix")


def ann_job(path: str, queries: np.ndarray, config: AnnConfig, projection: AnnProjection | None = None) -> dict:
    """Child process: read what a lazy Searcher reads, then answer each query through the
    ANN index as the Searcher does (candidates re-scored, NMS, top 10: timed; k=100 for
    recall) -> latencies and top rows (the candidates' top rows, before NMS, for recall)."""
    import lancedb

    table = lancedb.connect(path).open_table("regions")
    t0 = time.perf_counter()
    cols = table.search().select(["batch", "box"]).limit(None).to_arrow()
    # what a Searcher keeps (24 B/region): the image row and the box of every region
    corpus = Corpus(version=(0, 0), image_ids=[], paths=[], region_image=cols["batch"].to_numpy(),
                    boxes=column_matrix(cols["box"], 4, np.float32), vectors=None, loader=_no_matrix)
    load_s = time.perf_counter() - t0
    del cols
    t0 = time.perf_counter()
    warmed = prewarm_ann_index(table, config.prewarm_max_bytes)  # as the Searcher does on finding the index
    out = {"load_ids_boxes_s": load_s, "prewarm_s": time.perf_counter() - t0, "prewarm_bytes": warmed,
           "times": [], "cpu": [], "top10": [], "times100": [], "top100": [],
           "rank_sparse": [], "rank_dense": []}

    def rows_of(cand, k):
        ids = np.array([int(i[4:-4]) for i in cand.columns["image_id"][:k]], np.int64)
        rows = ids * REGIONS_PER_IMAGE + np.asarray(cand.columns["region"][:k], np.int64)
        return np.pad(rows, (0, k - len(rows)), constant_values=-1).tolist()

    def answer(q, k):
        """The Searcher's work per query after encoding: candidates, their rows, NMS, ranking."""
        cand = ann_candidates(table, q[None], k, config=config, columns=("image_id", "region", "box"), projection=projection)[0]
        rows = np.asarray(rows_of(cand, len(cand)), np.int64)
        order = np.argsort(rows, kind="stable")
        rank_rows(rows[order], cand.logits[order], corpus, k, HIT_NMS_IOU)
        return cand

    answer(queries[0], 10)  # warm-up
    for q in queries:
        t0, c0 = time.perf_counter(), time.process_time()
        cand = answer(q, 10)
        out["times"].append(time.perf_counter() - t0)
        out["cpu"].append(time.process_time() - c0)  # every thread's CPU: what the load cannot inflate
        out["top10"].append(rows_of(cand, 10))  # recall: the candidates' order, before NMS
    for q in queries[:10]:  # the ranking step alone: candidate rows only, against an (N,) vector as before
        cand = ann_candidates(table, q[None], 10, config=config, columns=("image_id", "region"), projection=projection)[0]
        rows = np.asarray(rows_of(cand, len(cand)), np.int64)
        t0 = time.perf_counter()
        order = np.argsort(rows, kind="stable")
        sparse = rank_rows(rows[order], cand.logits[order], corpus, 10, HIT_NMS_IOU)
        t1 = time.perf_counter()
        dense = np.full(len(corpus), -np.inf, np.float32)
        dense[rows] = cand.logits
        dense[corpus.hidden] = -np.inf
        dense[~np.isfinite(dense)] = -np.inf
        if rank_hits(dense, corpus.region_image, corpus.boxes, 10, HIT_NMS_IOU) != sparse:
            raise AssertionError("sparse and dense ranking disagree")
        out["rank_sparse"].append(t1 - t0)
        out["rank_dense"].append(time.perf_counter() - t1)
    for q in queries:  # top-100 queries in a pass of their own (1,000 candidates each slow the next query)
        t0 = time.perf_counter()
        out["top100"].append(rows_of(answer(q, 100), 100))
        out["times100"].append(time.perf_counter() - t0)
    return out


def run_scale(rows: int, workdir: Path, *, storage: str = "int4", queries: int = 50,
              ann: AnnConfig | None = None, spec: SyntheticSpec | None = None, keep: bool = False,
              chunk: int = CHUNK, reuse: bool = False) -> dict:
    """One corpus of ``rows`` regions -> build seconds, bytes per image, p50/p95 latency,
    recall@10/@100 against a streaming exact scan, and the query process's peak RSS.

    ``reuse``: query a table kept by an earlier ``keep=True`` run of the same rows, storage,
    spec and chunk (its build figures, ANN projection and exact top rows are read from
    ``build.json`` beside it), to sweep probes and candidates without rebuilding."""
    from resedis.bench.machine import run_isolated

    ann = ann or AnnConfig(min_rows=1)
    spec = spec or SyntheticSpec()
    path = Path(workdir) / f"scale_{rows}_{storage}"
    saved = path / "build.json"
    q = query_vectors(queries, spec, seed=rows)
    if reuse:
        if not saved.is_file():
            raise SystemExit(f"--reuse: no kept table at {path} (run once with --keep)")
        built = json.loads(saved.read_text())
        if "projection" not in built:  # kept before build.json recorded it
            raise SystemExit(f"--reuse: {saved} has no ANN projection record; rebuild with --keep")
        if built["chunk"] != chunk or built["spec"] != repr(spec) or len(built["truth"]) < queries:
            raise SystemExit(f"--reuse: {path} was built with another chunk, spec or fewer queries")
        projection = None if built["projection"] is None else projection_from_json(built["projection"], spec.dim, str(saved))
        truth = np.asarray(built["truth"][:queries], np.int64)
    else:
        shutil.rmtree(path, ignore_errors=True)
        write_s, projection = write_table(path, rows, storage, spec, chunk)
        data_bytes = disk_bytes(path)
        import lancedb

        build = build_ann_index(lancedb.connect(str(path)).open_table("regions"), ann)
        total_bytes = disk_bytes(path)
        t0 = time.perf_counter()
        truth = streaming_exact_top(rows, storage, spec, q, chunk=chunk)
        built = {"chunk": chunk, "spec": repr(spec), "write_s": round(write_s, 1), "ann_build_s": round(build.seconds, 1),
                 "ann_index": build.to_json(), "total_bytes": total_bytes, "data_bytes": data_bytes,
                 "exact_streaming_scan_s": round(time.perf_counter() - t0, 1), "truth": truth.tolist(),
                 "projection": None if projection is None else projection_to_json(projection, chunk)}
        if keep:
            saved.write_text(json.dumps(built), encoding="utf-8")
    result, rss = run_isolated(ann_job, str(path), q, ann, projection)
    times = np.asarray(result["times"]) * 1000
    cpu = np.asarray(result["cpu"]) * 1000
    entry = {
        "rows": rows,
        "images": rows // REGIONS_PER_IMAGE,
        "storage": storage,
        "queries": queries,
        "reused_table": reuse,
        "write_s": built["write_s"],
        "ann_build_s": built["ann_build_s"],
        "ann_index": built["ann_index"],
        "nprobes": ann.nprobes_for(built["ann_index"]["num_partitions"], compact=quant.is_compact(storage)),
        "candidates_k10": ann.candidates_for(10) if not quant.is_compact(storage) else ann.compact_candidates_for(10, rows, projection.legacy),
        "bytes_per_image": round(built["total_bytes"] / rows * REGIONS_PER_IMAGE),
        "data_bytes_per_image": round(built["data_bytes"] / rows * REGIONS_PER_IMAGE),
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p95_ms": round(float(np.percentile(times, 95)), 2),
        # CPU seconds per query (all threads): the wall time of an idle machine's single core.
        "cpu_p50_ms": round(float(np.percentile(cpu, 50)), 2),
        "cpu_p95_ms": round(float(np.percentile(cpu, 95)), 2),
        "top100_p50_ms": round(float(np.percentile(np.asarray(result["times100"]) * 1000, 50)), 2),
        "top100_p95_ms": round(float(np.percentile(np.asarray(result["times100"]) * 1000, 95)), 2),
        # ranking a query's candidates (NMS, top 10) over its rows only vs an (N,) vector of -inf
        "ranking_sparse_ms": round(float(np.median(result["rank_sparse"])) * 1000, 2),
        "ranking_dense_ms": round(float(np.median(result["rank_dense"])) * 1000, 2),
        "load_average": round(os.getloadavg()[0], 2),
        "recall_at_10": round(recall_at(truth, np.array(result["top10"]), 10), 4),
        "recall_at_100": round(recall_at(truth, np.array(result["top100"]), 100), 4),
        "exact_streaming_scan_s": built["exact_streaming_scan_s"],
        "searcher_peak_rss_mb": round(rss, 1),
        "load_ids_boxes_s": round(result["load_ids_boxes_s"], 2),
        "prewarm_s": round(result["prewarm_s"], 2),
        "prewarm_bytes": result["prewarm_bytes"],
    }
    if not keep:
        shutil.rmtree(path, ignore_errors=True)
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m resedis.bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--storage", default="int4", choices=quant.STORAGE_FORMATS)
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--partitions", type=int, help="IVF partitions (default: the AnnConfig rule)")
    p.add_argument("--nprobes", type=int, help="partitions probed (default: the AnnConfig rule)")
    p.add_argument("--min-candidates", type=int, help="candidates re-scored per query (default: AnnConfig's)")
    p.add_argument("--prewarm-max-bytes", type=int,
                   help="prewarm the vector index up to this size, as the Searcher does (default: AnnConfig's; 0: never)")
    p.add_argument("--workdir", default="/tmp/resedis-scale")
    p.add_argument("--keep", action="store_true", help="keep the table and its exact top rows (for --reuse)")
    p.add_argument("--reuse", action="store_true", help="query the table a --keep run left (other probes or candidates)")
    p.add_argument("--out", help="write the entry as JSON here")
    args = p.parse_args(argv)
    ann = AnnConfig(min_rows=1, num_partitions=args.partitions, nprobes=args.nprobes)
    if args.min_candidates:
        ann.min_candidates = args.min_candidates
    if args.prewarm_max_bytes is not None:
        ann.prewarm_max_bytes = args.prewarm_max_bytes
    t0 = time.perf_counter()
    entry = run_scale(args.rows, Path(args.workdir), storage=args.storage, queries=args.queries, ann=ann,
                      keep=args.keep or args.reuse, reuse=args.reuse)
    entry["wall_s"] = round(time.perf_counter() - t0, 1)
    entry["argv"] = sys.argv
    text = json.dumps(entry, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
