"""resedis.search_corpus on a hand-written index, no model (from the mutation run, issue 16;
docs/testing.md): an index whose tables are written row by row — two images, an orphan
region of an interrupted batch, a box with no visible area, impossible boxes — and every
field of the loaded Corpus compared with the rows written; the region matrix against a
float64 product; the messages (the ``matrix_dtype`` error, the damage warning naming
verify and repair) whole."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pytest

from resedis.errors import ResedisError
from resedis.index.manifest import Manifest
from resedis.index.store import Index, images_schema, regions_schema
from resedis.search_corpus import Corpus, check_matrix_dtype, load_corpus

DIM = 5  # != the number of queries below, so a transposed shape cannot pass
SIZES = {"a.jpg": (100, 80), "b.jpg": (60, 120)}


def table(schema: pa.Schema, columns: dict) -> pa.Table:
    """Rows of ``schema`` from ``columns``; a nullable field not given is null."""
    n = len(next(iter(columns.values())))
    return pa.table({f.name: pa.array(columns[f.name], f.type) if f.name in columns else pa.nulls(n, f.type)
                     for f in schema}, schema=schema)


def hand_index(path, regions: list[tuple[str, int, tuple, list]], dtype: str = "float16", images=("a.jpg", "b.jpg")) -> Index:
    """An index whose images (batch 0) are ``images`` and whose region rows are
    ``(image_id, batch, box, vector)``, written in that order."""
    manifest = Manifest(model="owlv2:hand-written", vector_dim=DIM, vector_dtype=dtype, preprocessing={},
                        root=str(path), max_regions=10, nms_iou=0.5)
    index = Index(path, manifest, create=True)
    if images:
        index.images_table.add(table(images_schema(), {
            "image_id": list(images), "root": [str(path)] * len(images), "path": [f"/photos/{i}" for i in images],
            "sha256": ["0" * 64] * len(images), "width": [SIZES[i][0] for i in images],
            "height": [SIZES[i][1] for i in images], "mtime_ns": [0] * len(images), "size_bytes": [1] * len(images),
            "n_regions": [sum(r[0] == i for r in regions) for i in images], "batch": [0] * len(images)}))
    if regions:
        index.regions_table.add(table(regions_schema(DIM, dtype), {
            "image_id": [r[0] for r in regions], "region": list(range(len(regions))),
            "box": [list(r[2]) for r in regions], "objectness": [0.0] * len(regions),
            "vector": [r[3] for r in regions], "batch": [r[1] for r in regions]}))
    return index


def vec(*head) -> list[float]:
    return (list(head) + [0.25] * DIM)[:DIM]


# (image, batch, box, vector): regions 2 (batch 7: no images row) is an orphan; region 4's
# box lies on the image's edge (no visible area)
ROWS = [
    ("a.jpg", 0, (10, 10, 50, 40), vec(1.0, 2.0)),
    ("b.jpg", 0, (0, 0, 30, 30), vec(-1.5, 0.5)),
    ("a.jpg", 7, (5, 5, 20, 20), vec(9.0, 9.0)),
    ("a.jpg", 0, (20, 20, 60, 70), vec(0.5, -3.0)),
    ("b.jpg", 0, (60, 0, 60, 10), vec(2.0, 2.0)),
]
KEPT = [0, 1, 3, 4]


def test_load_corpus_keeps_committed_rows_in_order(tmp_path, caplog):
    index = hand_index(tmp_path / "db", ROWS)
    with caplog.at_level(logging.INFO, logger="resedis.search_corpus"):
        corpus = load_corpus(index)
    assert corpus.version == index.version()
    assert corpus.image_ids == ["a.jpg", "b.jpg"] and corpus.paths == ["/photos/a.jpg", "/photos/b.jpg"]
    assert len(corpus) == 4 and corpus.region_image.tolist() == [0, 1, 0, 1] and corpus.region_image.dtype == np.int64
    assert corpus.boxes.dtype == np.float32 and corpus.boxes.tolist() == [list(map(float, ROWS[i][2])) for i in KEPT]
    assert corpus.vectors.dtype == np.float16  # as stored, until the first exact product
    assert np.array_equal(corpus.vectors, np.array([ROWS[i][3] for i in KEPT], np.float16))
    assert corpus.vectors.flags.c_contiguous
    assert corpus.hidden.tolist() == [False, False, False, True]
    assert corpus.image_sizes.dtype == np.float64 and corpus.image_sizes.tolist() == [[100, 80], [60, 120]]
    assert corpus.matrix_dtype == "float32"
    said = [r.getMessage() for r in caplog.records]
    assert "1 of 4 regions have no visible area in their image and are never returned" in said
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # nothing damaged


def test_float32_index_and_stored_mode(tmp_path):
    index = hand_index(tmp_path / "db", ROWS[:2], dtype="float32", images=("a.jpg", "b.jpg"))
    corpus = load_corpus(index, "stored")
    assert corpus.matrix_dtype == "stored" and corpus.vectors.dtype == np.float32
    assert np.array_equal(corpus.vectors, np.array([ROWS[0][3], ROWS[1][3]], np.float32))
    assert corpus.hidden.tolist() == [False, False]


def test_an_empty_index_loads_as_an_empty_corpus(tmp_path):
    corpus = load_corpus(hand_index(tmp_path / "db", [], images=()))
    assert len(corpus) == 0 and corpus.image_ids == [] and corpus.vectors.shape == (0, DIM)
    assert corpus.image_sizes.shape == (0, 2) and corpus.hidden.shape == (0,)
    assert corpus.logits(np.ones((3, DIM), np.float32)).shape == (0, 3)


def test_damaged_regions_are_hidden_and_said_once_with_verify_and_repair(tmp_path, caplog):
    # two visible boxes reaching far outside image a (impossible), one sane region in b
    rows = [("a.jpg", 0, (0, 0, 1e9, 10), vec(1.0)), ("b.jpg", 0, (0, 0, 30, 30), vec(2.0)),
            ("a.jpg", 0, (10, 10, 20, 5e8), vec(3.0))]
    index = hand_index(tmp_path / "db", rows)
    with caplog.at_level(logging.INFO, logger="resedis.search_corpus"):
        corpus = load_corpus(index)
    assert corpus.hidden.tolist() == [True, False, True]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    loc = index.location
    assert warnings == [
        f"{loc}: 2 regions of 1 images hold non-finite values or impossible boxes (the index is damaged) and are "
        f"left out of every answer; see: resedis verify --db {loc}, then run: resedis repair --db {loc}"
    ]


def test_region_matrix_conversion_and_logits(tmp_path, caplog):
    rng = np.random.default_rng(3)
    rows = [("a.jpg" if i % 2 else "b.jpg", 0, (1, 1, 20, 20), rng.normal(size=DIM).astype(np.float16).tolist())
            for i in range(7)]
    queries = rng.normal(size=(3, DIM)).astype(np.float32)
    index = hand_index(tmp_path / "db", rows)
    stored = np.array([r[3] for r in rows], np.float16)
    reference = stored.astype(np.float64) @ queries.astype(np.float64).T
    fast, kept = load_corpus(index, "float32"), load_corpus(index, "stored")
    with caplog.at_level(logging.INFO, logger="resedis.search_corpus"):
        matrix = fast.matrix()
    assert matrix.dtype == np.float32 and fast.vectors is matrix and np.array_equal(matrix, stored.astype(np.float32))
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith(f"region matrix ({len(rows)}, {DIM})")
    assert said[0].endswith("-> float32 (0.00 GB), once per loaded index")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="resedis.search_corpus"):
        assert fast.matrix() is matrix and not caplog.records  # converted once
        assert kept.matrix().dtype == np.float16 and kept.vectors.dtype == np.float16  # "stored": never converted
    # alternate two query sets, so that a row left unwritten (np.empty recycles the last
    # freed buffer of that size) holds the other set's numbers, not by chance the right ones
    for corpus in (fast, kept, fast, kept):
        for q, ref in ((queries, reference), (-2 * queries, -2 * reference)):
            logits = corpus.logits(q.astype(np.float64))
            assert logits.dtype == np.float32 and logits.shape == (len(rows), 3)
            assert np.array_equal(logits, matrix @ q.T)  # the float32 product, bit for bit
            assert np.allclose(logits, ref, rtol=1e-5, atol=1e-6)


def test_corpus_record_checks():
    def corpus(hidden=None, matrix_dtype="float32"):
        return Corpus(version=(1, 1), image_ids=["a"], paths=["/a"], region_image=np.zeros(3, np.int64),
                      boxes=np.zeros((3, 4), np.float32), vectors=np.ones((3, DIM), np.float32),
                      matrix_dtype=matrix_dtype, hidden=hidden)

    made = corpus()
    assert len(made) == 3 and made.hidden.dtype == np.bool_ and made.hidden.tolist() == [False] * 3
    assert corpus(np.array([True, False, True])).hidden.tolist() == [True, False, True]
    with pytest.raises(ResedisError) as err:
        corpus(np.zeros(2, bool))
    assert str(err.value) == "hidden must have one flag per region (3), got shape (2,)"
    with pytest.raises(ResedisError, match="matrix_dtype must be one of"):
        corpus(matrix_dtype="float16")


def test_matrix_dtype_check():
    assert check_matrix_dtype("float32") == "float32" and check_matrix_dtype("stored") == "stored"
    for bad in ("float16", "", "FLOAT32"):
        with pytest.raises(ResedisError) as err:
            check_matrix_dtype(bad)
        assert str(err.value) == (
            "matrix_dtype must be one of float32, stored (float32: fast exact search, 4 bytes x rows x dim; "
            f"stored: the index's own dtype, converted per query), got {bad!r}")


def any_index(path, rows: list[tuple[str, int, tuple, list]], dtype: str) -> Index:
    """``hand_index`` in any storage format: the region rows' vector columns come from
    ``vector_columns`` (codes, step, bias and the ANN column for int8/int4)."""
    from resedis.ann_projection import fit_projection
    from resedis.index.columns import vector_columns

    index = hand_index(path, [], dtype, images=())
    vectors = np.array([r[3] for r in rows], np.float32)
    projection = fit_projection(vectors, DIM - 1) if dtype in ("int8", "int4") else None
    cols = vector_columns(vectors, dtype, projection)
    base = table(regions_schema(DIM, dtype, None if projection is None else projection.width), {
        "image_id": [r[0] for r in rows], "region": list(range(len(rows))), "box": [list(r[2]) for r in rows],
        "objectness": [0.0] * len(rows), "batch": [r[1] for r in rows]})
    for name, column in cols.items():
        base = base.set_column(base.schema.get_field_index(name), name, column)
    index.regions_table.add(base)
    index.images_table.add(table(images_schema(), {
        "image_id": ["a.jpg", "b.jpg"], "root": [str(path)] * 2, "path": ["/photos/a.jpg", "/photos/b.jpg"],
        "sha256": ["0" * 64] * 2, "width": [100, 60], "height": [80, 120], "mtime_ns": [0] * 2, "size_bytes": [1] * 2,
        "n_regions": [sum(r[0] == i for r in rows) for i in ("a.jpg", "b.jpg")], "batch": [0] * 2}))
    return index


def _decoded(rows, dtype: str) -> np.ndarray:
    """The float32 vectors a search scores for ``rows`` stored as ``dtype`` (reference)."""
    from resedis import quant

    v = np.array([r[3] for r in rows], np.float32)
    if dtype in ("int8", "int4"):
        return quant.dequantize(*quant.quantize(v, dtype), dtype, DIM)
    return v.astype(np.float16).astype(np.float32) if dtype == "float16" else v


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "int4"])
@pytest.mark.parametrize("matrix_dtype", ["float32", "stored"])
def test_a_lazy_corpus_reads_rows_by_offset_in_every_format(tmp_path, caplog, dtype, matrix_dtype):
    """Row reads of a lazy corpus (an orphan row in the table, so corpus rows are not table
    offsets) give the rows asked, in that order, repeated or none, with the full product's
    numbers; the matrix stays unread until the first full product, which then converts
    (``float32``: compact codes decoded once, said with the storage's name) or keeps the
    stored values (``stored``)."""
    rng = np.random.default_rng(8)
    rows = [(("a.jpg", "b.jpg")[i % 2], 7 if i == 2 else 0, (1, 1, 20, 20), rng.normal(size=DIM).tolist()) for i in range(8)]
    kept = [i for i in range(8) if i != 2]  # region 2: batch 7 has no images row (an orphan)
    index = any_index(tmp_path / "db", rows, dtype)
    want = _decoded(rows, dtype)[kept]
    queries = rng.normal(size=(3, DIM)).astype(np.float32)
    reference = want.astype(np.float64) @ queries.astype(np.float64).T
    corpus = load_corpus(index, matrix_dtype, lazy=True)
    assert len(corpus) == 7 and not corpus.vectors_loaded and corpus.storage == dtype
    ask = np.array([6, 0, 3, 3, 5])
    np.testing.assert_allclose(corpus.row_vectors(ask), want[ask], rtol=1e-6, atol=1e-6)
    got = corpus.row_logits(ask, queries)
    assert got.shape == (5, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference[ask], rtol=1e-5, atol=1e-5)
    assert corpus.row_logits(np.zeros(0, np.int64), queries).shape == (0, 3)
    assert corpus.row_vectors([]).shape[0] == 0
    assert not corpus.vectors_loaded  # row reads never load the matrix
    with caplog.at_level(logging.INFO, logger="resedis.search_corpus"):
        full = corpus.logits(queries)
    assert corpus.vectors_loaded
    np.testing.assert_allclose(full, reference, rtol=1e-5, atol=1e-5)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("region matrix")]
    if matrix_dtype == "float32" and dtype != "float32":
        assert said == [f"region matrix (7, {DIM}) {dtype} -> float32 (0.00 GB), once per loaded index"]
        assert corpus.vectors.dtype == np.float32 and corpus.vectors.shape == (7, DIM)
        # decoded codes are float32 vectors from now on; float16 stays named float16
        assert corpus.storage == ("float32" if dtype in ("int8", "int4") else dtype)
        assert corpus.step is None and corpus.bias is None
    else:
        assert said == []
        assert corpus.storage == dtype
        stored = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "int4": np.uint8}[dtype]
        assert corpus.vectors.dtype == stored
    # once loaded, the rows come from the matrix: the same numbers
    np.testing.assert_allclose(corpus.row_logits(ask, queries), got, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(corpus.row_vectors(ask), want[ask], rtol=1e-6, atol=1e-6)


def test_a_lazy_corpus_scores_a_non_finite_row_minus_infinity(tmp_path):
    rows = [("a.jpg", 0, (1, 1, 20, 20), vec(1.0)), ("b.jpg", 0, (1, 1, 20, 20), [float("inf")] * DIM)]
    index = any_index(tmp_path / "db", rows, "float32")
    lazy = load_corpus(index, lazy=True)
    got = lazy.row_logits([1, 0], np.ones((2, DIM), np.float32))
    assert got[0].tolist() == [-np.inf, -np.inf] and np.allclose(got[1], sum(vec(1.0)))
    assert not lazy.hidden[1]  # not known until the matrix is read ...
    lazy.load()
    assert lazy.hidden.tolist() == [False, True]  # ... which hides it


def test_corpus_needs_its_vectors_or_a_loader_and_knows_its_dimension():
    base = dict(version=(1, 1), image_ids=["a"], paths=["/a"], region_image=np.zeros(3, np.int64),
                boxes=np.zeros((3, 4), np.float32))
    assert Corpus(**base, vectors=np.ones((3, DIM), np.float32)).dim == DIM  # from the vectors
    assert Corpus(**base, vectors=np.ones((3, DIM), np.float32), dim=9).dim == 9  # as given
    assert Corpus(**base, vectors=None, loader=lambda: None, dim=0).dim == 0  # unknown until loaded
    with pytest.raises(ResedisError) as err:
        Corpus(**base, vectors=None)
    assert str(err.value) == "Corpus needs vectors or a loader"
    with pytest.raises(ResedisError) as err:
        Corpus(**base, vectors=np.zeros((3, 3), np.uint8), storage="int4")
    assert str(err.value) == "Corpus of int4 codes needs the vector dimension (dim)"
    codes = Corpus(**base, vectors=np.zeros((3, 3), np.uint8), storage="int4", dim=DIM)
    assert codes.dim == DIM  # the codes' width is not the dimension


def test_loading_hides_only_the_rows_reported_damaged():
    base = dict(version=(1, 1), image_ids=["a"], paths=["/a"], region_image=np.zeros(3, np.int64),
                boxes=np.zeros((3, 4), np.float32), hidden=np.array([False, True, False]), storage="float32")
    vectors = np.ones((3, DIM), np.float32)
    for damaged, hidden in ((None, [False, True, False]), (np.array([True, False, False]), [True, True, False])):
        corpus = Corpus(**base, vectors=None, loader=lambda d=damaged: (vectors, None, None, d))
        corpus.load()
        assert corpus.hidden.tolist() == hidden and corpus.vectors is vectors


def test_image_rows_are_the_rows_of_those_images_in_any_layout():
    """``Corpus.image_rows`` against the O(N) definition, for regions stored in any order."""
    rng = np.random.default_rng(5)
    region_image = rng.integers(0, 30, 500)  # not contiguous, not sorted; images 0..39, some without regions
    corpus = Corpus(version=(0, 0), image_ids=[f"i{j}" for j in range(40)], paths=[""] * 40,
                    region_image=region_image, boxes=np.zeros((500, 4), np.float32), vectors=np.zeros((500, 2), np.float32))
    for images in ([], [3], [0, 39], [35, 36], sorted(rng.choice(40, 12, replace=False).tolist()), list(range(40))):
        want = np.flatnonzero(np.isin(region_image, images))
        np.testing.assert_array_equal(corpus.image_rows(np.array(images, np.int64)), want)
    # the first region row of each image: the first occurrence, -1 without regions
    want_first = [int(np.flatnonzero(region_image == i)[0]) if (region_image == i).any() else -1 for i in range(40)]
    assert corpus.first_rows().tolist() == want_first
