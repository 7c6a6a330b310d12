"""Query cost vs corpus size: exact MIPS (the Searcher's in-memory path, with its region
matrix in float32 — the default — and as stored in float16, ``matrix_dtype="stored"``)
against ANN candidates + exact re-scoring (:mod:`resedis.index.ann`), on synthetic OWL-like
region vectors (:mod:`resedis.bench.synthetic`) stored in the index's own ``regions``
schema, so bytes on disk are those of a real index.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from resedis.bench.synthetic import SyntheticSpec, exact_top_k, query_vectors, recall_at, region_vectors
from resedis.index.store import disk_bytes

log = logging.getLogger(__name__)


@dataclass
class QueryBenchConfig:
    """sizes: region rows per corpus; queries: timed queries per size; k: top-k compared;
    regions_per_image: rows per synthetic image (``max_regions`` of a real index)."""

    sizes: tuple[int, ...] = (10_000, 100_000)
    queries: int = 20
    regions_per_image: int = 100
    vector_dtype: str = "float16"
    chunk: int = 100_000
    spec: SyntheticSpec = SyntheticSpec()




def write_regions(db_path: Path, rows: int, config: QueryBenchConfig):
    """Create ``db_path/regions.lance`` (index schema) with ``rows`` synthetic regions.

    -> (LanceDB table, (rows, dim) vectors in memory as stored). Images are named
    ``img/000000.jpg``… with ``regions_per_image`` consecutive rows each.
    """
    import lancedb

    from resedis.index.manifest import VECTOR_DTYPES
    from resedis.index.store import regions_schema

    spec = config.spec
    schema = regions_schema(spec.dim, config.vector_dtype)
    np_dtype = np.float16 if config.vector_dtype == "float16" else np.float32
    db = lancedb.connect(str(db_path))
    table = None
    vectors = np.empty((rows, spec.dim), np_dtype)
    rng = np.random.default_rng([spec.seed, 4])
    start = 0
    for block in region_vectors(rows, spec, chunk=config.chunk, dtype=np_dtype):
        m = block.shape[0]
        vectors[start : start + m] = block
        row = np.arange(start, start + m)
        xy = rng.uniform(0, 600, (m, 2)).astype(np.float32)
        wh = rng.uniform(8, 200, (m, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + wh], axis=1)
        batch = pa.table(
            {
                "image_id": pa.array([f"img/{i:07d}.jpg" for i in row // config.regions_per_image], pa.string()),
                "region": pa.array((row % config.regions_per_image).astype(np.int32), pa.int32()),
                "box": pa.FixedSizeListArray.from_arrays(pa.array(boxes.ravel(), pa.float32()), 4),
                "objectness": pa.array(rng.normal(0, 1, m).astype(np.float32), pa.float32()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(block.ravel(), VECTOR_DTYPES[config.vector_dtype]), spec.dim),
                "batch": pa.array(row // config.regions_per_image, pa.int64()),
            },
            schema=schema,
        )
        if table is None:
            table = db.create_table("regions", batch, schema=schema)
        else:
            table.add(batch)
        start += m
    if table is not None and table.count_rows() > config.chunk:
        import datetime as dt
        import warnings

        # One compacted dataset without the superseded fragments, as after `resedis index`
        # (nobody else reads this scratch table, so dropping every old version is safe).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            table.optimize(cleanup_older_than=dt.timedelta(0))
    return table, vectors


def _percentiles(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values) * 1000.0
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 95))


def exact_search_times(
    vectors: np.ndarray, queries: np.ndarray, k: int, matrix_dtype: str = "stored"
) -> tuple[list[float], np.ndarray, float]:
    """Time the Searcher's exact path per query (``Corpus.logits`` + top-k selection) with
    the region matrix kept as ``matrix_dtype`` (:mod:`resedis.search_corpus`)
    -> (seconds per query, (Q, k) rows best first, seconds of the one-time float32
    conversion, done before the timed queries; 0 for ``"stored"``)."""
    from resedis.search_corpus import Corpus

    corpus = Corpus(
        version=(0, 0), image_ids=[], paths=[], region_image=np.zeros(len(vectors), np.int64),
        boxes=np.zeros((0, 4), np.float32), vectors=vectors, matrix_dtype=matrix_dtype,
    )
    t0 = time.perf_counter()
    corpus.matrix()  # "float32": the conversion a Searcher does once per loaded index
    convert_s = time.perf_counter() - t0
    times, tops = [], []
    for q in queries:
        t0 = time.perf_counter()
        logits = corpus.logits(q[None])[:, 0]
        kk = min(k, len(logits))
        top = np.argpartition(-logits, kk - 1)[:kk]
        top = top[np.argsort(-logits[top], kind="stable")]
        times.append(time.perf_counter() - t0)
        tops.append(top)
    return times, np.array(tops), convert_s


def _fits_in_memory(nbytes: int) -> bool:
    """True when ``nbytes`` is under half of the memory available now (Linux MemAvailable)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            avail = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable"))
    except (OSError, StopIteration, ValueError):
        return True
    return nbytes < avail // 2


def ann_search_times(table, queries: np.ndarray, k: int, ann_config, regions_per_image: int) -> tuple[list[float], np.ndarray]:
    """Time :func:`ann_candidates` (index probe + exact re-scoring) per query
    -> (seconds per query, (Q, k) synthetic row numbers best first, -1 padded)."""
    from resedis.index.ann import ann_candidates

    times, tops = [], []
    for q in queries:
        t0 = time.perf_counter()
        cand = ann_candidates(table, q[None], k, config=ann_config, columns=("image_id", "region"))[0]
        times.append(time.perf_counter() - t0)
        images = np.array([int(i[len("img/") : -len(".jpg")]) for i in cand.columns["image_id"][:k]], np.int64)
        rows = images * regions_per_image + np.asarray(cand.columns["region"][:k], np.int64)
        tops.append(np.pad(rows, (0, k - len(rows)), constant_values=-1))
    return times, np.array(tops)


def run_query_size(rows: int, workdir: Path, config: QueryBenchConfig, ann_config) -> dict:
    """One corpus size -> the ``query`` entry of the report (see :func:`run_query_bench`)."""
    from resedis.index.ann import build_ann_index

    path = workdir / f"regions_{rows}"
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    table, vectors = write_regions(path, rows, config)
    write_s = time.perf_counter() - t0
    data_bytes = disk_bytes(path)
    queries = query_vectors(config.queries, config.spec, seed=rows)

    truth = exact_top_k(vectors, queries, 100)
    stored_t, stored_top, _ = exact_search_times(vectors, queries, 10, "stored")
    # The Searcher's default keeps a float32 matrix (4 bytes x rows x dim); skipped when
    # that (plus the float16 being converted) would not fit in memory here.
    if vectors.dtype == np.float32 or _fits_in_memory(2 * vectors.size * 4):
        exact_t, exact_top, convert_s = exact_search_times(vectors, queries, 10, "float32")
        matrix_dtype = "float32"
    else:
        exact_t, exact_top, convert_s, matrix_dtype = stored_t, stored_top, None, "stored"
    build = build_ann_index(table, ann_config)
    total_bytes = disk_bytes(path)
    ann10_t, ann10 = ann_search_times(table, queries, 10, ann_config, config.regions_per_image)
    _, ann100 = ann_search_times(table, queries, 100, ann_config, config.regions_per_image)
    e50, e95 = _percentiles(exact_t)
    s50, s95 = _percentiles(stored_t)
    a50, a95 = _percentiles(ann10_t)
    entry = {
        "rows": rows,
        "images": -(-rows // config.regions_per_image),
        "queries": config.queries,
        "vector_dim": config.spec.dim,
        "vector_dtype": config.vector_dtype,
        "exact_p50_ms": round(e50, 3),
        "exact_p95_ms": round(e95, 3),
        "exact_recall_at_10": round(recall_at(truth, exact_top, 10), 4),
        "exact_matrix_dtype": matrix_dtype,
        "exact_matrix_convert_s": None if convert_s is None else round(convert_s, 3),
        "exact_stored_p50_ms": round(s50, 3),
        "exact_stored_p95_ms": round(s95, 3),
        "exact_modes_same_top10": bool(np.array_equal(exact_top, stored_top)),
        "ann_p50_ms": round(a50, 3),
        "ann_p95_ms": round(a95, 3),
        "ann_recall_at_10": round(recall_at(truth, ann10, 10), 4),
        "ann_recall_at_100": round(recall_at(truth, ann100, 100), 4),
        "ann_index": build.to_json(),
        "build_s": round(build.seconds, 3),
        "write_s": round(write_s, 3),
        "data_bytes_per_region": round(data_bytes / rows, 1),
        "index_bytes_per_region": round((total_bytes - data_bytes) / rows, 1),
        "bytes_per_region": round(total_bytes / rows, 1),
        "bytes_per_image": round(total_bytes / rows * config.regions_per_image, 1),
        "regions_per_image": config.regions_per_image,
        "speedup_p50": round(e50 / a50, 2) if a50 > 0 else None,
    }
    del vectors
    shutil.rmtree(path, ignore_errors=True)
    return entry


def compare_ann_variants(rows: int, workdir: Path, config: QueryBenchConfig, variants: list) -> list[dict]:
    """Build each ANN variant (an :class:`~resedis.index.ann.AnnConfig`) in turn on ONE
    synthetic table of ``rows`` regions -> per variant: build seconds, index bytes per
    region, p50/p95 latency and recall@10/@100 against exact MIPS (same queries)."""
    from resedis.index.ann import build_ann_index

    path = workdir / f"variants_{rows}"
    shutil.rmtree(path, ignore_errors=True)
    table, vectors = write_regions(path, rows, config)
    queries = query_vectors(config.queries, config.spec, seed=rows + 1)
    truth = exact_top_k(vectors, queries, 100)
    del vectors
    data_bytes = disk_bytes(path)
    out = []
    for ann_config in variants:
        try:
            build = build_ann_index(table, ann_config)
        except Exception as exc:  # a variant LanceDB refuses is reported, not fatal
            out.append({"index_type": ann_config.index_type, "metric": ann_config.metric, "error": str(exc)})
            continue
        index_bytes = build.index_bytes if build.index_bytes is not None else disk_bytes(path) - data_bytes
        t10, top10 = ann_search_times(table, queries, 10, ann_config, config.regions_per_image)
        _, top100 = ann_search_times(table, queries, 100, ann_config, config.regions_per_image)
        p50, p95 = _percentiles(t10)
        out.append(
            {
                **build.to_json(),
                "nprobes": ann_config.nprobes_for(build.num_partitions),
                "p50_ms": round(p50, 3),
                "p95_ms": round(p95, 3),
                "recall_at_10": round(recall_at(truth, top10, 10), 4),
                "recall_at_100": round(recall_at(truth, top100, 100), 4),
                "index_bytes_per_region": round(index_bytes / rows, 1),
            }
        )
    shutil.rmtree(path, ignore_errors=True)
    return out
