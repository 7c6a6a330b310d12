"""Boundaries the rest of the suite passes over (issue 16): each test here fails on a named
one-character change of the code.

* matching and BR@K,τ at IoU **exactly** 0.5 (``>=`` → ``>``), and just below it;
* per-image NMS in ``rank_hits`` at IoU exactly ``nms_iou`` (kept) and the candidate
  window growing when NMS empties the first window (returning after the first window);
* ``present`` at a threshold equal to a real hit's score (``>=`` → ``>``), in the engine
  and in the ``owl`` pipeline;
* the ``owl`` pipeline's own stored calibration winning over a different top-level value
  (the Searcher ignoring ``calibration["owl"]``).
"""

from __future__ import annotations

import numpy as np
import pytest

from resedis.index import IndexConfig, build_index, open_index
from resedis.index.manifest import read_manifest, write_manifest
from resedis.masks import encode_mask
from resedis.metrics import evaluate, match_detections, per_query, precision_recall_curve
from resedis.pipelines import PipelineConfig, get_pipeline
from resedis.query import QueryEngine, QueryRequest
from resedis.search import Searcher, rank_hits
from resedis.types import Hit, Instance, Query

SIZE = (100, 100)
A = (0, 0, 10, 10)  # area 100
HALF = (0, 0, 10, 5)  # IoU with A: 50 / 100 = 0.5 exactly (also as float64 and as masks)
BELOW = (0, 0, 10, 4.99)  # IoU 0.499
TEXTS = ["a red circle", "the small blue square on the left", "green triangle", "the large yellow star"]


def rect(box) -> np.ndarray:
    m = np.zeros(SIZE, dtype=bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    m[y0:y1, x0:x1] = True
    return m


def inst(image_id, box):
    return Instance(image_id=image_id, rle=encode_mask(rect(box)), box=tuple(map(float, box)))


def hit(image_id, box, score, present=True, mask=None):
    return Hit(image_id=image_id, box=tuple(map(float, box)), score=score, present=present, mask=mask)


def query(qid, instances):
    return Query(query_id=qid, expression=f"expr {qid}", instances=list(instances))


# ---------------------------------------------------------------- metrics at IoU 0.5
def test_matching_counts_iou_exactly_one_half_as_tp_and_just_below_as_fp():
    q = query("q", [inst(1, A), inst(2, A)])
    ms = match_detections(q, [hit(1, HALF, 0.9), hit(2, BELOW, 0.8)])
    assert [m.iou for m in ms] == [0.5, pytest.approx(0.499)]
    assert [m.is_tp for m in ms] == [True, False]
    assert [m.instance for m in ms] == [0, None]
    # an explicit threshold is inclusive too
    assert [m.is_tp for m in match_detections(q, [hit(1, (0, 0, 10, 7), 0.9)], threshold=0.7)] == [True]


@pytest.mark.parametrize("iou_mode", ["box", "mask"])
def test_metric_table_at_iou_exactly_one_half(iou_mode):
    """One target per query; q_half's only detection has IoU 0.5 exactly, q_below's 0.499.
    Box mode uses the boxes; mask mode the detections' rectangle masks (same IoUs)."""
    def det(img, box):
        mask = encode_mask(rect(box)) if iou_mode == "mask" and box != BELOW else None
        return hit(img, box, 0.9, mask=mask)

    queries = [query("q_half", [inst(1, A)]), query("q_below", [inst(1, A)])]
    results = {"q_half": [det(1, HALF)], "q_below": [det(1, BELOW)]}
    records = {r["query_id"]: r for r in per_query(queries, results, iou=iou_mode)}
    assert records["q_half"]["top1_iou"] == 0.5
    assert (records["q_half"]["tp"], records["q_half"]["fp"]) == (1, 0)
    assert (records["q_below"]["tp"], records["q_below"]["fp"]) == (0, 1)
    assert records["q_half"]["AP50"] == 1.0 and records["q_below"]["AP50"] == 0.0
    assert records["q_half"]["BR@1@0.5"] == 1.0 and records["q_below"]["BR@1@0.5"] == 0.0
    assert records["q_half"]["BR@1@0.7"] == 0.0
    m = evaluate(queries, results, iou=iou_mode)
    assert (m["Pr@50"], m["Pr@50_count"]) == (0.5, 2)
    assert m["mAP50"] == 0.5 and m["BR@1@0.5"] == 0.5 and m["BR@10@0.5"] == 0.5
    assert (m["precision"], m["recall"], m["F1"]) == (0.5, 0.5, 0.5)
    precision, recall, _ = precision_recall_curve(queries, results, iou=iou_mode)
    assert precision.tolist() == [1.0, 0.5] and recall.tolist() == [0.5, 0.5]  # query order on the score tie


@pytest.mark.parametrize("tau, at, below", [(0.7, (0, 0, 10, 7), (0, 0, 10, 6.99)), (0.9, (0, 0, 10, 9), (0, 0, 10, 8.99))])
def test_box_recall_tau_is_inclusive_at_k5(tau, at, below):
    """BR@5,τ: the qualifying detection is ranked 3rd, behind two misses in another image."""
    q = query("q", [inst(1, A)])
    misses = [hit(7, A, 0.99), hit(8, A, 0.98)]
    assert evaluate([q], {"q": misses + [hit(1, at, 0.5)]})[f"BR@5@{tau}"] == 1.0
    assert evaluate([q], {"q": misses + [hit(1, below, 0.5)]})[f"BR@5@{tau}"] == 0.0
    assert evaluate([q], {"q": misses + [hit(1, at, 0.5)]})[f"BR@1@{tau}"] == 0.0


# ---------------------------------------------------------------- rank_hits
def slow_rank(logits, region_image, boxes, top_k, nms_iou):
    """Independent reference: plain-Python greedy NMS inside each image (suppress when
    IoU > nms_iou), then the global top ``top_k`` by logit (ties: lower index first)."""
    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        if all(x == y for x, y in zip(a, b)):
            return 1.0
        return inter / union if union > 0 else 0.0

    kept = []
    for img in sorted(set(region_image.tolist())):
        idx = sorted((i for i in range(len(logits)) if region_image[i] == img), key=lambda i: (-logits[i], i))
        mine = []
        for i in idx:
            if logits[i] == -np.inf:
                continue
            if nms_iou < 1.0 and any(iou(boxes[i].tolist(), boxes[j].tolist()) > nms_iou for j in mine):
                continue
            mine.append(i)
        kept.extend(mine)
    kept.sort(key=lambda i: (-logits[i], i))
    return kept[:top_k]


def heavy_suppression_case(seed: int, n_dup: int = 700, n_other: int = 300):
    """The ``n_dup`` highest logits are near-copies of one box in image 0 (NMS keeps one),
    so every window up to ``n_dup`` candidates yields a single hit."""
    rng = np.random.default_rng(seed)
    dup_boxes = np.array([10, 10, 50, 50], np.float32) + rng.uniform(-0.5, 0.5, (n_dup, 4)).astype(np.float32)
    xy = rng.uniform(0, 200, (n_other, 2))
    other_boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (n_other, 2))], axis=1).astype(np.float32)
    boxes = np.concatenate([dup_boxes, other_boxes])
    logits = np.concatenate([rng.uniform(5, 10, n_dup), rng.uniform(-5, 4, n_other)]).astype(np.float32)
    region_image = np.concatenate([np.zeros(n_dup, np.int64), rng.integers(1, 40, n_other)])
    perm = rng.permutation(len(logits))
    return logits[perm], region_image[perm], boxes[perm]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("top_k", [1, 5, 20, 64])
def test_rank_hits_widens_the_window_when_nms_suppresses_it(seed, top_k):
    logits, region_image, boxes = heavy_suppression_case(seed)
    # the premise: the first window (max(4*top_k, 256) candidates) is all duplicates
    first = np.argsort(-logits, kind="stable")[: max(4 * top_k, 256)]
    assert set(region_image[first].tolist()) == {0}
    got = [i for i, _ in rank_hits(logits, region_image, boxes, top_k, 0.5)]
    assert len(got) == top_k
    assert got == slow_rank(logits, region_image, boxes, top_k, 0.5)
    assert sum(region_image[i] == 0 for i in got) == 1


def test_rank_hits_stops_at_the_first_minus_infinity(monkeypatch):
    """Fewer finite logits than ``top_k``: the first window holds them all, so no wider
    window (a partition of the whole vector each) is needed."""
    rng = np.random.default_rng(3)
    n = 5000
    logits = np.full(n, -np.inf, np.float32)
    few = rng.choice(n, 12, replace=False)
    logits[few] = rng.normal(size=12).astype(np.float32)
    region_image = rng.integers(0, 100, n)
    xy = rng.uniform(0, 100, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], axis=1).astype(np.float32)
    partitions = []
    real = np.argpartition
    monkeypatch.setattr(np, "argpartition", lambda *a, **kw: partitions.append(1) or real(*a, **kw))
    got = [i for i, _ in rank_hits(logits, region_image, boxes, 20, 0.5)]
    monkeypatch.undo()
    assert got == slow_rank(logits, region_image, boxes, 20, 0.5)
    assert 0 < len(got) <= 12 and len(partitions) == 1


@pytest.mark.parametrize("seed", range(4))
def test_rank_rows_equals_ranking_the_dense_vector(seed):
    """The Searcher's sparse ranking of ANN candidates (``rank_rows``) against the dense
    path: the candidates' logits in an (N,) vector of ``-inf``, hidden rows and non-finite
    logits masked, ranked by ``rank_hits`` — and against the plain-Python reference."""
    from resedis.search import rank_rows
    from resedis.search_corpus import Corpus

    rng = np.random.default_rng(seed)
    n = 3000
    region_image = np.sort(rng.integers(0, 60, n))
    xy = rng.uniform(0, 100, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (n, 2))], axis=1).astype(np.float32)
    hidden = rng.random(n) < 0.05
    corpus = Corpus(version=(0, 0), image_ids=[f"i{j}" for j in range(60)], paths=[f"i{j}.jpg" for j in range(60)],
                    region_image=region_image, boxes=boxes, vectors=np.zeros((n, 2), np.float32), hidden=hidden)
    rows = np.sort(rng.choice(n, 400, replace=False))
    logits = rng.normal(size=400).astype(np.float32).round(1)  # ties
    logits[rng.choice(400, 10, replace=False)] = [np.nan, np.inf, -np.inf, np.nan, 3e38, np.nan, np.inf, 1, 1, 1]
    dense = np.full(n, -np.inf, np.float32)
    dense[rows] = logits
    dense[hidden] = -np.inf
    dense[~np.isfinite(dense)] = -np.inf
    for top_k in (1, 7, 50, 1000):
        want = rank_hits(dense, region_image, boxes, top_k, 0.5)
        got = rank_rows(rows, logits, corpus, top_k, 0.5)
        assert got == want
        assert [i for i, _ in got] == slow_rank(dense, region_image, boxes, top_k, 0.5)
    assert not any(hidden[i] for i, _ in rank_rows(rows, logits, corpus, 1000, 0.5))


def test_rank_hits_keeps_a_box_whose_iou_equals_nms_iou():
    boxes = np.array([A, HALF, (0, 0, 10, 6)], np.float32)  # IoU with A: 1, 0.5, 0.6
    logits = np.array([3.0, 2.0, 1.0], np.float32)
    image = np.zeros(3, np.int64)
    assert [i for i, _ in rank_hits(logits[:2], image[:2], boxes[:2], 5, 0.5)] == [0, 1]
    assert [i for i, _ in rank_hits(logits[[0, 2]], image[:2], boxes[[0, 2]], 5, 0.5)] == [0]
    assert [i for i, _ in rank_hits(logits, image, boxes, 5, 0.5)] == slow_rank(logits, image, boxes, 5, 0.5) == [0, 1]


# ---------------------------------------------------------------- presence at the threshold
@pytest.fixture(scope="module")
def db(tmp_path_factory, tiny_models, synth_small):
    path = tmp_path_factory.mktemp("boundaries") / "db"
    config = IndexConfig(model=f"owlv2:{tiny_models['owlv2']}", max_regions=6, device="cpu")
    build_index(synth_small / "images", path, config=config, progress=False)
    return path


def a_middle_score(searcher) -> tuple[str, float, int]:
    """(text, score, count of hits scoring >= it) for a real hit score with hits strictly
    above and strictly below it."""
    hits = searcher.search(TEXTS[0], top_k=30, threshold=0.0).hits
    scores = sorted({h.score for h in hits})
    assert len(scores) >= 5, scores
    s = scores[len(scores) // 2]
    return TEXTS[0], s, sum(h.score >= s for h in hits)


def test_present_at_a_threshold_equal_to_a_hit_score(db):
    searcher = Searcher(db, device="cpu")
    text, s, n_at_or_above = a_middle_score(searcher)
    hits = searcher.search(text, top_k=30, threshold=s).hits
    at = [h for h in hits if h.score == s]
    assert at and all(h.present for h in at)  # score == threshold: present
    assert [h.present for h in hits] == [h.score >= s for h in hits]
    assert sum(h.present for h in hits) == n_at_or_above and not all(h.present for h in hits)
    # the owl pipeline decides the same way
    piped = QueryEngine(db, PipelineConfig(device="cpu", top_k=30)).run(QueryRequest(text, pipeline="owl", threshold=s)).result.hits
    assert [h.score for h in piped] == [h.score for h in hits]
    assert [h.present for h in piped] == [h.present for h in hits]


def test_owl_calibration_wins_over_a_different_top_level_threshold(db):
    """``calibration["owl"]`` (what ``resedis calibrate`` stores for the pipeline) is the
    engine's threshold even when the top-level mirror says something else."""
    searcher = Searcher(db, device="cpu")
    text, s, n_at_or_above = a_middle_score(searcher)
    manifest = read_manifest(db)
    manifest.calibration = {"threshold": 0.999, "owl": {"threshold": s}}
    write_manifest(db, manifest)
    try:
        fresh = Searcher(db, device="cpu")
        for engine in (fresh, searcher):  # a new Searcher, and a live one re-reading the manifest
            hits = engine.search(text, top_k=30).hits
            assert (engine.threshold_choice.value, engine.threshold_choice.source) == (s, "calibrated")
            assert sum(h.present for h in hits) == n_at_or_above
        pipe = get_pipeline("owl", open_index(db), PipelineConfig(device="cpu", top_k=30))
        assert pipe.resolved()[1:] == (s, "calibrated")
        piped = QueryEngine(db, PipelineConfig(device="cpu", top_k=30)).run(QueryRequest(text, pipeline="owl")).result.hits
        assert sum(h.present for h in piped) == n_at_or_above
        # the other way round: the top-level value alone still applies (the engine's convention)
        manifest.calibration = {"threshold": s}
        write_manifest(db, manifest)
        assert Searcher(db, device="cpu").threshold_choice.value == s
        assert get_pipeline("owl", open_index(db), PipelineConfig(device="cpu")).resolved()[1:] == (s, "calibrated")
    finally:
        manifest.calibration = None
        write_manifest(db, manifest)


# ---------------------------------------------------------------- metric contracts
# (from the mutation run on metrics.py: each test below kills mutants that survived the
# hand tables and the random cross-check; see docs/testing.md)
def test_match_threshold_range_is_zero_exclusive_to_one_inclusive():
    q = query("q", [inst(1, A)])
    assert [m.is_tp for m in match_detections(q, [hit(1, A, 0.9), hit(1, HALF, 0.8)], threshold=1.0)] == [True, False]
    for bad in (0.0, 1.0000001, 1.5, -0.5):
        with pytest.raises(ValueError, match=r"threshold"):
            match_detections(q, [hit(1, A, 0.9)], threshold=bad)


def test_non_finite_score_error_names_the_query():
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^query 'q7': detection scores must be finite numbers$"):
            match_detections(query("q7", [inst(1, A)]), [hit(1, A, bad)])


RECORD_KEYS = {"query_id", "expression", "type", "category", "absent", "n_targets", "n_target_images",
               "n_detections", "IR@1", "IR@5", "IR@10", *(f"BR@{k}@{t}" for k in (1, 5, 10) for t in (0.5, 0.7, 0.9)),
               "top1_in_target", "top1_iou", "AP50", "n_decided", "tp", "fp", "fa_images",
               "il_tp", "il_fp", "il_fn", "il_tn", "presence_tp", "presence_predictions", "presence_targets"}


def test_per_query_records_have_every_documented_key():
    present = Query("qa", "a red cup", [inst(1, A), inst(1, (20, 0, 30, 10)), inst(2, A)], category="cup", type="attribute")
    absent = Query("qb", "a purple cow", [], category="cow", type="absent")
    results = {"qa": [hit(1, A, 0.9), hit(3, A, 0.5, present=False)], "qb": [hit(4, A, 0.7)]}
    a, b = per_query([present, absent], results)
    assert set(a) == set(b) == RECORD_KEYS
    assert (a["query_id"], a["expression"], a["type"], a["category"], a["absent"]) == ("qa", "a red cup", "attribute", "cup", False)
    assert (a["n_targets"], a["n_target_images"], a["n_detections"]) == (3, 2, 2)
    assert (a["top1_in_target"], a["top1_iou"], a["AP50"]) == (True, 1.0, pytest.approx(1 / 3))
    assert (a["n_decided"], a["tp"], a["fp"], a["fa_images"]) == (1, 1, 0, 0)
    assert (b["expression"], b["type"], b["category"], b["absent"]) == ("a purple cow", "absent", "cow", True)
    assert (b["n_targets"], b["n_target_images"], b["n_detections"]) == (0, 0, 1)
    undefined = ["IR@1", "IR@5", "IR@10", *(f"BR@{k}@{t}" for k in (1, 5, 10) for t in (0.5, 0.7, 0.9)),
                 "top1_in_target", "top1_iou", "AP50"]
    assert [b[k] for k in undefined] == [None] * len(undefined)
    assert (b["n_decided"], b["tp"], b["fp"], b["fa_images"]) == (1, 0, 1, 1)
    # image-level presence pairs: qa decides image 1 (a target) and misses image 2; qb decides
    # image 4 (no target); true negatives need the corpus size (n_images), not given here
    assert [r[k] for r in (a, b) for k in ("il_tp", "il_fp", "il_fn", "il_tn")] == [1, 0, 1, None, 0, 1, 0, None]


def test_mask_size_mismatch_error_names_query_image_and_both_sizes():
    q = query("q", [inst(1, A)])
    small = encode_mask(np.ones((50, 40), dtype=bool))
    with pytest.raises(ValueError) as err:
        evaluate([q], {"q": [hit(1, A, 0.9, mask=small)]}, iou="mask")
    assert str(err.value) == ("query 'q', image 1: detection and target masks have different sizes "
                              "[(50, 40), (100, 100)]; masks must be (H, W) of the original image")


def test_precision_recall_curve_contract():
    q = query("q", [inst(1, A)])
    # one detection: one point, not an empty curve
    p, r, t = precision_recall_curve([q], {"q": [hit(1, A, 0.8)]})
    assert (p.tolist(), r.tolist(), t.tolist()) == ([1.0], [1.0], [0.8])
    assert p.dtype == r.dtype == t.dtype == np.float64
    # the iou mode is passed on: the box matches (IoU 1), its mask does not (mask IoU 0.25)
    quarter = encode_mask(rect((0, 0, 5, 5)))  # mask IoU with A: 25 / 100
    assert precision_recall_curve([q], {"q": [hit(1, A, 0.8, mask=quarter)]}, iou="box")[0].tolist() == [1.0]
    assert precision_recall_curve([q], {"q": [hit(1, A, 0.8, mask=quarter)]}, iou="mask")[0].tolist() == [0.0]
    # no target instances at all: recall is all zeros, not a division by zero
    p, r, t = precision_recall_curve([query("absent", [])], {"absent": [hit(1, A, 0.8), hit(2, A, 0.7)]})
    assert (p.tolist(), r.tolist(), t.tolist()) == ([0.0, 0.0], [0.0, 0.0], [0.8, 0.7])
    # no detections: three empty float arrays
    assert [a.shape for a in precision_recall_curve([q], {})] == [(0,), (0,), (0,)]


def test_precision_recall_curve_ties_keep_query_order_then_sorted_order():
    """200 one-detection queries with two distinct scores, TP or FP at random: on a score tie
    the curve takes queries in order (a plain stable sort here; numpy's default sort, not
    stable for such arrays, would shuffle TPs and FPs within a tie)."""
    rng = np.random.default_rng(5)
    scores = rng.choice([0.5, 0.7], 200)
    is_tp = rng.random(200) < 0.5
    queries = [query(f"q{i:03d}", [inst(i, A)]) for i in range(200)]
    results = {f"q{i:03d}": [hit(i, A if is_tp[i] else (50, 50, 60, 60), float(scores[i]))] for i in range(200)}
    order = sorted(range(200), key=lambda i: -scores[i])  # Python's sort is stable
    cum = np.cumsum([is_tp[i] for i in order])
    p, r, t = precision_recall_curve(queries, results)
    assert t.tolist() == [scores[i] for i in order]
    assert p.tolist() == (cum / np.arange(1, 201)).tolist()
    assert r.tolist() == (cum / 200).tolist()
