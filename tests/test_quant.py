"""Compact region storage (resedis.quant): codec, the logit error bound on real encoder
outputs, indexes in every storage format, and the ANN path that never loads the matrix."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from resedis import quant
from resedis.ann_projection import PROJECTION_KEY, proj_dims, projection_from_json
from resedis.errors import IndexMismatchError, ResedisError

TEXTS = ["a red circle", "the large blue square at the top", "a small green triangle", "two yellow stars"]


def _naive_logits(codes_int, step, bias, queries):
    """Slow reference: decode every component one by one, then the plain dot product."""
    n, e = codes_int.shape
    out = np.zeros((n, queries.shape[0]), np.float64)
    for i in range(n):
        a = [float(step[i]) * int(c) for c in codes_int[i]]
        for j, q in enumerate(queries):
            out[i, j] = sum(x * float(y) for x, y in zip(a, q[:e])) + float(bias[i]) * float(q[e])
    return out


@pytest.mark.parametrize("storage", quant.COMPACT_FORMATS)
@pytest.mark.parametrize("dim", [9, 10, 65])  # odd and even quantised widths
def test_codec_rounds_to_nearest_and_matches_a_slow_reference(storage, dim):
    rng = np.random.default_rng(dim)
    v = rng.normal(0, 1, (40, dim)).astype(np.float32) * rng.uniform(0.1, 10, (40, 1)).astype(np.float32)
    v[3] = 0.0  # a zero row decodes to zeros
    codes, step, bias = quant.quantize(v, storage)
    assert codes.shape == (40, quant.code_width(storage, dim))
    assert codes.dtype == (np.int8 if storage == "int8" else np.uint8)
    ints = quant.int_codes(codes, storage, dim)
    assert np.abs(ints).max() <= quant.LEVELS[storage]
    back = quant.dequantize(codes, step, bias, storage, dim)
    np.testing.assert_array_equal(back[:, -1], v[:, -1])  # the bias is kept exactly
    assert np.all(np.abs(back[:, :-1] - v[:, :-1]) <= step[:, None] / 2 * (1 + 1e-6))
    np.testing.assert_array_equal(back[3], 0.0)
    # The largest component lands on the grid's end: step = max|a| / L exactly.
    np.testing.assert_allclose(step, np.abs(v[:, :-1]).max(axis=1) / quant.LEVELS[storage], rtol=1e-6)
    q = rng.normal(0, 1, (3, dim)).astype(np.float32)
    q[:, -1] = 1.0
    got = quant.compact_logits(codes, step, bias, q, storage, dim, chunk=7)  # several chunks
    np.testing.assert_allclose(got, _naive_logits(ints, step, bias, q), rtol=1e-5, atol=1e-5)


def test_nibble_packing_round_trips_every_value():
    codes = np.array([[-8, 7, 0, -1, 3], [7, -8, -7, 6, -2]], np.int8)
    packed = quant.pack_nibbles(codes)
    assert packed.shape == (2, 3) and packed.dtype == np.uint8
    assert packed[0, 0] == ((-8 + 8) | ((7 + 8) << 4))  # low nibble = even column, value + 8
    np.testing.assert_array_equal(quant.unpack_nibbles(packed, 5), codes)


def test_bound_is_the_hand_computed_worst_case():
    # a = [0.7, -0.3], L = 7 -> step 0.1; codes [7, -3]; q̂ = [0.6, -0.8] -> bound 0.05 * 1.4
    codes, step, bias = quant.quantize(np.array([[0.7, -0.3, 2.0]], np.float32), "int4")
    np.testing.assert_allclose(step, [0.1], rtol=1e-6)
    np.testing.assert_allclose(quant.logit_error_bound(step, np.array([[0.6, -0.8, 1.0]])), [[0.07]], rtol=1e-6)
    # A component exactly halfway between grid points reaches the per-component bound.
    v = np.array([[0.7, 0.05, 0.0]], np.float32)  # 0.05 / 0.1 = 0.5 -> rounds to 0 (half to even)
    codes, step, bias = quant.quantize(v, "int4")
    err = abs(float(quant.dequantize(codes, step, bias, "int4", 3)[0, 1]) - 0.05)
    np.testing.assert_allclose(err, float(step[0]) / 2, rtol=1e-5)


def test_refusals_are_clear():
    with pytest.raises(ResedisError, match="storage must be one of float32, float16, int8, int4.*got 'int3'"):
        quant.check_storage("int3")
    with pytest.raises(ResedisError, match="quantize: storage must be one of"):
        quant.quantize(np.zeros((2, 3)), "float16")
    with pytest.raises(ResedisError, match=r"\(N, D\) with D >= 2"):
        quant.quantize(np.zeros(3), "int8")


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (64 + 8 * i, 80, 3), dtype=np.uint8)) for i in range(n)]


def _assert_bound_on(encoder, images, texts):
    regions = encoder.encode_images(images, max_regions=50)
    vectors = np.concatenate([r.vectors for r in regions]).astype(np.float32)
    queries = np.asarray(encoder.encode_texts(texts), np.float32)
    exact = vectors.astype(np.float64) @ queries.astype(np.float64).T
    for storage in quant.COMPACT_FORMATS:
        codes, step, bias = quant.quantize(vectors, storage)
        got = quant.compact_logits(codes, step, bias, queries, storage, vectors.shape[1])
        bound = quant.logit_error_bound(step, queries)
        err = np.abs(got - exact)
        assert np.all(err <= bound + 1e-5 * (1 + np.abs(exact))), f"{storage}: {float((err - bound).max())}"
        assert err.max() > 0  # the codes really are lossy: the bound is what is being tested
        # The unit query bounds ‖q̂‖₁ by sqrt(E): the documented closed form holds too.
        assert np.all(bound <= 0.5 * step[:, None] * np.sqrt(vectors.shape[1] - 1) * (1 + 1e-5))


def test_bound_holds_on_the_tiny_owlv2_encoder(encoder):
    _assert_bound_on(encoder, _images(3), TEXTS)


def test_bound_holds_on_the_bundled_demo_model():
    from resedis.models import load_model

    _assert_bound_on(load_model("demo", "cpu"), _images(2, seed=1), TEXTS)


@pytest.fixture(scope="module")
def indexes(synth_small, owlv2_spec, tmp_path_factory):
    """One index per storage format of the same images (float32 is the reference)."""
    from resedis.index import IndexConfig, build_index

    root = tmp_path_factory.mktemp("storage")
    out = {}
    for storage in quant.STORAGE_FORMATS:
        out[storage] = root / storage
        build_index(synth_small / "images", out[storage], config=IndexConfig(model=owlv2_spec, vector_dtype=storage), progress=False)
    return out


def test_the_manifest_and_table_record_the_storage(indexes):
    from resedis.index import open_index

    for storage, db in indexes.items():
        index = open_index(db)
        assert json.loads((db / "resedis.json").read_text())["vector_dtype"] == storage
        assert index.manifest.storage == storage and index.stats()["vector_dtype"] == storage
        names = index.regions_table.schema.names
        if quant.is_compact(storage):
            assert {"codes", "step", "bias", "proj"} <= set(names) and "vector" not in names
        else:
            assert "vector" in names and "codes" not in names
        # A compact index's ANN projection: fitted on its first batch, recorded before any row used it.
        record = json.loads((db / "resedis.json").read_text()).get(PROJECTION_KEY)
        if quant.is_compact(storage):
            dim = index.manifest.vector_dim
            projection = projection_from_json(record, dim)
            basis = projection.basis
            assert basis.shape == (dim - 1, proj_dims(dim)) and record["fitted_rows"] > 0
            assert not projection.legacy and record["mips_norm"] == projection.norm > 0
            np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-5)
            proj = np.asarray(index.regions_table.to_arrow()["proj"].to_pylist()[:3], np.float32)
            assert proj.shape == (3, proj_dims(dim) + 2) and np.abs(proj).max() > 0
        else:
            assert record is None


@pytest.mark.parametrize("matrix_dtype", ["float32", "stored"])
@pytest.mark.parametrize("storage", quant.COMPACT_FORMATS)
def test_compact_index_scores_within_the_bound_of_float32(indexes, encoder, storage, matrix_dtype):
    from resedis.search import Searcher

    ref = Searcher(indexes["float32"], encoder=encoder, use_ann=False)
    got = Searcher(indexes[storage], encoder=encoder, use_ann=False, matrix_dtype=matrix_dtype)
    queries = got.encode(TEXTS)
    want = ref.corpus().logits(queries)
    corpus = got.corpus()
    logits = corpus.logits(queries)
    assert corpus.storage == ("float32" if matrix_dtype == "float32" else storage)
    _, step, _ = quant.quantize(ref.corpus().matrix(), storage)
    bound = quant.logit_error_bound(step, queries)
    assert np.all(np.abs(logits - want) <= bound + 1e-5 * (1 + np.abs(want)))
    # Hits come out as for any index: scores are sigmoid(logit) of a region.
    result = got.search(TEXTS[0], top_k=5)
    assert len(result.hits) == 5 and all(0.0 < h.score < 1.0 for h in result.hits)


def test_an_existing_index_keeps_its_storage_and_refuses_another(indexes, synth_small, owlv2_spec):
    from resedis.cli import main
    from resedis.index import IndexConfig, build_index

    with pytest.raises(IndexMismatchError, match="vector_dtype='int4'.*vector_dtype='int8' was asked for"):
        build_index(synth_small / "images", indexes["int4"], config=IndexConfig(model=owlv2_spec, vector_dtype="int8"), progress=False)
    report = build_index(synth_small / "images", indexes["int4"], config=IndexConfig(model=owlv2_spec), progress=False)
    assert report.unchanged > 0 and report.added == 0
    with pytest.raises(ResedisError, match="storage must be one of"):
        IndexConfig(vector_dtype="bfloat16").validate()
    with pytest.raises(SystemExit):
        main(["index", str(synth_small / "images"), "--db", "/nonexistent/x", "--storage", "int3"])


def test_a_manifest_with_an_unknown_storage_is_refused(indexes, tmp_path):
    from resedis.index.manifest import Manifest

    data = json.loads((indexes["float16"] / "resedis.json").read_text())
    data["vector_dtype"] = "int2"
    with pytest.raises(ResedisError, match="'vector_dtype' holds 'int2'.*region storage format.*newer resedis"):
        Manifest.from_json(data, "x/resedis.json")


def test_an_old_manifest_opens_as_float16(indexes, encoder):
    """An index written before storage formats existed (its manifest as then) searches as before."""
    from resedis.index import open_index
    from resedis.search import Searcher

    index = open_index(indexes["float16"])
    assert index.manifest.storage == "float16"
    result = Searcher(index, encoder=encoder, use_ann=False).search(TEXTS[1], top_k=3)
    assert len(result.hits) == 3


@pytest.mark.parametrize("storage", ["float16", "int4"])
def test_the_ann_path_never_loads_the_region_matrix(indexes, encoder, storage, tmp_path, monkeypatch):
    import shutil

    from resedis.index.ann import AnnConfig, build_ann_index
    from resedis.index import open_index
    from resedis.search import Searcher
    from resedis import search_corpus

    db = tmp_path / storage
    shutil.copytree(indexes[storage], db)
    everything = AnnConfig(min_rows=1, num_partitions=2, nprobes=2, min_candidates=100_000)
    build_ann_index(open_index(db).regions_table, everything)
    exact = Searcher(db, encoder=encoder, use_ann=False, matrix_dtype="stored")
    expected = [exact.search(t, top_k=8) for t in TEXTS]

    loads = []
    real_load = search_corpus.Corpus.load

    def spy(self):
        loads.append(len(self))
        real_load(self)

    monkeypatch.setattr(search_corpus.Corpus, "load", spy)
    searcher = Searcher(db, encoder=encoder, ann=everything)
    for text, want in zip(TEXTS, expected):
        got = searcher.search(text, top_k=8)
        assert [(h.image_id, h.box) for h in got.hits] == [(h.image_id, h.box) for h in want.hits]
        np.testing.assert_allclose([h.score for h in got.hits], [h.score for h in want.hits], rtol=1e-5)
    assert searcher.ann.queries_answered == len(TEXTS)
    assert loads == [] and not searcher.corpus().vectors_loaded
    # The exact path does load it (the spy sees it), once.
    Searcher(db, encoder=encoder, use_ann=False).search(TEXTS[0])
    assert len(loads) == 1


@pytest.mark.parametrize("storage", quant.STORAGE_FORMATS)
def test_verify_checksums_cover_every_storage_format(indexes, storage, tmp_path):
    """Checksums are written over the stored columns of each format (codes, step, bias and
    the ANN column of a compact one): a clean index verifies, and one step value changed by
    its lowest bit — still a valid float — is a checksum mismatch of that image only."""
    import shutil

    import lancedb

    from resedis.index.verify import verify_index

    db = tmp_path / storage
    shutil.copytree(indexes[storage], db)
    report = verify_index(db)
    assert report.ok, report.text()
    assert report.counts["checksummed"] == report.counts["images"] > 0
    table = lancedb.connect(str(db)).open_table("regions")
    victim = table.to_arrow()["image_id"][0].as_py()
    where = f"image_id = '{victim}' AND region = 0"
    row = table.search().where(where).limit(None).to_arrow()
    if quant.is_compact(storage):
        step = np.asarray([row["step"][0].as_py()], np.float32)
        step.view(np.uint32)[0] ^= 1
        table.update(where=where, values={"step": float(step[0])})
    else:
        vector = np.asarray(row["vector"][0].as_py(), np.float16 if storage == "float16" else np.float32)
        vector.view(np.uint16 if storage == "float16" else np.uint32)[0] ^= 1
        table.update(where=where, values={"vector": vector.tolist()})
    damaged = verify_index(db)
    assert {p.kind for p in damaged.errors} == {"checksum-mismatch"} and damaged.damaged_images == {victim}


@pytest.mark.parametrize("storage", ["float16", "int4"])
def test_filters_and_by_example_on_the_lazy_ann_corpus(indexes, encoder, storage, tmp_path):
    """On the ANN path a selective filter's rows are scored exactly from the lazily read
    matrix (the exact path's hits), a wider one through widened candidates (every hit
    allowed, with its exact score); a query by example reads its region's vector (decoded
    codes) from a corpus whose matrix was not loaded."""
    import shutil

    from resedis.by_example import ByExample, indexed_example
    from resedis.filters import Filters
    from resedis.index import open_index
    from resedis.index.ann import AnnConfig, build_ann_index
    from resedis.search import Searcher
    from resedis.search_corpus import load_corpus

    db = tmp_path / storage
    shutil.copytree(indexes[storage], db)
    exact = Searcher(db, encoder=encoder, use_ann=False, matrix_dtype="stored", nms_iou=1.0)
    corpus = exact.corpus()
    ids = list(corpus.image_ids)
    one = int((corpus.region_image == 0).sum())  # regions of the first image
    config = AnnConfig(min_rows=1, num_partitions=2, nprobes=1, min_candidates=one, candidate_factor=1)
    build_ann_index(open_index(db).regions_table, config)
    ann = Searcher(db, encoder=encoder, ann=config, nms_iou=1.0)
    for text in TEXTS[:2]:
        everything = {(h.image_id, h.box): h.score for h in exact.search(text, top_k=len(corpus)).hits}
        selective = Filters(image_ids=(ids[0],))
        got = ann.search(text, top_k=5, filters=selective).hits
        want = exact.search(text, top_k=5, filters=selective).hits
        assert got and [(h.image_id, h.box) for h in got] == [(h.image_id, h.box) for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], rtol=1e-5)
        half = set(ids[: len(ids) // 2])
        got = ann.search(text, top_k=one + 3, filters=Filters(image_ids=tuple(half))).hits
        assert len(got) == one + 3 and {h.image_id for h in got} <= half
        np.testing.assert_allclose([h.score for h in got], [everything[h.image_id, h.box] for h in got], rtol=1e-5)
    assert ann.ann.queries_answered == 4
    lazy = load_corpus(open_index(db), "stored", lazy=True)
    assert not lazy.vectors_loaded
    example = indexed_example(lazy, ByExample(image_id=ids[1]))
    reference = indexed_example(corpus, ByExample(image_id=ids[1]))
    np.testing.assert_array_equal(example.vector, reference.vector)
    assert example.vector.shape == (corpus.dim,) and abs(float(np.linalg.norm(example.vector[:-1])) - 1) < 1e-5


def test_one_off_search_of_a_compact_index_reads_its_codes_from_the_sidecar(indexes, tmp_path):
    """The one-off search serves an int4 index (codes, step and bias in the sidecar) with
    the engine's hits: first from the tables (writing the sidecar), then from the sidecar."""
    import shutil

    from resedis.pipelines.base import PipelineConfig
    from resedis.query import QueryEngine, QueryRequest
    from resedis.search_oneoff import OneOffInfo, search_once

    db = tmp_path / "int4"
    shutil.copytree(indexes["int4"], db)
    want = QueryEngine(db, PipelineConfig(device="cpu", matrix_dtype="stored")).run(
        QueryRequest(TEXTS[0], pipeline="owl", top_k=10)).result.hits
    for source in ("lance", "sidecar"):
        info = OneOffInfo()
        got = search_once(db, QueryRequest(TEXTS[0], pipeline="owl", top_k=10), PipelineConfig(device="cpu"),
                          info=info).result.hits
        assert info.path == "fast" and info.regions == source
        assert [(h.image_id, h.box, h.present) for h in got] == [(h.image_id, h.box, h.present) for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)


@pytest.mark.parametrize("storage", quant.STORAGE_FORMATS)
def test_a_lazy_corpus_reads_only_the_rows_asked(indexes, storage):
    """``row_logits`` / ``row_vectors`` of a lazy corpus read those rows by table offset
    (any order, repeats, none) and give the loaded corpus's numbers, leaving the matrix
    unread (compositional search scores its chosen images' regions this way)."""
    from resedis.index import open_index
    from resedis.search_corpus import load_corpus

    full = load_corpus(open_index(indexes[storage]), "stored")
    lazy = load_corpus(open_index(indexes[storage]), "stored", lazy=True)
    rng = np.random.default_rng(5)
    rows = np.concatenate([rng.choice(len(full), 40, replace=False)[::-1], [3, 3, len(full) - 1, 0]])
    queries = rng.standard_normal((3, full.dim)).astype(np.float32)
    np.testing.assert_array_equal(lazy.row_logits(rows, queries), full.row_logits(rows, queries))
    np.testing.assert_array_equal(lazy.row_vectors(rows), full.row_vectors(rows))
    assert lazy.row_logits(np.zeros(0, np.int64), queries).shape == (0, 3)
    assert not lazy.vectors_loaded


def test_compact_candidates_grow_with_the_table_only_for_the_legacy_column():
    """A compact table's candidates: 200 (or 10 × k) for the current ANN column (a logit
    estimate); for the legacy direction-only column, 0.002 × rows when that is more (1M
    rows: 2,000, the figure measured in docs/benchmarks.md); the share is validated."""
    from resedis.index.ann import AnnConfig

    config = AnnConfig()
    assert config.candidates_for(10) == 500 and config.compact_candidates_for(10, 10_000_000) == 200
    assert config.compact_candidates_for(100, 10_000_000) == 1_000
    assert AnnConfig(min_candidates=700).compact_candidates_for(10, 10_000_000) == 700  # an explicit value holds
    # Probes: a fifth of the partitions (at least 8) for float; for a compact index's
    # estimate column a 32nd (at least 48; 10M rows: 1,581 partitions -> 49 probes).
    assert [config.nprobes_for(p) for p in (20, 500, 1581)] == [8, 100, 316]
    assert [config.nprobes_for(p, compact=True) for p in (20, 500, 1581, 4096)] == [20, 48, 49, 128]
    assert AnnConfig(nprobes=7).nprobes_for(1581, compact=True) == 7
    assert config.compact_candidates_for(10, 100_000, legacy=True) == 500
    assert config.compact_candidates_for(10, 1_000_000, legacy=True) == 2_000
    assert config.compact_candidates_for(10, 10_000_000, legacy=True) == 20_000
    assert AnnConfig(compact_candidate_share=0.0).compact_candidates_for(100, 10_000_000, legacy=True) == 1_000
    with pytest.raises(ResedisError, match="compact_candidate_share must be in"):
        AnnConfig(compact_candidate_share=1.5).validate()


def test_index_agreement_compares_two_indexes_of_the_same_images(indexes, encoder):
    """An index against itself agrees fully; float32 against float16 keeps every hit's score
    within float16 rounding; the storage names and bytes per image are reported."""
    from resedis.bench.storage import index_agreement

    same = index_agreement(indexes["float16"], indexes["float16"], TEXTS, top_k=5, encoder=encoder)
    assert same["top1_identical"] == same["topk_identical"] == same["topk_same_set"] == 1.0
    assert same["max_score_diff"] == 0.0 and same["queries"] == len(TEXTS)
    other = index_agreement(indexes["float16"], indexes["int4"], TEXTS, top_k=5, encoder=encoder)
    assert other["reference_storage"] == "float16" and other["other_storage"] == "int4"
    assert other["reference_bytes_per_image"] > 0 and other["other_bytes_per_image"] > 0
    assert 0.0 <= other["topk_identical"] <= other["topk_same_set"] <= 1.0 and other["max_score_diff"] < 1.0
