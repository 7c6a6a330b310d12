"""The compact formats' ANN column (resedis.ann_projection): its cosine is the logit
estimate ``s·(cos(Bᵀa, Bᵀq̂) + b)``, checked by a slow reference and through LanceDB; it
finds a cluster's top hits among few candidates where the legacy direction-only column
does not; an index written with the legacy column is still searched and appended to."""

from __future__ import annotations

import base64
import json
import math
import shutil

import numpy as np
import pyarrow as pa
import pytest

from resedis.ann_projection import (
    PROJECTION_KEY,
    AnnProjection,
    column_width,
    fit_projection,
    proj_dims,
    projection_from_json,
    projection_to_json,
)
from resedis.errors import ResedisError
from resedis.bench.synthetic import SyntheticSpec, exact_top_k, query_vectors, recall_at, region_vectors

TEXTS = ["a red circle", "the large blue square at the top", "a small green triangle", "two yellow stars"]


def _slow_estimate(basis: np.ndarray, v: np.ndarray, q: np.ndarray) -> float:
    """s·(cos(Bᵀa, Bᵀq̂) + b) component by component in plain Python."""
    a, c = [float(x) for x in v[:-1]], float(v[-1])
    s = math.sqrt(sum(x * x for x in a))
    pa_ = [sum(a[i] * float(basis[i, j]) for i in range(len(a))) for j in range(basis.shape[1])]
    pq = [sum(float(q[i]) * float(basis[i, j]) for i in range(len(a))) for j in range(basis.shape[1])]
    cos = sum(x * y for x, y in zip(pa_, pq)) / (math.sqrt(sum(x * x for x in pa_)) * math.sqrt(sum(y * y for y in pq)))
    return s * cos + c * float(q[-1])


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(0, 1, (n, dim)).astype(np.float32) * rng.lognormal(0, 0.4, (n, 1)).astype(np.float32)
    v[:, -1] = -0.5 * np.linalg.norm(v[:, :-1], axis=1)  # c = s·b with b = -0.5
    return v


def test_the_column_cosine_is_the_logit_estimate_by_a_slow_reference():
    v = _vectors(60, 21, seed=1)
    p = fit_projection(v, 4)
    rng = np.random.default_rng(2)
    q = np.concatenate([rng.normal(size=(3, 20)), np.ones((3, 1))], axis=1).astype(np.float32)
    q[:, :-1] /= np.linalg.norm(q[:, :-1], axis=1, keepdims=True)
    r, w = p.regions(v), p.queries(q)
    assert r.shape == (60, 6) == (60, p.width) and w.shape == (3, 6) and column_width(21) == 22
    np.testing.assert_allclose(np.linalg.norm(r, axis=1), p.norm, rtol=1e-5)  # every row on the sphere ‖r‖ = M
    np.testing.assert_allclose(w[:, -2:], [[1.0, 0.0]] * 3)  # the query's shift weight, no pad
    slow = np.array([[_slow_estimate(p.basis, v[i], q[j]) for j in range(3)] for i in range(60)])
    np.testing.assert_allclose(r @ w.T, slow, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(p.estimates(v, q), slow, rtol=1e-5, atol=1e-5)
    cos = (r @ w.T) / (np.linalg.norm(r, axis=1)[:, None] * np.linalg.norm(w, axis=1)[None, :])
    np.testing.assert_allclose(cos * p.norm * math.sqrt(2), slow, rtol=1e-4, atol=1e-4)  # the ranking LanceDB sees


def test_lancedb_ranks_the_stored_column_by_the_estimate(tmp_path):
    """A LanceDB cosine search of the float16 column (no index: every row) returns
    ``1 - cos(r, w)``, i.e. the estimate / (M·√2) up to float16 rounding, best first."""
    import lancedb

    v = _vectors(300, 33, seed=3)
    p = fit_projection(v, 8)
    col = p.regions(v).astype(np.float16)
    table = lancedb.connect(str(tmp_path)).create_table("t", pa.table({
        "row": pa.array(np.arange(300)),
        "proj": pa.FixedSizeListArray.from_arrays(pa.array(col.ravel(), pa.float16()), p.width),
    }))
    q = np.concatenate([v[17, :-1] / np.linalg.norm(v[17, :-1]), [1.0]]).astype(np.float32)
    got = table.search(p.queries(q[None])[0], vector_column_name="proj").distance_type("cosine").limit(300).to_arrow()
    est = p.estimates(v, q[None])[:, 0]
    rows = got["row"].to_numpy()
    np.testing.assert_allclose((1 - got["_distance"].to_numpy()) * p.norm * math.sqrt(2), est[rows], atol=0.02 * p.norm)
    assert rows[0] == int(np.argmax(est)) and sorted(rows.tolist()) == list(range(300))
    assert np.all(np.diff(est[rows]) <= 0.02 * p.norm)  # listed by decreasing estimate (float16 ties aside)


def test_a_row_longer_than_the_fitted_norm_gets_no_pad_and_a_lower_rank():
    v = _vectors(50, 11, seed=4)
    p = fit_projection(v, 3)
    longest = int(np.argmax(np.linalg.norm(v, axis=1)))
    long = v[longest : longest + 1] * 1.5  # longer than every fitted row: beyond M
    assert p.regions(v[longest : longest + 1])[0, -1] == pytest.approx(0.0, abs=1e-3 * p.norm)  # exactly M: no pad
    r = p.regions(long)[0]
    assert r[-1] == 0.0 and np.linalg.norm(r) > p.norm
    q = np.concatenate([long[0, :-1] / np.linalg.norm(long[0, :-1]), [0.0]])[None].astype(np.float32)
    w = p.queries(q)[0]
    cos = float(r @ w) / (np.linalg.norm(r) * np.linalg.norm(w))
    # The cosine is the estimate divided by ‖r‖ rather than M: shrunk by M / ‖r‖.
    np.testing.assert_allclose(cos * np.linalg.norm(w) * p.norm, p.estimates(long, q)[0, 0] * p.norm / np.linalg.norm(r), rtol=1e-4)


def test_the_legacy_layout_is_the_plain_projection():
    v = _vectors(40, 21, seed=5)
    basis = fit_projection(v, 4).basis
    legacy = AnnProjection(basis)
    assert legacy.legacy and legacy.width == 4
    np.testing.assert_allclose(legacy.regions(v), v[:, :-1] @ basis, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(legacy.queries(v[:2]), v[:2, :-1] @ basis, rtol=1e-5, atol=1e-5)


def _index_table(tmp_path, vectors: np.ndarray, projection: AnnProjection):
    import lancedb

    from resedis.index.columns import vector_columns
    from resedis.index.store import regions_schema

    n, dim = vectors.shape
    row = np.arange(n)
    cols = {
        "image_id": pa.array([f"img/{i:05d}.jpg" for i in row // 100], pa.string()),
        "region": pa.array((row % 100).astype(np.int32)),
        "box": pa.FixedSizeListArray.from_arrays(pa.array(np.tile([0, 0, 10, 10], n).astype(np.float32)), 4),
        "objectness": pa.array(np.zeros(n, np.float32)),
        **vector_columns(vectors, "int4", projection),
        "batch": pa.array(np.zeros(n, np.int64)),
    }
    schema = regions_schema(dim, "int4", projection.width)
    return lancedb.connect(str(tmp_path)).create_table("regions", pa.table(cols, schema=schema))


def test_few_candidates_hold_a_clusters_top_hits_where_the_legacy_column_misses(tmp_path):
    """OWL-like clustered vectors (16 clusters of ~1,250 regions): 100 candidates ranked by
    the estimate hold the exact top-10 (recall ≥ 0.95, through ``ann_candidates`` on a
    LanceDB table); ranked by direction alone (the legacy column) they hold a fraction."""
    from resedis.index.ann import ann_candidates

    spec = SyntheticSpec(dim=129, clusters=16, seed=7)
    v = np.concatenate(list(region_vectors(20_000, spec, dtype=np.float32)))
    q = query_vectors(12, spec, seed=3)
    truth = exact_top_k(v, q, 10)
    fitted = fit_projection(v[:5000], proj_dims(129))
    recall = {}
    for name, projection in (("estimate", fitted), ("legacy", AnnProjection(fitted.basis))):
        table = _index_table(tmp_path / name, v, projection)
        found = ann_candidates(table, q, 10, limit=100, columns=("image_id", "region"), projection=projection)
        top = np.array([[int(i[4:9]) * 100 + int(r) for i, r in zip(c.columns["image_id"][:10], c.columns["region"][:10])]
                        for c in found])
        recall[name] = recall_at(truth, top, 10)
    assert recall["estimate"] >= 0.95, recall
    assert recall["legacy"] <= 0.5, recall


def test_an_index_written_with_the_legacy_column_is_searched_and_appended(synth_small, owlv2_spec, encoder, tmp_path,
                                                                            monkeypatch):
    """An int4 index whose manifest holds a legacy projection (no ``mips_norm``, as
    written before the estimate column) keeps its 32-wide column when more images are
    added, and its ANN search still equals exact search."""
    from resedis.index import IndexConfig, build_index, open_index
    from resedis.index import columns
    from resedis.index.ann import AnnConfig, build_ann_index
    from resedis.search import Searcher

    images = sorted((synth_small / "images").iterdir())
    first = tmp_path / "images"
    first.mkdir()
    for path in images[:10]:
        shutil.copy(path, first / path.name)
    real_fit, real_width = columns.fit_projection, columns.column_width
    # What resedis wrote before the estimate column: a direction-only projection, 32 wide.
    monkeypatch.setattr(columns, "fit_projection", lambda rows, dims: AnnProjection(real_fit(rows, dims).basis))
    monkeypatch.setattr(columns, "column_width", proj_dims)
    db = tmp_path / "db"
    config = IndexConfig(model=owlv2_spec, vector_dtype="int4")
    build_index(first, db, config=config, encoder=encoder, progress=False)
    monkeypatch.setattr(columns, "fit_projection", real_fit)  # a current resedis appends to it
    monkeypatch.setattr(columns, "column_width", real_width)
    for path in images[10:]:
        shutil.copy(path, first / path.name)
    build_index(first, db, config=config, encoder=encoder, progress=False)

    record = json.loads((db / "resedis.json").read_text())[PROJECTION_KEY]
    assert "mips_norm" not in record
    index = open_index(db)
    dims = proj_dims(index.manifest.vector_dim)
    assert index.regions_table.schema.field("proj").type.list_size == dims
    assert index.images_table.count_rows() == len(images)
    everything = AnnConfig(min_rows=1, num_partitions=2, nprobes=2, min_candidates=100_000)
    build_ann_index(index.regions_table, everything)
    exact = Searcher(db, encoder=encoder, use_ann=False)
    searcher = Searcher(db, encoder=encoder, ann=everything)
    assert searcher.ann.projection().legacy
    for text in TEXTS:
        want, got = exact.search(text, top_k=8), searcher.search(text, top_k=8)
        assert [(h.image_id, h.box) for h in got.hits] == [(h.image_id, h.box) for h in want.hits]
        np.testing.assert_allclose([h.score for h in got.hits], [h.score for h in want.hits], rtol=1e-5)
    assert searcher.ann.queries_answered == len(TEXTS)


def test_fit_projection_centres_the_rows_and_records_the_largest_norm():
    """Far from the origin, the principal directions are those of the spread, not of the
    mean; M is the largest row norm (below 1 too); zero rows fit M = 1 and project to a
    finite column; bad shapes are refused by name."""
    from resedis.ann_projection import projection_from_json, projection_to_json
    from resedis.errors import ResedisError

    rng = np.random.default_rng(11)
    spread = np.zeros((400, 6))
    spread[:, 2] = rng.normal(0, 3, 400)  # the one direction of spread
    spread[:, :5] += rng.normal(0, 0.01, (400, 5))
    a = spread + np.array([50.0, 0, 0, 0, 0, 0])  # a large mean along axis 0
    v = np.concatenate([a[:, :5], rng.normal(0, 1, (400, 1))], axis=1).astype(np.float32) * 0.001
    p = fit_projection(v, 1)
    assert abs(p.basis[2, 0]) > 0.99  # the spread axis, not the mean's
    assert p.norm == pytest.approx(float(np.linalg.norm(v.astype(np.float64), axis=1).max()), rel=1e-9) and p.norm < 1
    zero = fit_projection(np.zeros((3, 4), np.float32), 2)
    assert zero.norm == 1.0
    col = zero.regions(np.array([[0, 0, 0, 0.5]], np.float32))
    np.testing.assert_allclose(col, [[0, 0, 0.5, np.sqrt(1 - 0.25)]], atol=1e-6)  # no direction: s·û = 0
    np.testing.assert_array_equal(zero.queries(np.array([[0, 0, 0, 1.0]], np.float32)), [[0, 0, 1, 0]])
    assert fit_projection(np.ones((1, 2), np.float32), 4).basis.shape == (1, 1)  # N = 1 and D = 2 are enough
    for bad in (np.zeros(5), np.zeros((4, 1)), np.zeros((0, 5))):
        with pytest.raises(ResedisError) as err:
            fit_projection(bad)
        assert str(err.value) == f"fit_projection: vectors must be (N, D) with N >= 1 and D >= 2, got shape {bad.shape}"
    record = projection_to_json(p, 400)
    assert sorted(record) == ["fitted_rows", "float32_le_base64", "mips_norm", "shape"]
    assert record["shape"] == [5, 1] and record["fitted_rows"] == 400 and record["mips_norm"] == p.norm
    legacy = projection_to_json(AnnProjection(p.basis), 7)
    assert sorted(legacy) == ["fitted_rows", "float32_le_base64", "shape"]
    assert projection_from_json(legacy, 6).legacy


def test_projection_is_the_leading_principal_subspace_and_round_trips():
    """fit_projection spans the top principal directions (checked against numpy's SVD), its
    manifest record round-trips exactly, and a damaged record is refused by name."""
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.standard_normal((20, 20)))[0]
    a = (rng.standard_normal((500, 20)) * np.linspace(5, 0.1, 20)) @ basis.T  # known spectrum
    v = np.concatenate([a, rng.normal(size=(500, 1))], axis=1).astype(np.float32)
    p = fit_projection(v, 4)
    _, _, vt = np.linalg.svd(a - a.mean(0), full_matrices=False)
    top = vt[:4].T  # reference: the 4 leading right singular vectors
    np.testing.assert_allclose(np.abs(np.linalg.svd(top.T @ p.basis)[1]), 1.0, atol=1e-4)  # same subspace
    assert p.norm == pytest.approx(np.linalg.norm(v.astype(np.float64), axis=1).max(), rel=1e-6)
    record = projection_to_json(p, 500)
    back = projection_from_json(json.loads(json.dumps(record)), 21)
    np.testing.assert_array_equal(back.basis, p.basis)
    assert back.norm == p.norm and back.width == 6
    with pytest.raises(ResedisError, match="ANN projection .'ann_projection'. is damaged"):
        projection_from_json({**record, "shape": [19, 4]}, 21)
    with pytest.raises(ResedisError, match="is damaged .mips_norm -1.0."):
        projection_from_json({**record, "mips_norm": -1.0}, 21)
    base = ("manifest: the ANN projection ('ann_projection') is damaged ({}); the ANN index of this compact "
            "index cannot be searched. Fix: rebuild the index (or search with use_ann=False)")
    for change, reason in (
        ({"mips_norm": 0}, "mips_norm 0"),
        ({"mips_norm": float("nan")}, "mips_norm nan"),
        ({"mips_norm": "12"}, "mips_norm '12'"),
        ({"shape": [20]}, "shape (20,) for 21-d vectors"),
        ({"shape": [20, 5]}, "shape (20, 5) for 21-d vectors"),
        ({"float32_le_base64": base64.b64encode(np.full(80, np.inf, "<f4").tobytes()).decode()}, "shape (20, 4) for 21-d vectors"),
    ):
        with pytest.raises(ResedisError) as err:
            projection_from_json({**record, **change}, 21)
        assert str(err.value) == base.format(reason)
    for missing in ("shape", "float32_le_base64"):
        with pytest.raises(ResedisError, match=f"is damaged \\('{missing}'\\)"):
            projection_from_json({k: v for k, v in record.items() if k != missing}, 21, "db/resedis.json")
    with pytest.raises(ResedisError, match="^db/resedis.json: the ANN projection"):
        projection_from_json({**record, "shape": None}, 21, "db/resedis.json")
    back = projection_from_json({**record, "mips_norm": 3}, 21)
    assert back.norm == 3.0 and isinstance(back.norm, float) and back.basis.dtype == np.float32
    assert projection_from_json({**record, "mips_norm": 0.5}, 21).norm == 0.5  # any positive norm
