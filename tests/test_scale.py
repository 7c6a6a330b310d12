"""resedis.bench.scale: the streamed (bounded-memory) large-corpus measurement, run small."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from resedis import quant
from resedis.bench.scale import run_scale, streaming_exact_top
from resedis.bench.synthetic import SyntheticSpec, exact_top_k, query_vectors, region_vectors
from resedis.index.ann import AnnConfig

SPEC = SyntheticSpec(dim=33, clusters=16, seed=3)


@pytest.mark.parametrize("storage", ["float16", "int4"])
def test_streaming_scan_equals_the_in_memory_reference(storage):
    rows, chunk = 2500, 700  # four chunks, the last one short
    queries = query_vectors(6, SPEC)
    vectors = np.concatenate(list(region_vectors(rows, SPEC, chunk=chunk, dtype=np.float32)))
    if storage == "float16":
        stored = vectors.astype(np.float16)
    else:
        stored = quant.dequantize(*quant.quantize(vectors, storage), storage, SPEC.dim)
    want = exact_top_k(stored, queries, 20)
    got = streaming_exact_top(rows, storage, SPEC, queries, k=20, chunk=chunk)
    np.testing.assert_array_equal(got, want)


def test_run_scale_reports_every_figure(tmp_path):
    # Every partition probed and every row a candidate: recall must then be exactly 1.
    ann = AnnConfig(min_rows=1, num_partitions=4, nprobes=4, min_candidates=5000)
    entry = run_scale(3000, tmp_path, storage="int8", queries=4, ann=ann, spec=SPEC, chunk=1000)
    assert entry["rows"] == 3000 and entry["images"] == 30 and entry["storage"] == "int8"
    assert entry["recall_at_10"] == 1.0 and entry["recall_at_100"] == 1.0
    assert 0 < entry["p50_ms"] <= entry["p95_ms"]
    assert entry["bytes_per_image"] > entry["data_bytes_per_image"] >= 100 * quant.bytes_per_region("int8", SPEC.dim)
    assert entry["searcher_peak_rss_mb"] > 0
    assert entry["ranking_sparse_ms"] > 0 and entry["ranking_dense_ms"] > 0  # the two agreed (else the job raises)
    assert entry["prewarm_bytes"] > 0  # the small index fits the default budget: loaded as the Searcher loads it
    assert not (tmp_path / "scale_3000_int8").exists()  # removed unless keep=True
    cold = run_scale(3000, tmp_path, storage="int8", queries=2, ann=replace(ann, prewarm_max_bytes=0), spec=SPEC, chunk=1000)
    assert cold["prewarm_bytes"] == 0 and cold["recall_at_10"] == 1.0


def test_a_kept_table_is_queried_again_without_rebuilding(tmp_path):
    """--keep then --reuse: the second run queries the same table with other settings,
    reports the first run's build figures, and its recall is against the same exact rows
    (every row a candidate: 1.0 again; one probe of many partitions and few candidates: less)."""
    everything = AnnConfig(min_rows=1, num_partitions=4, nprobes=4, min_candidates=5000)
    first = run_scale(3000, tmp_path, storage="int4", queries=4, ann=everything, spec=SPEC, chunk=1000, keep=True)
    assert (tmp_path / "scale_3000_int4" / "build.json").is_file() and not first["reused_table"]
    again = run_scale(3000, tmp_path, storage="int4", queries=4, ann=everything, spec=SPEC, chunk=1000, reuse=True, keep=True)
    assert again["reused_table"] and again["recall_at_10"] == first["recall_at_10"] == 1.0
    for key in ("write_s", "ann_build_s", "bytes_per_image", "exact_streaming_scan_s"):
        assert again[key] == first[key]
    narrow = AnnConfig(min_rows=1, num_partitions=4, nprobes=1, min_candidates=10, candidate_factor=1)
    assert run_scale(3000, tmp_path, storage="int4", queries=4, ann=narrow, spec=SPEC, chunk=1000, reuse=True,
                     keep=True)["recall_at_100"] < 1.0
    with pytest.raises(SystemExit, match="fewer queries"):
        run_scale(3000, tmp_path, storage="int4", queries=9, ann=everything, spec=SPEC, chunk=1000, reuse=True, keep=True)
    with pytest.raises(SystemExit, match="no kept table"):
        run_scale(3000, tmp_path / "none", storage="int4", queries=4, ann=everything, spec=SPEC, chunk=1000, reuse=True)
