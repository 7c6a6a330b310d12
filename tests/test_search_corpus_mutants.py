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
