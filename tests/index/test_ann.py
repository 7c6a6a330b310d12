"""ANN candidates + exact re-scoring (resedis.index.ann) against exact numpy MIPS."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from resedis.bench.synthetic import SyntheticSpec, exact_top_k, query_vectors, recall_at, region_vectors
from resedis.errors import ResedisError
from resedis.index.ann import (
    AnnConfig,
    ann_candidates,
    ann_status,
    build_ann_index,
    has_ann_index,
    optimize_ann,
    prewarm_ann_index,
    should_build,
)
from resedis.index.ann_search import AnnSearch
from resedis.index.manifest import VECTOR_DTYPES
from resedis.index.store import regions_schema

ROWS = 20_000
RPI = 50  # regions per synthetic image
# Clustered like OWL class embeddings; 64 clusters -> ~300 regions per cluster at 20k rows.
SPEC = SyntheticSpec(clusters=64, seed=7)
# 32 partitions, 8 probed (a quarter of the data scanned); candidates = max(500, 10k).
CONFIG = AnnConfig(min_rows=1, index_type="IVF_SQ", num_partitions=32, nprobes=8)
RECALL_AT_10_FLOOR = 0.95  # measured ~0.99 on this data; see docs/benchmarks.md for larger sizes


def _rows_table(vectors: np.ndarray, first_row: int = 0) -> pa.Table:
    n, dim = vectors.shape
    rows = np.arange(first_row, first_row + n)
    return pa.table(
        {
            "image_id": pa.array([f"img/{r // RPI:06d}.jpg" for r in rows], pa.string()),
            "region": pa.array((rows % RPI).astype(np.int32), pa.int32()),
            "box": pa.FixedSizeListArray.from_arrays(pa.array(np.tile([0, 0, 10, 10], n).astype(np.float32)), 4),
            "objectness": pa.array(np.zeros(n, np.float32)),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), VECTOR_DTYPES["float16"]), dim),
            "batch": pa.array(rows // RPI, pa.int64()),
        },
        schema=regions_schema(dim, "float16"),
    )


def _row_numbers(cand, k):
    """Synthetic row number of the first ``k`` candidates (-1 padded when fewer came back)."""
    ids = cand.columns["image_id"][:k]
    rows = np.array([int(i[4:-4]) * RPI for i in ids], np.int64) + np.asarray(cand.columns["region"][:k], np.int64)
    return np.pad(rows, (0, k - len(rows)), constant_values=-1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import lancedb

    vectors = np.concatenate(list(region_vectors(ROWS, SPEC, dtype=np.float16)))
    db = lancedb.connect(str(tmp_path_factory.mktemp("ann") / "db"))
    table = db.create_table("regions", _rows_table(vectors), schema=regions_schema(SPEC.dim, "float16"))
    build = build_ann_index(table, CONFIG)
    return table, vectors, build


def test_build_reports_the_index(corpus):
    table, _, build = corpus
    assert has_ann_index(table)
    status = ann_status(table)
    assert status["indexed_rows"] == ROWS and status["unindexed_rows"] == 0
    assert status["metric"] == "cosine" and "SQ" in status["index_type"].upper()
    assert build.rows == ROWS and build.num_partitions == 32 and build.seconds > 0


def test_recall_at_10_against_exact_mips(corpus):
    table, vectors, _ = corpus
    queries = query_vectors(40, SPEC, seed=3)
    truth = exact_top_k(vectors, queries, 10)
    got = np.array([_row_numbers(c, 10) for c in ann_candidates(table, queries, 10, config=CONFIG)])
    recall = recall_at(truth, got, 10)
    assert recall >= RECALL_AT_10_FLOOR, recall
    # The probe really is approximate: with a single partition probed recall drops, so the
    # test above measures the index rather than an exhaustive scan.
    narrow = AnnConfig(min_rows=1, index_type="IVF_SQ", num_partitions=32, nprobes=1, min_candidates=10)
    got1 = np.array([_row_numbers(c, 10) for c in ann_candidates(table, queries, 10, config=narrow)])
    assert recall_at(truth, got1, 10) < recall


def test_candidate_logits_are_exact_and_sorted(corpus):
    table, vectors, _ = corpus
    queries = query_vectors(5, SPEC, seed=4)
    candidates = ann_candidates(table, queries, 10, config=CONFIG, columns=("image_id", "region", "box"))
    assert len(queries) == len(candidates) == 5  # the loop below checks every query
    for q, cand in zip(queries, candidates):
        rows = _row_numbers(cand, len(cand))
        assert len(cand) == CONFIG.candidates_for(10) == 500
        reference = vectors[rows].astype(np.float32) @ q  # independent: in-memory matrix, original row order
        np.testing.assert_allclose(cand.logits, reference, rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(cand.logits) <= 0)
        assert cand.columns["box"].shape == (500, 4)
        # The best candidate is the exact best row whenever exact top-1 was retrieved.
        exact_best = int(np.argmax(vectors.astype(np.float32) @ q))
        if exact_best in set(rows.tolist()):
            assert rows[0] == exact_best


def test_rows_added_after_the_build_are_searched_before_reoptimisation(tmp_path):
    import lancedb

    vectors = np.concatenate(list(region_vectors(4000, SPEC, dtype=np.float16)))
    db = lancedb.connect(str(tmp_path / "db"))
    table = db.create_table("regions", _rows_table(vectors), schema=regions_schema(SPEC.dim, "float16"))
    config = AnnConfig(min_rows=1, index_type="IVF_SQ", num_partitions=8, nprobes=2)
    build_ann_index(table, config)
    query = query_vectors(1, SPEC, seed=9)[0]
    # Plant three regions that outscore everything for this query: scaled copies of it.
    planted = np.stack([query * s for s in (10.0, 9.0, 8.0)]).astype(np.float16)
    table.add(_rows_table(planted, first_row=len(vectors)))
    assert ann_status(table)["unindexed_rows"] == 3
    cand = ann_candidates(table, query[None], 5, config=config)[0]
    assert _row_numbers(cand, 3).tolist() == [4000, 4001, 4002]
    np.testing.assert_allclose(cand.logits[:3], planted.astype(np.float32) @ query, rtol=1e-5)
    # Folding the new rows into the index keeps them findable.
    assert optimize_ann(table, config) is None
    assert ann_status(table)["unindexed_rows"] == 0
    cand = ann_candidates(table, query[None], 5, config=config)[0]
    assert _row_numbers(cand, 3).tolist() == [4000, 4001, 4002]
    # --optimize retrains over every row.
    rebuilt = optimize_ann(table, config, rebuild=True)
    assert rebuilt is not None and rebuilt.rows == 4003


def test_threshold_rule(tmp_path):
    import lancedb

    assert should_build(200_000) and not should_build(199_999)
    assert should_build(10, AnnConfig(min_rows=10)) and not should_build(9, AnnConfig(min_rows=10))
    vectors = np.concatenate(list(region_vectors(600, SPEC, dtype=np.float16)))
    db = lancedb.connect(str(tmp_path / "db"))
    table = db.create_table("regions", _rows_table(vectors), schema=regions_schema(SPEC.dim, "float16"))
    assert optimize_ann(table, AnnConfig(min_rows=601, num_partitions=4)) is None
    assert not has_ann_index(table)
    built = optimize_ann(table, AnnConfig(min_rows=600, num_partitions=4))
    assert built is not None and has_ann_index(table) and built.rows == 600


def test_prewarm_loads_an_index_within_the_byte_budget_only(corpus, tmp_path):
    import lancedb

    table, _, _ = corpus
    size = table.list_indices()[0].size_bytes
    assert size > 0
    assert prewarm_ann_index(table, size) == size
    assert prewarm_ann_index(table, size - 1) == 0  # too large for the budget: not loaded
    assert prewarm_ann_index(table, 0) == 0
    bare = lancedb.connect(str(tmp_path / "db")).create_table("regions", _rows_table(np.ones((4, SPEC.dim), np.float16)))
    assert prewarm_ann_index(bare, 1 << 40) == 0  # no vector index


def test_the_searcher_path_prewarms_each_new_index_once(tmp_path, monkeypatch):
    import lancedb
    from types import SimpleNamespace

    import resedis.index.ann_search as ann_module

    calls = []
    real = ann_module.prewarm_ann_index
    monkeypatch.setattr(ann_module, "prewarm_ann_index", lambda table, budget: calls.append(budget) or real(table, budget))
    vectors = np.concatenate(list(region_vectors(600, SPEC, dtype=np.float16)))
    table = lancedb.connect(str(tmp_path / "db")).create_table("regions", _rows_table(vectors[:500]))
    search = AnnSearch(SimpleNamespace(regions_table=table), AnnConfig(prewarm_max_bytes=1 << 30))
    assert not search.available() and calls == [] and search.prewarmed is None  # no index: nothing to load
    small = AnnConfig(min_rows=1, num_partitions=2, nprobes=2)
    build_ann_index(table, small)
    assert search.available() and search.available()
    first = table.list_indices()[0]
    assert calls == [1 << 30] and search.prewarmed == (first.index_uuid, first.size_bytes)
    table.add(_rows_table(vectors[500:], first_row=500))  # a new table version, the same index
    assert search.available() and calls == [1 << 30]
    build_ann_index(table, small)  # retrained: a new index, loaded again
    assert search.available() and len(calls) == 2
    assert search.prewarmed == (table.list_indices()[0].index_uuid, table.list_indices()[0].size_bytes) != (first.index_uuid, first.size_bytes)


def test_bad_input_is_refused(corpus):
    table, _, _ = corpus
    with pytest.raises(ResedisError, match="dimension"):
        ann_candidates(table, np.zeros((1, 7), np.float32), 10, config=CONFIG)
    with pytest.raises(ResedisError, match="k must be"):
        ann_candidates(table, np.zeros((1, SPEC.dim), np.float32), 0, config=CONFIG)
    with pytest.raises(ResedisError, match="index_type"):
        AnnConfig(index_type="LSH").validate()
    with pytest.raises(ResedisError, match="nprobes"):
        AnnConfig(nprobes=0).validate()


# ---------------------------------------------------------------- integration with the engine


def _hits(result):
    return [(h.image_id, tuple(round(v, 3) for v in h.box), h.score) for h in result.hits]


def test_searcher_uses_the_ann_index_and_rescores_exactly(synth_small, tiny_models, tmp_path, monkeypatch):
    from resedis.index import IndexConfig, build_index, open_index
    from resedis.search import Searcher

    spec = f"owlv2:{tiny_models['owlv2']}"
    db = tmp_path / "db"
    build_index(synth_small / "images", db, config=IndexConfig(model=spec, vector_dtype="float32"), progress=False)
    texts = ["a red circle", "the large blue square at the top", "a small green triangle"]
    exact = Searcher(db, use_ann=False)
    expected = [_hits(exact.search(t, top_k=10)) for t in texts]
    index = open_index(db)
    assert not has_ann_index(index.regions_table)
    # Every row a candidate: the ANN path must then give exactly the exact answer.
    everything = AnnConfig(min_rows=1, num_partitions=4, nprobes=4, min_candidates=100_000)
    build_ann_index(index.regions_table, everything)
    searcher = Searcher(db, ann=everything, encoder=exact.encoder)
    searcher.warm_up()  # what `resedis serve` does at start: ids and boxes, the vector index into LanceDB's cache
    assert searcher.ann.prewarmed is not None and searcher.ann.prewarmed[1] > 0
    assert searcher._corpus is not None and not searcher._corpus.vectors_loaded  # the ANN path never needs the matrix
    cold = Searcher(db, use_ann=False, encoder=exact.encoder)
    cold.warm_up()
    assert cold._corpus is not None and cold._corpus.vectors_loaded  # the exact path needs it at the first query
    for text, want in zip(texts, expected):
        got = _hits(searcher.search(text, top_k=10))
        assert [g[:2] for g in got] == [w[:2] for w in want]
        np.testing.assert_allclose([g[2] for g in got], [w[2] for w in want], rtol=1e-6)
    assert searcher.ann.queries_answered == len(texts)
    # The index was prewarmed when the Searcher found it, once (not per query).
    assert searcher.ann.prewarmed == (index.regions_table.list_indices()[0].index_uuid,
                                      index.regions_table.list_indices()[0].size_bytes)
    # The Searcher ranks each query's candidate rows only: the dense (N, Q) logits are not built.
    def dense(*args, **kwargs):
        raise AssertionError("the dense ANN logits were built for a plain search")

    monkeypatch.setattr(AnnSearch, "logits", dense)
    for text, want in zip(texts, expected):
        assert [g[:2] for g in _hits(searcher.search(text, top_k=10))] == [w[:2] for w in want]
    monkeypatch.undo()
    found = searcher.ann.candidates(searcher.corpus(), exact.encode(texts), 10)
    for (rows, logits), dense in zip(found, searcher.ann.logits(searcher.corpus(), exact.encode(texts), 10).T):
        assert len(rows) == len(searcher.corpus()) and np.all(np.diff(rows) > 0)  # every row, ascending (rank_rows' ties)
        np.testing.assert_array_equal(dense[rows], logits)
    # A narrow candidate set still returns exact scores, for a subset of the regions.
    narrow = Searcher(db, ann=AnnConfig(num_partitions=4, nprobes=1, min_candidates=5, candidate_factor=1), encoder=exact.encoder)
    from resedis.search import sigmoid

    corpus = exact.corpus()
    keys = [(corpus.image_ids[i], tuple(round(float(v), 3) for v in b)) for i, b in zip(corpus.region_image, corpus.boxes)]
    for text in texts:
        logits = corpus.matrix().astype(np.float32) @ exact.encode([text])[0]
        exact_scores: dict = {}  # (image, box) -> scores (random tiny boxes can coincide)
        for key, value in zip(keys, sigmoid(logits).tolist()):
            exact_scores.setdefault(key, []).append(value)
        for image_id, box, score in _hits(narrow.search(text, top_k=3)):
            assert min(abs(score - v) for v in exact_scores[(image_id, box)]) <= 1e-6 * score
    assert narrow.ann.queries_answered == len(texts)


def test_build_index_builds_the_ann_index_above_the_threshold(synth_small, tiny_models, tmp_path):
    from resedis.cli import main
    from resedis.index import IndexConfig, build_index, open_index

    spec = f"owlv2:{tiny_models['owlv2']}"
    low = tmp_path / "low"
    build_index(synth_small / "images", low, config=IndexConfig(model=spec, ann_min_rows=1), progress=False)
    status = ann_status(open_index(low).regions_table)
    assert status is not None and status["unindexed_rows"] == 0
    high = tmp_path / "high"
    build_index(synth_small / "images", high, config=IndexConfig(model=spec), progress=False)
    assert not has_ann_index(open_index(high).regions_table)  # default threshold: 200k regions
    assert main(["index", str(synth_small / "images"), "--db", str(high), "--optimize", "--quiet"]) == 0
    status = ann_status(open_index(high).regions_table)
    assert status is not None and status["indexed_rows"] == open_index(high).regions_table.count_rows()
