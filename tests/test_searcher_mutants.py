"""resedis.search's Searcher and search_dataset on a hand-written index with the bundled
``demo`` model as text encoder (from the mutation run, issue 16; docs/testing.md). No index
is built with the model: the region rows are written by hand (a few images, overlapping
boxes, a box with no visible area, a row whose float32 product overflows), so a test costs
a model load (~0.2 s) and a few LanceDB writes, and the expected hits are computed here from
the rows written and the encoder's own text vectors: a float64 product, per-image greedy NMS
by a plain IoU, a global sort. Every hit is compared whole (image id, box, score, present,
mask, path), every message exactly."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pytest

from resedis.errors import IndexMismatchError, ResedisError
from resedis.filters import Filters
from resedis.index.ann import AnnConfig, build_ann_index
from resedis.index.ann_search import AnnSearch
from resedis.index.manifest import Manifest, read_manifest, write_manifest
from resedis.index.store import Index, images_schema, open_index, regions_schema
from resedis.models import load_model
from resedis.models.fingerprint import encoder_fingerprint
from resedis.search import DEFAULT_TOP_K, HIT_NMS_IOU, Searcher, search, search_dataset
from resedis.thresholds import index_threshold
from resedis.types import Dataset, ImageInfo, Query

# image id -> (width, height, mtime_ns)
IMAGES = {"a.jpg": (100, 80, 1000), "b.jpg": (60, 120, 2000), "sub/c.jpg": (50, 50, 3000)}
BOXES = [  # (image, box): 0/1 and 6/7 overlap (IoU > 0.5), 3 is 0's box in another image, 5 has no area
    ("a.jpg", (10, 10, 50, 40)), ("a.jpg", (12, 10, 50, 42)), ("a.jpg", (60, 50, 90, 75)),
    ("b.jpg", (10, 10, 50, 40)), ("b.jpg", (0, 0, 30, 100)), ("b.jpg", (30, 60, 60, 60)),
    ("sub/c.jpg", (5, 5, 45, 45)), ("sub/c.jpg", (6, 6, 44, 44)), ("sub/c.jpg", (0, 0, 10, 10)),
]
HIDDEN = 5
OVERFLOW = 9  # sub/c.jpg (after its other rows): every term of its product with RED > 0, the sum +inf in float32
OVERFLOW_BOX = ("sub/c.jpg", (30, 0, 50, 20))
RED, BLUE = "red circle", "a blue square"
TEXTS = [RED, BLUE, "the green triangle on the left"]


@pytest.fixture(scope="module")
def demo():
    return load_model("demo", "cpu")


def table(schema: pa.Schema, columns: dict) -> pa.Table:
    n = len(next(iter(columns.values())))
    return pa.table({f.name: pa.array(columns[f.name], f.type) if f.name in columns else pa.nulls(n, f.type)
                     for f in schema}, schema=schema)


_TEXT_VECTORS: dict[str, np.ndarray] = {}  # the demo model's fixed weights: one encoding per text


def text_vector(demo, text: str) -> np.ndarray:
    """The encoder's own (D,) vector of ``text`` (whitespace collapsed, as the Searcher does)."""
    text = " ".join(text.split())
    if text not in _TEXT_VECTORS:
        _TEXT_VECTORS[text] = demo.encode_texts([text])[0]
    return _TEXT_VECTORS[text]


def region_vectors(demo) -> np.ndarray:
    """(10, D) float32: seeded values, except the hidden row (the best match for RED, were
    it visible) and the overflow row."""
    dim = demo.vector_dim
    vectors = np.random.default_rng(7).normal(size=(len(BOXES) + 1, dim)).astype(np.float32) * 0.5
    red = text_vector(demo, RED)
    vectors[HIDDEN] = 4 * red
    vectors[OVERFLOW] = np.sign(red) * np.float32(3e38)
    return vectors


def add_images(index: Index, root, ids, batch: int) -> None:
    index.images_table.add(table(images_schema(), {
        "image_id": list(ids), "root": [str(root)] * len(ids), "path": [f"{root}/{i}" for i in ids],
        "sha256": ["0" * 64] * len(ids), "width": [IMAGES[i][0] for i in ids], "height": [IMAGES[i][1] for i in ids],
        "mtime_ns": [IMAGES[i][2] for i in ids], "size_bytes": [1] * len(ids),
        "n_regions": [0] * len(ids), "batch": [batch] * len(ids)}))


def add_regions(index: Index, rows: list[tuple[str, tuple, np.ndarray]], batch: int) -> None:
    """Rows ``(image_id, box, vector)``, each image's contiguous, ``region`` its rank there."""
    rank = [sum(r[0] == row[0] for r in rows[:i]) for i, row in enumerate(rows)]
    index.regions_table.add(table(regions_schema(index.manifest.vector_dim, "float32"), {
        "image_id": [r[0] for r in rows], "region": rank, "box": [list(r[1]) for r in rows],
        "objectness": [0.0] * len(rows), "vector": [r[2].tolist() for r in rows], "batch": [batch] * len(rows)}))


def hand_index(path, demo, *, overflow: bool = False, **manifest) -> Index:
    """The index of IMAGES and BOXES (``overflow``: + the overflow row), float32 vectors, ``demo``'s
    model, preprocessing and weights fingerprint unless ``manifest`` says otherwise."""
    fields = dict(model="demo", vector_dim=demo.vector_dim, vector_dtype="float32", preprocessing=demo.preprocessing(),
                  root=str(path / "photos"), max_regions=10, nms_iou=0.5, weights_fingerprint=encoder_fingerprint(demo))
    fields.update(manifest)
    write_manifest(path / "db", Manifest(**fields))
    index = Index(path / "db", Manifest(**fields), create=True)
    add_images(index, path / "photos", list(IMAGES), 0)
    vectors = region_vectors(demo)[:, :fields["vector_dim"]]
    rows = [(img, box, vectors[i]) for i, (img, box) in enumerate(BOXES)]
    add_regions(index, rows + ([(*OVERFLOW_BOX, vectors[OVERFLOW])] if overflow else []), 0)
    return index


def iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else float(a == b)


def expected(demo, root, text, *, threshold, top_k=DEFAULT_TOP_K, nms_iou=HIT_NMS_IOU, images=None, ids=None):
    """[(image_id, box, score, present, mask, path)] by hand: the float64 product of the rows
    of BOXES with the encoder's vector of ``text``, visible rows of ``images`` only, greedy
    NMS per image, sorted by score. ``ids`` maps index image ids to the hits' ids."""
    q = text_vector(demo, text).astype(np.float64)
    logits = region_vectors(demo)[:len(BOXES)].astype(np.float64) @ q
    order = [i for i in np.argsort(-logits, kind="stable") if i != HIDDEN and (images is None or BOXES[i][0] in images)]
    kept: list[int] = []
    for i in order:
        if nms_iou < 1.0 and any(BOXES[j][0] == BOXES[i][0] and iou(BOXES[i][1], BOXES[j][1]) > nms_iou for j in kept):
            continue
        kept.append(i)
    out = []
    for i in kept[:top_k]:
        score = 1 / (1 + np.exp(-logits[i]))
        image = BOXES[i][0]
        out.append(((ids or {}).get(image, image), tuple(map(float, BOXES[i][1])), pytest.approx(score, rel=1e-5),
                    bool(score >= threshold), None, f"{root}/photos/{image}"))
    return out


def got(result) -> list[tuple]:
    return [(h.image_id, h.box, h.score, h.present, h.mask, h.path) for h in result.hits]


def near(hits: list[tuple]) -> list[tuple]:
    """``got`` hits with the scores as approx (another batch of texts: float32 round-off)."""
    return [(*h[:2], pytest.approx(h[2], rel=1e-6), *h[3:]) for h in hits]


# ------------------------------------------------------------------------- hits


def test_hits_are_the_exact_product_ranked_per_image_nms(tmp_path, demo):
    index = hand_index(tmp_path, demo)
    searcher = Searcher(index, encoder=demo)
    assert searcher.threshold == index_threshold(index.manifest).value
    threshold = searcher.threshold
    for text in TEXTS:
        result = searcher.search(text)
        assert got(result) == expected(demo, tmp_path, text, threshold=threshold), text
        assert (result.query_id, result.expression) == (text, text)
        assert sorted(result.timings) == ["encode_ms", "search_ms"] and min(result.timings.values()) >= 0
    # the hand-made rows matter: NMS removes a hit of RED, the hidden row would be its best
    assert len(expected(demo, tmp_path, RED, threshold=0, nms_iou=1.0)) == len(expected(demo, tmp_path, RED, threshold=0)) + 2
    # the hidden row is never a hit, nor is a row whose float32 logit overflowed (+inf)
    overflowing = hand_index(tmp_path / "overflow", demo, overflow=True)
    with np.errstate(over="ignore"):  # the overflow this row is for
        hits = got(Searcher(overflowing, encoder=demo).search(RED, top_k=50))
    assert hits == expected(demo, tmp_path / "overflow", RED, top_k=50, threshold=threshold)
    # whitespace: the vector of the normalised text, the query id normalised, the expression as given
    messy = searcher.search("  red \n circle ", top_k=3)
    assert (messy.query_id, messy.expression) == ("red circle", "  red \n circle ")
    assert got(messy) == expected(demo, tmp_path, RED, top_k=3, threshold=threshold)


def test_top_k_threshold_and_nms_iou(tmp_path, demo):
    index = hand_index(tmp_path, demo)
    searcher = Searcher(index, encoder=demo)
    for top_k in (1, 2, 5, 50):
        assert got(searcher.search(BLUE, top_k=top_k, threshold=0.3)) == expected(
            demo, tmp_path, BLUE, top_k=top_k, threshold=0.3)
    # present is score >= threshold: a threshold equal to the second hit's score
    hits = searcher.search(RED, top_k=4).hits
    at = searcher.search(RED, top_k=4, threshold=hits[1].score).hits
    assert [h.present for h in at] == [True, True, False, False]
    assert [h.present for h in searcher.search(RED, top_k=4, threshold=1).hits] == [False] * 4  # an int threshold
    no_nms = Searcher(index, encoder=demo, nms_iou=1.0)
    assert no_nms.nms_iou == 1.0 and searcher.nms_iou == HIT_NMS_IOU
    assert got(no_nms.search(RED, top_k=50, threshold=0.3)) == expected(demo, tmp_path, RED, top_k=50, threshold=0.3,
                                                                        nms_iou=1.0)
    strict = Searcher(index, encoder=demo, nms_iou=0.01)
    assert got(strict.search(RED, top_k=50, threshold=0.3)) == expected(demo, tmp_path, RED, top_k=50, threshold=0.3,
                                                                        nms_iou=0.01)
    for bad in (0.0, -0.5, 1.01, 2.0):
        with pytest.raises(ResedisError) as err:
            Searcher(index, encoder=demo, nms_iou=bad)
        assert str(err.value) == f"nms_iou must be in (0, 1] (1 disables NMS), got {bad}"


def test_search_many_batches_ids_and_validation(tmp_path, demo):
    index = hand_index(tmp_path, demo)
    searcher = Searcher(index, encoder=demo)
    single = [near(got(searcher.search(t, top_k=4))) for t in TEXTS]
    for batch_size in (1, 2, 32):
        many = searcher.search_many(TEXTS, top_k=4, batch_size=batch_size)
        assert [got(r) for r in many] == single
        assert [(r.query_id, r.expression) for r in many] == [(t, t) for t in TEXTS]
    named = searcher.search_many(TEXTS, top_k=4, query_ids=["q1", "q2", "q3"], batch_size=2)
    assert [r.query_id for r in named] == ["q1", "q2", "q3"] and [got(r) for r in named] == single
    assert searcher.search_many([], top_k=4) == []
    for kwargs, message in (
        (dict(top_k=0), "top_k must be >= 1, got 0"),
        (dict(batch_size=0), "batch_size must be >= 1, got 0"),
        (dict(query_ids=["q1"]), "1 query ids for 3 texts"),
    ):
        with pytest.raises(ResedisError) as err:
            searcher.search_many(TEXTS, **kwargs)
        assert str(err.value) == message
    with pytest.raises(TypeError) as err:
        searcher.search_many(RED)
    assert str(err.value) == "search_many takes a list of strings; use search() for one"
    for bad in ("", "  \n", None):
        with pytest.raises(ResedisError) as err:
            searcher.search_many([RED, bad])
        assert str(err.value) == f"empty query {bad!r}: describe the object to search for"


def test_encode_and_ranking_logits(tmp_path, demo):
    index = hand_index(tmp_path, demo)
    searcher = Searcher(index, encoder=demo)
    queries = searcher.encode([" red  circle", BLUE])
    assert queries.dtype == np.float32 and np.array_equal(queries, demo.encode_texts([RED, BLUE]))
    corpus = searcher.corpus()
    reference = region_vectors(demo)[:len(BOXES)].astype(np.float64) @ queries.astype(np.float64).T
    logits = searcher.ranking_logits(corpus, queries, 5)
    assert logits.shape == (len(BOXES), 2) and np.allclose(logits, reference, rtol=1e-5, atol=1e-5)
    one = searcher.ranking_logits(corpus, queries[0], 5)  # one vector: a (N, 1) column
    assert one.shape == (len(BOXES), 1) and np.allclose(one[:, 0], logits[:, 0], rtol=1e-6, atol=1e-6)
    prefilter = np.array([i % 3 == 0 for i in range(len(BOXES))])
    cut = searcher.ranking_logits(corpus, queries, 5, prefilter)
    assert np.array_equal(cut[prefilter], logits[prefilter]) and np.all(cut[~prefilter] == -np.inf)


def test_search_vectors_are_searched_as_text(tmp_path, demo):
    index = hand_index(tmp_path, demo)
    searcher = Searcher(index, encoder=demo)
    vectors = np.stack([text_vector(demo, RED), text_vector(demo, BLUE)])
    results = searcher.search_vectors(vectors, ["example 1", "example 2"], top_k=3, threshold=0.3)
    assert [got(r) for r in results] == [expected(demo, tmp_path, t, top_k=3, threshold=0.3) for t in (RED, BLUE)]
    assert [(r.query_id, r.expression) for r in results] == [("example 1", "example 1"), ("example 2", "example 2")]
    one = searcher.search_vectors(vectors[1], ["b"], query_ids=["id-b"], top_k=3, threshold=0.3)  # 1-d: one query
    assert [(r.query_id, r.expression, got(r)) for r in one] == [("id-b", "b", near(got(results[1])))]
    only_c = searcher.search_vectors(vectors, ["1", "2"], top_k=3, filters=Filters(folder="sub"))
    assert [got(r) for r in only_c] == [expected(demo, tmp_path, t, top_k=3, images={"sub/c.jpg"},
                                                 threshold=searcher.threshold) for t in (RED, BLUE)]
    dim = demo.vector_dim
    with pytest.raises(ResedisError) as err:
        searcher.search_vectors(vectors, ["just one"])
    assert str(err.value) == f"query vectors of shape (2, {dim}) for 1 labels; the index needs (Q, {dim})"
    with pytest.raises(ResedisError) as err:
        searcher.search_vectors(vectors[:, :-1], ["1", "2"])
    assert str(err.value) == f"query vectors of shape (2, {dim - 1}) for 2 labels; the index needs (Q, {dim})"


# ------------------------------------------------------------------------- filters


def test_filters_pick_images_before_the_top_k_cut(tmp_path, demo):
    index = hand_index(tmp_path, demo)
    searcher = Searcher(index, encoder=demo)
    corpus = searcher.corpus()
    region_images = [b[0] for b in BOXES]
    assert searcher.region_filter(None) is None and searcher.region_filter(Filters()) is None
    assert searcher.region_filter(Filters(folder="sub")).tolist() == [i == "sub/c.jpg" for i in region_images]
    assert searcher.region_filter(Filters(min_width=70), corpus).tolist() == [i == "a.jpg" for i in region_images]
    assert searcher.region_filter(Filters(modified_after=2000 / 1e9)).tolist() == [i != "a.jpg" for i in region_images]
    with pytest.raises(ResedisError) as err:
        searcher.region_filter(Filters(min_width=-1))
    assert str(err.value) == "min_width must be a whole number of pixels >= 0, got -1"
    for filters, images in ((Filters(folder="sub"), {"sub/c.jpg"}), (Filters(max_height=100), {"a.jpg", "sub/c.jpg"})):
        for top_k in (1, 3):
            assert got(searcher.search(BLUE, top_k=top_k, filters=filters)) == expected(
                demo, tmp_path, BLUE, top_k=top_k, images=images, threshold=searcher.threshold)
    meta = searcher.image_meta()
    assert meta is searcher.image_meta(corpus) and meta.image_ids == list(IMAGES)
    assert meta.widths.tolist() == [100, 60, 50] and meta.mtime_ns.tolist() == [1000, 2000, 3000]


def test_a_filter_on_an_empty_index(tmp_path, demo):
    index = Index(tmp_path / "db", Manifest(model="demo", vector_dim=demo.vector_dim, vector_dtype="float32",
                                            preprocessing=demo.preprocessing(), root=str(tmp_path), max_regions=10,
                                            nms_iou=0.5, weights_fingerprint=encoder_fingerprint(demo)), create=True)
    searcher = Searcher(index, encoder=demo)
    mask = searcher.region_filter(Filters(folder="sub"))
    assert mask.dtype == bool and mask.shape == (0,)
    assert searcher.search(RED, filters=Filters(folder="sub")).hits == [] and searcher.search(RED).hits == []


# ------------------------------------------------------------------------- index changes


def test_a_changed_index_or_manifest_is_read_again(tmp_path, demo):
    index = hand_index(tmp_path, demo)
    searcher = Searcher(tmp_path / "db", encoder=demo)  # a path: opened here
    read = searcher.index.manifest
    corpus = searcher.corpus()
    assert searcher.index.manifest is read  # not read again while unchanged
    meta = searcher.image_meta()
    assert searcher.corpus() is corpus and searcher.image_meta() is meta
    # a calibrated threshold written into the manifest is the new default
    manifest = read_manifest(index.path)
    manifest.calibration = {"threshold": 0.6, "metric": "F1"}
    write_manifest(index.path, manifest)
    result = searcher.search(RED, top_k=50)
    assert searcher.threshold == 0.6 and searcher.threshold_choice.source == "calibrated"
    assert [h.present for h in result.hits] == [h.score >= 0.6 for h in result.hits]
    assert any(h.score < 0.6 for h in result.hits) and any(h.score >= 0.6 for h in result.hits)
    assert searcher.corpus() is corpus  # the manifest changed, the tables did not
    calibrated = searcher.index.manifest
    assert calibrated.calibration["threshold"] == 0.6 and searcher.corpus() is corpus
    assert searcher.index.manifest is calibrated  # read once per change
    # new rows: a new corpus and image meta, the new image among the hits
    IMAGES["new.jpg"] = (40, 40, 4000)
    try:
        add_images(index, tmp_path / "photos", ["new.jpg"], 1)
        add_regions(index, [("new.jpg", (0, 0, 40, 40), 5 * text_vector(demo, BLUE))], 1)
        fresh = searcher.corpus()
        assert fresh is not corpus and fresh.image_ids == [*list(IMAGES)] and len(fresh) == len(corpus) + 1
        assert searcher.image_meta() is not meta and searcher.image_meta().image_ids == list(IMAGES)
        assert searcher.image_meta(corpus).image_ids == ["a.jpg", "b.jpg", "sub/c.jpg"]  # the corpus given
        top = searcher.search(BLUE, top_k=1).hits[0]
        assert (top.image_id, top.box, top.path) == ("new.jpg", (0.0, 0.0, 40.0, 40.0), f"{tmp_path}/photos/new.jpg")
    finally:
        del IMAGES["new.jpg"]


def test_a_filter_on_the_corpus_given_after_rows_moved(tmp_path, demo):
    """a.jpg re-indexed: its rows move to the end of the new corpus; a filter asked for the
    corpus read before is computed on that corpus's own rows."""
    index = hand_index(tmp_path, demo)
    searcher = Searcher(index, encoder=demo)
    before = searcher.corpus()
    index.images_table.delete("image_id = 'a.jpg'")
    index.regions_table.delete("image_id = 'a.jpg'")
    add_images(index, tmp_path / "photos", ["a.jpg"], 1)
    vectors = region_vectors(demo)
    add_regions(index, [(img, box, vectors[i]) for i, (img, box) in enumerate(BOXES) if img == "a.jpg"], 1)
    wide = Filters(min_width=70)  # a.jpg only
    assert searcher.region_filter(wide, before).tolist() == [b[0] == "a.jpg" for b in BOXES]
    assert searcher.corpus().image_ids == ["b.jpg", "sub/c.jpg", "a.jpg"]
    assert searcher.region_filter(wide).tolist() == [False] * 6 + [True] * 3


def test_ann_config_and_the_lazy_matrix(tmp_path, demo):
    index = hand_index(tmp_path, demo)
    config = AnnConfig()
    with_ann = Searcher(index, encoder=demo, ann=config)
    assert isinstance(with_ann.ann, AnnSearch) and with_ann.ann.config is config and with_ann.ann.index is index
    assert not with_ann.corpus().vectors_loaded  # read at the first exact product only
    plain = Searcher(index, encoder=demo, use_ann=False)
    assert plain.ann is None and plain.corpus().vectors_loaded
    # no vector index on this table: both answer exactly
    assert got(with_ann.search(BLUE, top_k=4)) == got(plain.search(BLUE, top_k=4)) == expected(
        demo, tmp_path, BLUE, top_k=4, threshold=plain.threshold)


def cosine_top(demo, text: str, n: int, rows) -> set[int]:
    """The ``n`` rows among ``rows`` nearest ``text`` by cosine (what a one-partition
    IVF_FLAT index probed whole returns as candidates)."""
    q = text_vector(demo, text).astype(np.float64)
    v = region_vectors(demo)[:len(BOXES)].astype(np.float64)
    cos = v @ q / np.linalg.norm(v, axis=1) / np.linalg.norm(q)
    return set(sorted(rows, key=lambda i: -cos[i])[:n])


def test_an_ann_index_gives_candidates_scored_exactly(tmp_path, demo):
    index = hand_index(tmp_path, demo)
    every = AnnConfig(min_rows=1, index_type="IVF_FLAT", num_partitions=1, nprobes=1)  # 500 candidates: every row
    build_ann_index(index.regions_table, every)
    searcher = Searcher(index, encoder=demo, ann=every)
    for text in TEXTS:
        assert got(searcher.search(text, top_k=4)) == expected(demo, tmp_path, text, top_k=4, threshold=searcher.threshold)
    assert searcher.ann.queries_answered == len(TEXTS) and not searcher.corpus().vectors_loaded  # never read
    # two candidates per query for top 1 (three for top 3): exact logits there, -inf elsewhere
    narrow = Searcher(index, encoder=demo, ann=AnnConfig(min_rows=1, index_type="IVF_FLAT", num_partitions=1, nprobes=1,
                                                         min_candidates=2, candidate_factor=1))
    corpus = narrow.corpus()
    q = narrow.encode([RED])
    exact = region_vectors(demo)[:len(BOXES)].astype(np.float64) @ q[0].astype(np.float64)
    for k, n in ((1, 2), (3, 3)):
        logits = narrow.ranking_logits(corpus, q, k)[:, 0]
        finite = set(np.flatnonzero(np.isfinite(logits)).tolist())
        assert finite == cosine_top(demo, RED, n, range(len(BOXES))), k
        assert np.allclose(logits[sorted(finite)], exact[sorted(finite)], rtol=1e-5)
    # a filter: as many allowed candidates (widened), or every allowed row when there are fewer
    allowed = np.array([i in (0, 1, 2) for i in range(len(BOXES))])
    logits = narrow.ranking_logits(corpus, q, 1, allowed)[:, 0]
    assert set(np.flatnonzero(np.isfinite(logits)).tolist()) == cosine_top(demo, RED, 2, [0, 1, 2])
    few = np.array([i in (0, 4) for i in range(len(BOXES))])
    logits = narrow.ranking_logits(corpus, q, 1, few)[:, 0]
    assert np.flatnonzero(np.isfinite(logits)).tolist() == [0, 4] and np.allclose(logits[[0, 4]], exact[[0, 4]], rtol=1e-5)
    assert narrow.ann.queries_answered == 4
    # search_dataset scores every region of the dataset's images exactly, not the ANN
    # candidates (for RED: rows of a.jpg and the hidden row, none of sub/c.jpg)
    assert not cosine_top(demo, RED, 2, range(len(BOXES))) & {6, 7, 8}
    results = search_dataset(narrow, dataset(tmp_path, {30: "c.jpg"}), top_k=2, threshold=0.5)
    assert got(results[0]) == expected(demo, tmp_path, RED, top_k=2, threshold=0.5, images={"sub/c.jpg"},
                                       ids={"sub/c.jpg": 30})
    assert narrow.ann.queries_answered == 4
    top = got(narrow.search(RED, top_k=1, filters=Filters(folder="sub")))  # found past the ANN candidates
    assert len(top) == 1 and top == expected(demo, tmp_path, RED, top_k=1, images={"sub/c.jpg"}, threshold=narrow.threshold)


def test_matrix_dtype_and_threads(tmp_path, demo, monkeypatch):
    import torch

    index = hand_index(tmp_path, demo)
    stored = Searcher(index, encoder=demo, matrix_dtype="stored", use_ann=False)
    default = Searcher(index, encoder=demo, use_ann=False)
    assert (stored.matrix_dtype, default.matrix_dtype) == ("stored", "float32")
    assert (stored.corpus().matrix_dtype, default.corpus().matrix_dtype) == ("stored", "float32")
    assert got(stored.search(RED, top_k=5)) == got(default.search(RED, top_k=5))
    with pytest.raises(ResedisError) as err:
        Searcher(index, encoder=demo, matrix_dtype="float16")
    assert str(err.value).startswith("matrix_dtype must be one of float32, stored") and str(err.value).endswith("got 'float16'")
    assert default.threads is None
    before = torch.get_num_threads()
    try:
        assert Searcher(index, encoder=demo, threads=1).threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------- model checks


def test_the_model_is_loaded_from_the_manifest_and_checked(tmp_path, demo):
    index = hand_index(tmp_path, demo)
    loaded = Searcher(tmp_path / "db", device="cpu", model="demo")
    assert loaded.encoder.spec == "demo" and str(loaded.encoder.device) == "cpu"
    assert got(loaded.search(RED, top_k=4)) == got(Searcher(index, encoder=demo).search(RED, top_k=4))
    with pytest.raises(ResedisError) as err:
        Searcher(index, device="nowhere")
    assert str(err.value).startswith("unknown device 'nowhere'")
    with pytest.raises(IndexMismatchError) as err:
        Searcher(index, model="owlv2:google/owlv2-base-patch16-ensemble", encoder=demo)
    assert str(err.value).startswith(
        f"{index.path}: the index was built with model 'demo', but 'owlv2:google/owlv2-base-patch16-ensemble' was asked for")


def test_an_encoder_of_another_model_weights_or_preprocessing_is_refused(tmp_path, demo):
    other = hand_index(tmp_path / "other", demo, model="owlv2:google/owlv2-base-patch16-ensemble")
    with pytest.raises(IndexMismatchError) as err:
        Searcher(other, encoder=demo)
    assert str(err.value).startswith(
        f"{other.path}: the index was built with model 'owlv2:google/owlv2-base-patch16-ensemble', but 'demo' was asked for")
    retrained = hand_index(tmp_path / "retrained", demo, weights_fingerprint="sha256:" + "0" * 64)
    with pytest.raises(IndexMismatchError) as err:
        Searcher(retrained, encoder=demo)
    assert str(err.value).startswith(f"{retrained.path}: the index was built with model 'demo' weights ")
    assert "they were retrained or replaced since the index was built" in str(err.value)
    resized = hand_index(tmp_path / "resized", demo, preprocessing={**demo.preprocessing(), "input_size": [96, 96]})
    with pytest.raises(IndexMismatchError) as err:
        Searcher(resized, encoder=demo)
    assert str(err.value).startswith(
        f"{resized.path}: the index was built with model 'demo' preprocessing other than the loaded model's "
        "(input_size: index [96, 96], model now [192, 192])")
    narrow = hand_index(tmp_path / "narrow", demo, vector_dim=demo.vector_dim - 1)
    with pytest.raises(ResedisError) as err:
        Searcher(narrow, encoder=demo)
    assert str(err.value) == (f"demo: not a text encoder for this index (region+text backend, vector dim "
                              f"{demo.vector_dim} vs the index's {demo.vector_dim - 1})")


class Weights:
    """A loaded model's ``model`` attribute: where its weights came from."""

    def __init__(self, name_or_path: str):
        self.name_or_path = name_or_path


class ElsewhereStub:
    """A region+text backend under the index's spec whose weights came from another directory."""

    kind, vector_dim = "region+text", 65

    def __init__(self, spec: str, weights_dir):
        self.spec, self.model = spec, Weights(str(weights_dir))

    def preprocessing(self) -> dict:
        return {}


def test_the_weights_checked_are_the_given_encoders_own(tmp_path, demo):
    """An encoder under the index's spec (``demo``) whose weights came from elsewhere is
    refused by its own weights' fingerprint, not the spec's (which still matches)."""
    index = hand_index(tmp_path, demo, preprocessing={})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text("{}")
    with pytest.raises(IndexMismatchError) as err:
        Searcher(index, encoder=ElsewhereStub("demo", elsewhere))
    assert str(err.value).startswith(f"{index.path}: the index was built with model 'demo' weights ")
    assert f"but the weights at {elsewhere} are now " in str(err.value)


class Float64Stub(ElsewhereStub):
    """A text encoder under the index's spec whose vectors come back as float64."""

    def __init__(self, demo):
        super().__init__("demo", demo.model.name_or_path)
        self.demo = demo

    def encode_texts(self, texts):
        return self.demo.encode_texts(texts).astype(np.float64)


def test_query_vectors_are_float32_whatever_the_encoder_returns(tmp_path, demo):
    index = hand_index(tmp_path, demo, weights_fingerprint=None, preprocessing={})
    searcher = Searcher(index, encoder=Float64Stub(demo))
    queries = searcher.encode([RED, BLUE])
    assert queries.dtype == np.float32 and np.array_equal(queries, demo.encode_texts([RED, BLUE]))
    logits = searcher.ranking_logits(searcher.corpus(), queries.astype(np.float64), 3)
    assert logits.dtype == np.float32 and logits.shape == (len(BOXES), 2)
    assert got(searcher.search(BLUE, top_k=3)) == expected(demo, tmp_path, BLUE, top_k=3, threshold=searcher.threshold)


class BatchRecorder(Float64Stub):
    """... that records the size of every batch of texts it encodes."""

    def __init__(self, demo):
        super().__init__(demo)
        self.batches: list[int] = []

    def encode_texts(self, texts):
        self.batches.append(len(texts))
        return super().encode_texts(texts)


def test_texts_are_encoded_in_batches_of_32_by_default(tmp_path, demo):
    index = hand_index(tmp_path, demo, weights_fingerprint=None, preprocessing={})
    recorder = BatchRecorder(demo)
    searcher = Searcher(index, encoder=recorder)
    texts = [f"{colour} circle" for colour in ("red", "blue", "green", "yellow", "small", "large")] * 7
    results = searcher.search_many(texts, top_k=2)
    assert recorder.batches == [32, 10] and [r.query_id for r in results] == texts
    assert [got(r) for r in results[:2]] == [near(got(searcher.search(t, top_k=2))) for t in texts[:2]]
    recorder.batches.clear()
    searcher.search_many(texts[:5], top_k=2, batch_size=2)
    assert recorder.batches == [2, 2, 1]
    recorder.batches.clear()
    queries = [Query(f"q{i}", text) for i, text in enumerate(texts)]
    search_dataset(searcher, Dataset("hand", None, {1: ImageInfo(1, "a.jpg", 1, 1)}, queries), top_k=2)
    assert recorder.batches == [32, 10]
    recorder.batches.clear()
    search_dataset(searcher, Dataset("hand", None, {1: ImageInfo(1, "a.jpg", 1, 1)}, queries[:7]), batch_size=3)
    assert recorder.batches == [3, 3, 1]


def test_one_request_reads_the_corpus_once(tmp_path, demo):
    """A request (text, vectors, a filter) works on one snapshot of the index: the corpus is
    read once, so a write landing mid-request cannot give the filter and the ranking two versions."""
    index = hand_index(tmp_path, demo)
    searcher = Searcher(index, encoder=demo)
    reads = []
    read = searcher.corpus

    def counted():
        reads.append(1)
        return read()

    searcher.corpus = counted
    vectors = np.stack([text_vector(demo, RED)])
    for call in (lambda: searcher.search(RED, top_k=2, filters=Filters(folder="sub")),
                 lambda: searcher.search_many([RED, BLUE], top_k=2, filters=Filters(min_width=10)),
                 lambda: searcher.search_vectors(vectors, ["v"], top_k=2, filters=Filters(folder="sub")),
                 lambda: search_dataset(searcher, dataset(tmp_path, {1: "a.jpg"}), top_k=2)):
        reads.clear()
        call()
        assert reads == [1]


class ImageTextStub:
    """An image+text backend under the index's spec (the kind check comes after the spec's)."""

    spec, kind, vector_dim, model = "demo", "image+text", 65, None

    def preprocessing(self) -> dict:
        return {}


def test_an_encoder_of_another_kind_is_refused(tmp_path, demo):
    index = hand_index(tmp_path, demo, weights_fingerprint=None, preprocessing={})
    with pytest.raises(ResedisError) as err:
        Searcher(index, encoder=ImageTextStub())
    assert str(err.value) == (f"demo: not a text encoder for this index (image+text backend, vector dim - "
                              f"vs the index's {demo.vector_dim})")


def test_one_off_search_loads_the_index_model(tmp_path, demo):
    index = hand_index(tmp_path, demo)
    result = search(" red circle ", tmp_path / "db", top_k=3, threshold=0.4, device="cpu")
    assert (result.query_id, result.expression) == ("red circle", " red circle ")
    assert got(result) == expected(demo, tmp_path, RED, top_k=3, threshold=0.4)
    assert got(search(BLUE, index)) == expected(demo, tmp_path, BLUE, threshold=index_threshold(index.manifest).value)
    with pytest.raises(ResedisError) as err:
        search(RED, index, device="nowhere")
    assert str(err.value).startswith("unknown device 'nowhere'")


# ------------------------------------------------------------------------- search_dataset


def dataset(tmp_path, names: dict) -> Dataset:
    images = {ds_id: ImageInfo(ds_id, name, 1, 1) for ds_id, name in names.items()}
    queries = [Query("q-red", RED), Query("q-blue", BLUE), Query("q-green", TEXTS[2])]
    return Dataset("hand", str(tmp_path / "ds"), images, queries)


def test_search_dataset_answers_in_dataset_ids_on_its_images(tmp_path, demo, caplog):
    index = hand_index(tmp_path, demo)
    searcher = Searcher(index, encoder=demo)
    ds = dataset(tmp_path, {10: "a.jpg", 30: "c.jpg", 40: "missing.jpg"})  # c.jpg: the one id ending in /c.jpg
    ids = {"a.jpg": 10, "sub/c.jpg": 30}
    with caplog.at_level(logging.WARNING, logger="resedis.search"):
        results = search_dataset(searcher, ds, top_k=3, threshold=0.4, batch_size=2)
    assert caplog.messages == [f"1 of 3 dataset images are not in the index {index.path}; they can never be found"]
    assert [(r.query_id, r.expression) for r in results] == [(q.query_id, q.expression) for q in ds.queries]
    for result, query in zip(results, ds.queries):
        assert got(result) == expected(demo, tmp_path, query.expression, top_k=3, threshold=0.4,
                                       images={"a.jpg", "sub/c.jpg"}, ids=ids)
    # a path: the index's model is loaded; every image known: no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resedis.search"):
        again = search_dataset(tmp_path / "db", dataset(tmp_path, {10: "a.jpg", 30: "c.jpg"}), top_k=2, device="cpu")
    assert caplog.messages == []
    assert [got(r) for r in again] == [expected(demo, tmp_path, q, top_k=2, images={"a.jpg", "sub/c.jpg"}, ids=ids,
                                                threshold=searcher.threshold) for q in TEXTS]
    with pytest.raises(ResedisError) as err:
        search_dataset(tmp_path / "db", ds, device="nowhere")
    assert str(err.value).startswith("unknown device 'nowhere'")


def test_search_dataset_on_images_without_regions_finds_nothing(tmp_path, demo):
    manifest = Manifest(model="demo", vector_dim=demo.vector_dim, vector_dtype="float32", preprocessing=demo.preprocessing(),
                        root=str(tmp_path / "photos"), max_regions=10, nms_iou=0.5,
                        weights_fingerprint=encoder_fingerprint(demo))
    index = Index(tmp_path / "db", manifest, create=True)
    add_images(index, tmp_path / "photos", ["a.jpg", "b.jpg"], 0)  # no region rows (nothing detected)
    results = search_dataset(Searcher(index, encoder=demo), dataset(tmp_path, {1: "a.jpg"}), top_k=2)
    assert [(r.query_id, r.hits) for r in results] == [("q-red", []), ("q-blue", []), ("q-green", [])]


def test_search_dataset_refuses_a_dataset_with_no_image_of_the_index(tmp_path, demo):
    index = hand_index(tmp_path, demo)
    searcher = Searcher(index, encoder=demo)
    with pytest.raises(ResedisError) as err:
        search_dataset(searcher, dataset(tmp_path, {1: "zzz.jpg"}))
    assert str(err.value) == (
        f"index {index.path} (images of {tmp_path / 'photos'}, e.g. 'a.jpg') and dataset 'hand' (root {tmp_path / 'ds'}, "
        "e.g. 'zzz.jpg') share no images; index the dataset's image folder")
    empty = Index(tmp_path / "empty", Manifest(model="demo", vector_dim=demo.vector_dim, vector_dtype="float32",
                                               preprocessing=demo.preprocessing(), root=str(tmp_path / "photos"),
                                               max_regions=10, nms_iou=0.5,
                                               weights_fingerprint=encoder_fingerprint(demo)), create=True)
    with pytest.raises(ResedisError) as err:
        search_dataset(Searcher(empty, encoder=demo), Dataset("none", None, {}, []))
    assert str(err.value) == (
        f"index {empty.path} (images of {tmp_path / 'photos'}, e.g. '(index is empty)') and dataset 'none' (root None, "
        "e.g. '(no images)') share no images; index the dataset's image folder")
    assert open_index(tmp_path / "db").version() == index.version()  # searching wrote nothing
