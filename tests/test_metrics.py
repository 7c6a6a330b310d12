"""Metric suite (docs/metrics.md): hand-computed tables + a randomized cross-check
against the slow reference in ``tests/reference_metrics.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reference_metrics import ref_evaluate, ref_greedy, ref_sorted
from resedis.masks import encode_mask, rle_to_box
from resedis.metrics import (
    METRIC_KEYS,
    evaluate,
    match_detections,
    per_query,
    precision_recall_curve,
    results_by_query,
    sort_hits,
)
from resedis.types import Hit, Instance, Query, QueryResult

SIZE = (100, 100)  # (H, W) of every hand-made image


def rect_mask(x0, y0, x1, y1, size=SIZE):
    m = np.zeros(size, dtype=bool)
    m[int(y0):int(y1), int(x0):int(x1)] = True
    return m


def inst(image_id, box, size=SIZE):
    """A target instance whose mask is its (integer) box."""
    return Instance(image_id=image_id, rle=encode_mask(rect_mask(*box, size=size)), box=tuple(map(float, box)))


def hit(image_id, box, score, present=True, mask=None):
    return Hit(image_id=image_id, box=tuple(map(float, box)), score=score, present=present, mask=mask)


def query(qid, instances=(), type_=None):
    return Query(query_id=qid, expression=f"expr {qid}", instances=list(instances), type=type_)


A = (0, 0, 10, 10)  # area 100; the boxes below have IoU with A of exactly the named value
IOU_10, IOU_095, IOU_09, IOU_08 = (0, 0, 10, 10), (0, 0, 10, 9.5), (0, 0, 10, 9), (0, 0, 10, 8)
IOU_07, IOU_06, IOU_05, IOU_04 = (0, 0, 10, 7), (0, 0, 10, 6), (0, 0, 10, 5), (0, 0, 10, 4)


# ---------------------------------------------------------------- sorting & ranking
def test_sort_hits_is_stable_score_descending():
    hs = [hit("a", A, 0.5), hit("b", A, 0.9), hit("c", A, 0.5), hit("d", A, 0.9), hit("e", A, 0.1)]
    assert [h.image_id for h in sort_hits(hs)] == ["b", "d", "a", "c", "e"]


@pytest.mark.parametrize(
    "order, ir1, ir5, br1, br5, pr_count",
    [
        (["x", "t"], 0.0, 1.0, 0.0, 1.0, 0),  # tie: file order puts the non-target first
        (["t", "x"], 1.0, 1.0, 1.0, 1.0, 1),
    ],
)
def test_ties_keep_file_order(order, ir1, ir5, br1, br5, pr_count):
    q = query("q", [inst("t", A)])
    res = {"q": [hit(img, A, 0.7) for img in order]}
    m = evaluate([q], res)
    assert (m["IR@1"], m["IR@5"], m["BR@1@0.5"], m["BR@5@0.5"], m["Pr@50_count"]) == (ir1, ir5, br1, br5, pr_count)


def test_ir_at_k_with_more_target_images_than_k():
    targets = [f"t{i}" for i in range(12)]
    q = query("q", [inst(t, A) for t in targets])
    ranking = ["t0", "n0", "t1", "t2", "n1", "t3", "t4", "t5", "n2", "t6", "t7", "t8"]
    hs = [hit(img, A, 1.0 - 0.01 * r) for r, img in enumerate(ranking)]
    hs.insert(0, hit("t0", IOU_04, 0.985))  # second detection of t0 does not take a rank slot
    m = evaluate([q], {"q": hs})
    assert m["IR@1"] == 1.0
    assert m["IR@5"] == pytest.approx(3 / 5)
    assert m["IR@10"] == pytest.approx(7 / 10)


def test_ir_multi_image_targets_small_g():
    q = query("q", [inst(1, A), inst(2, A), inst(3, A)])
    hs = [hit(1, A, 0.9), hit(9, A, 0.8), hit(2, A, 0.7), hit(7, A, 0.6), hit(8, A, 0.5), hit(3, A, 0.4)]
    m = evaluate([q], {"q": hs})
    assert (m["IR@1"], m["IR@5"], m["IR@10"]) == (1.0, pytest.approx(2 / 3), 1.0)


# ---------------------------------------------------------------- Pr@50 and BR@K@τ
def test_pr50_table_and_br1_identity():
    q1 = query("q1", [inst(1, A)])
    q2 = query("q2", [inst(1, A)])
    q3 = query("q3", [inst(1, A)])
    q4 = query("q4", [inst(1, A)])
    res = {
        "q1": [hit(1, IOU_08, 0.9)],  # top-1 in G, IoU .8 -> counted, hit
        "q2": [hit(1, IOU_04, 0.9), hit(1, IOU_10, 0.8)],  # top-1 in G, IoU .4 -> counted, miss
        "q3": [hit(2, IOU_10, 0.9), hit(1, IOU_10, 0.1)],  # top-1 not in G -> not counted
        # q4: no detections -> not counted
    }
    m = evaluate([q1, q2, q3, q4], res)
    assert m["Pr@50_count"] == 2
    assert m["Pr@50"] == 0.5
    assert m["IR@1"] == 0.5
    assert m["BR@1@0.5"] == 0.25 == m["IR@1"] * m["Pr@50"]
    assert m["BR@5@0.5"] == 0.75  # q2 and q3 recover at rank 2


def test_pr50_is_zero_when_count_is_zero():
    m = evaluate([query("q", [inst(1, A)])], {"q": [hit(2, A, 0.5)]})
    assert (m["Pr@50"], m["Pr@50_count"]) == (0.0, 0)


def test_br_at_k_tau_table():
    q = query("q", [inst(1, A)])

    def fill(score):  # same coordinates, wrong image: IoU 0
        return hit("other", A, score)

    ranked = [fill(0.99), hit(1, IOU_06, 0.98), fill(0.97), fill(0.96), fill(0.95),
              hit(1, IOU_095, 0.94), fill(0.93), fill(0.92), fill(0.91), fill(0.90), hit(1, IOU_10, 0.5)]
    m = evaluate([q], {"q": ranked[::-1]})  # input order must not matter
    expected = {
        "BR@1@0.5": 0.0, "BR@1@0.7": 0.0, "BR@1@0.9": 0.0,
        "BR@5@0.5": 1.0, "BR@5@0.7": 0.0, "BR@5@0.9": 0.0,
        "BR@10@0.5": 1.0, "BR@10@0.7": 1.0, "BR@10@0.9": 1.0,
    }
    assert {k: m[k] for k in expected} == expected
    assert (m["IR@1"], m["IR@5"]) == (0.0, 1.0)


@pytest.mark.parametrize("box, tau, expected", [
    (IOU_05, 0.5, 1.0), (IOU_04, 0.5, 0.0), (IOU_07, 0.7, 1.0), (IOU_06, 0.7, 0.0),
    (IOU_09, 0.9, 1.0), (IOU_08, 0.9, 0.0),
])
def test_br_threshold_is_inclusive(box, tau, expected):
    m = evaluate([query("q", [inst(1, A)])], {"q": [hit(1, box, 1.0)]})
    assert m[f"BR@1@{tau}"] == expected


def test_br_requires_iou_with_instance_of_the_same_image():
    q = query("q", [inst(1, A), inst(2, (50, 50, 60, 60))])
    m = evaluate([q], {"q": [hit(2, A, 1.0)]})  # in G, but A belongs to image 1
    assert m["IR@1"] == 1.0 and m["Pr@50_count"] == 1
    assert m["BR@1@0.5"] == 0.0 and m["Pr@50"] == 0.0 and m["mAP50"] == 0.0


# ---------------------------------------------------------------- matching & AP
GREEDY_A, GREEDY_B = (0, 0, 10, 10), (0, 2, 10, 12)


def test_greedy_takes_highest_iou():
    # (0,1.5,10,11.5): IoU a = 85/115, b = 95/105 -> b even though a comes first
    ms = match_detections(
        query("q", [inst(1, GREEDY_A), inst(1, GREEDY_B)]), [hit(1, (0, 1.5, 10, 11.5), 1.0)]
    )
    assert ms[0].instance == 1 and ms[0].iou == pytest.approx(95 / 105)


@pytest.mark.parametrize("boxes", [(GREEDY_A, GREEDY_B), (GREEDY_B, GREEDY_A)], ids=["a-first", "b-first"])
def test_greedy_iou_tie_takes_the_first_instance_in_dataset_order(boxes):
    # (0,1,10,11): IoU 90/110 with both -> tie -> the first instance in dataset order
    insts = [inst(1, box) for box in boxes]
    ms = match_detections(query("q", insts), [hit(1, (0, 1, 10, 11), 0.9), hit(1, (0, 1, 10, 11), 0.8)])
    assert [m.instance for m in ms] == [0, 1]  # second detection takes the remaining one
    assert ms[0].iou == ms[1].iou == pytest.approx(90 / 110)


def test_match_detections_fields():
    q = query("q", [inst(1, A), inst(1, (20, 0, 30, 10))])
    hs = [hit(1, IOU_10, 0.2), hit(1, IOU_08, 0.9), hit(5, A, 0.5), hit(1, (20, 0, 30, 6), 0.1)]
    ms = match_detections(q, hs)
    assert [m.hit.score for m in ms] == [0.9, 0.5, 0.2, 0.1]
    assert [m.is_tp for m in ms] == [True, False, False, True]  # 3rd: duplicate of A -> FP
    assert [m.instance for m in ms] == [0, None, None, 1]
    assert [m.in_target_image for m in ms] == [True, False, True, True]
    assert [m.iou for m in ms] == pytest.approx([0.8, 0.0, 1.0, 0.6])
    assert [m.is_tp for m in match_detections(q, hs, threshold=0.7)] == [True, False, False, False]


def test_duplicate_detection_is_fp_and_ap_table():
    # three instances in one image; sorted list: TP(A), FP(other image), TP(B), FP(dup A); C missed
    b, c = (20, 0, 30, 10), (40, 0, 50, 10)
    q = query("q", [inst(1, A), inst(1, b), inst(1, c)])
    hs = [hit(1, IOU_10, 0.6), hit(1, b, 0.7), hit(1, IOU_08, 0.9), hit(3, c, 0.8)]  # scrambled input
    # precision 1, 1/2, 2/3, 1/2 -> monotone 1, 2/3, 2/3, 1/2; AP = (1 + 2/3) / 3
    m = evaluate([q], {"q": hs})
    assert m["mAP50"] == pytest.approx(5 / 9, abs=1e-12)
    assert (m["precision"], m["recall"]) == (pytest.approx(2 / 4), pytest.approx(2 / 3))
    assert m["F1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert m["FA_per_query"] == 1.0


def test_ap_several_instances_perfect_and_one_fp_first():
    b = (20, 0, 30, 10)
    q = query("q", [inst(1, A), inst(2, b)])
    assert evaluate([q], {"q": [hit(1, A, 0.9), hit(2, b, 0.8)]})["mAP50"] == 1.0
    # FP first: precision 0, 1/2, 2/3 -> monotone 2/3 everywhere; AP = 2/3
    m = evaluate([q], {"q": [hit(7, A, 0.95), hit(1, A, 0.9), hit(2, b, 0.8)]})
    assert m["mAP50"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------- discovery
def test_discovery_matches_within_decided_set_only():
    q = query("q", [inst(1, A)])
    hs = [hit(1, IOU_10, 0.9, present=False), hit(1, IOU_08, 0.8, present=True)]
    m = evaluate([q], {"q": hs})
    assert m["mAP50"] == 1.0  # all detections: TP then FP
    assert (m["precision"], m["recall"], m["F1"]) == (1.0, 1.0, 1.0)


def test_fa_counts_distinct_non_target_images_and_n_acc():
    q1 = query("q1", [inst(1, A)])
    q2 = query("a1", type_="absent")
    q3 = query("a2", type_="absent")
    q4 = query("a3", type_="absent")
    res = {
        "q1": [hit(1, A, 0.9), hit("x", A, 0.8), hit("x", (50, 50, 60, 60), 0.7), hit("y", A, 0.6),
               hit("z", A, 0.5, present=False)],  # FA images: x, y (z not decided)
        "a1": [hit("x", A, 0.9), hit("x", A, 0.8), hit("w", A, 0.2)],  # FA images: x, w; not empty
        "a2": [hit("x", A, 0.9, present=False)],  # decided set empty -> correct
        # a3: no detections -> correct
    }
    m = evaluate([q1, q2, q3, q4], res)
    assert m["FA_per_query"] == pytest.approx((2 + 2 + 0 + 0) / 4)
    assert m["N_acc"] == pytest.approx(2 / 3)
    assert (m["queries"], m["absent_queries"]) == (4, 3)
    assert m["precision"] == pytest.approx(1 / 7)  # 1 TP among 4 + 3 decided
    assert m["recall"] == 1.0
    assert m["IR@1"] == 1.0 and m["mAP50"] == 1.0  # absent queries do not enter the means
    rec = {r["query_id"]: r for r in per_query([q1, q2, q3, q4], res)}
    assert rec["a1"]["IR@1"] is None and rec["a1"]["fa_images"] == 2 and rec["a1"]["fp"] == 3
    assert rec["q1"]["tp"] == 1 and rec["q1"]["fp"] == 3 and rec["q1"]["n_decided"] == 4


def test_n_acc_none_without_absent_queries():
    assert evaluate([query("q", [inst(1, A)])], {})["N_acc"] is None


def test_only_absent_queries_gives_zero_retrieval_metrics():
    m = evaluate([query("a", type_="absent")], {"a": [hit(1, A, 0.9)]})
    assert all(m[k] == 0.0 for k in METRIC_KEYS if k.startswith(("IR@", "BR@"))) and m["mAP50"] == 0.0
    assert (m["N_acc"], m["FA_per_query"], m["precision"], m["recall"], m["F1"]) == (0.0, 1.0, 0.0, 0.0, 0.0)


# ---------------------------------------------------------------- perfect / empty
def _mixed_queries():
    return [
        query("single", [inst(1, A)]),
        query("multi_img", [inst(2, A), inst(3, (5, 5, 40, 30)), inst(4, (60, 60, 90, 99))]),
        query("multi_inst", [inst(5, A), inst(5, (20, 20, 50, 40)), inst(5, (60, 0, 99, 30))]),
        query("absent", type_="absent"),
    ]


@pytest.mark.parametrize("mode", ["box", "mask"])
def test_perfect_prediction_scores_one(mode):
    qs = _mixed_queries()
    res = {q.query_id: [hit(i.image_id, i.box, 1.0 - 0.01 * k, mask=i.rle) for k, i in enumerate(q.instances)]
           for q in qs}
    m = evaluate(qs, res, iou=mode, n_images=6)  # images 1..5 hold targets, one more is empty
    ones = [k for k in METRIC_KEYS if k not in ("Pr@50_count", "FA_per_query")]
    assert {k: m[k] for k in ones} == {k: 1.0 for k in ones}
    assert (m["Pr@50_count"], m["FA_per_query"]) == (3, 0.0)


@pytest.mark.parametrize("with_lines", [False, True], ids=["no-lines", "empty-lines"])
def test_empty_prediction_scores_zero(with_lines):
    qs = _mixed_queries()
    res = {q.query_id: [] for q in qs} if with_lines else {}
    m = evaluate(qs, res, n_images=6)
    zeros = [k for k in METRIC_KEYS if k != "N_acc"]
    assert {k: m[k] for k in zeros} == {k: 0 for k in zeros}
    assert m["N_acc"] == 1.0  # saying nothing is right for the absent query


def test_no_queries():
    m = evaluate([], {})
    assert m["queries"] == 0 and m["N_acc"] is None and m["FA_per_query"] == 0.0 and m["IR@1"] == 0.0


# ---------------------------------------------------------------- mask mode
def _l_shape_case():
    # instance: 4 full rows of a 10x10 square plus its corner pixel -> box (0,0,10,10), area 41
    m = rect_mask(0, 0, 10, 4)
    m[9, 9] = True
    rle = encode_mask(m)
    target = Instance(image_id=1, rle=rle, box=rle_to_box(rle))
    assert target.box == (0.0, 0.0, 10.0, 10.0)
    return target


def test_mask_mode_uses_mask_iou_only_when_detection_has_mask():
    target = _l_shape_case()
    full = encode_mask(rect_mask(0, 0, 10, 10))
    q1, q2 = query("with_mask", [target]), query("no_mask", [target])
    res = {"with_mask": [hit(1, A, 0.9, mask=full)], "no_mask": [hit(1, A, 0.9)]}
    box = per_query([q1, q2], res, iou="box")
    mask = per_query([q1, q2], res, iou="mask")
    assert [r["top1_iou"] for r in box] == [1.0, 1.0]
    assert [r["top1_iou"] for r in mask] == [pytest.approx(0.41), 1.0]  # 41 / 100
    assert evaluate([q1, q2], res, iou="box")["BR@1@0.5"] == 1.0
    assert evaluate([q1, q2], res, iou="mask")["BR@1@0.5"] == 0.5
    assert match_detections(q1, res["with_mask"], iou="mask")[0].is_tp is False
    # a tight mask on a loose box: box IoU 1/2.25 < .5, mask IoU 1
    loose = hit(1, (0, 0, 15, 15), 0.9, mask=target.rle)
    assert match_detections(q1, [loose], iou="box")[0].is_tp is False
    assert match_detections(q1, [loose], iou="mask")[0].is_tp is True


def test_mask_size_mismatch_is_an_error():
    q = query("q", [inst(1, A)])
    bad = hit(1, A, 0.9, mask=encode_mask(rect_mask(0, 0, 10, 10, size=(50, 60))))
    with pytest.raises(ValueError, match="different sizes"):
        evaluate([q], {"q": [bad]}, iou="mask")
    assert evaluate([q], {"q": [bad]}, iou="box")["IR@1"] == 1.0


# ---------------------------------------------------------------- validation & helpers
@pytest.mark.parametrize("fn", [
    lambda: evaluate([], {}, iou="segm"),
    lambda: per_query([], {}, iou="Box"),
    lambda: precision_recall_curve([], {}, iou=""),
    lambda: match_detections(query("q"), [], iou="boxes"),
])
def test_bad_iou_mode_rejected(fn):
    with pytest.raises(ValueError, match="iou must be one of"):
        fn()


@pytest.mark.parametrize("fn, message", [
    (lambda: evaluate([query("q", [inst(1, A)]), query("q")], {}), "more than once"),
    (lambda: evaluate([query("q", [inst(1, A)])], {"q": [hit(1, A, float("nan"))]}), "finite"),
    (lambda: match_detections(query("q", [inst(1, A)]), [], threshold=0.0), "threshold"),
    (lambda: results_by_query([QueryResult("q", "e"), QueryResult("q", "e")]), "more than once"),
], ids=["repeated-query", "nan-score", "zero-threshold", "repeated-result"])
def test_other_input_errors(fn, message):
    with pytest.raises(ValueError, match=message):
        fn()


def test_results_by_query():
    assert results_by_query([QueryResult("q", "e", [hit(1, A, 1.0)])])["q"][0].image_id == 1


def test_precision_recall_curve_pooled():
    qs = [query("q1", [inst(1, A)]), query("q2", [inst(2, A)]), query("a", type_="absent")]
    res = {"q1": [hit(1, A, 0.9), hit(1, A, 0.5)], "q2": [hit(2, A, 0.7)], "a": [hit(3, A, 0.8)]}
    p, r, t = precision_recall_curve(qs, res)
    assert t.tolist() == [0.9, 0.8, 0.7, 0.5]
    assert p == pytest.approx([1, 1 / 2, 2 / 3, 2 / 4])
    assert r == pytest.approx([0.5, 0.5, 1.0, 1.0])
    p, r, t = precision_recall_curve(qs, {})
    assert p.shape == r.shape == t.shape == (0,)


# ---------------------------------------------------------------- randomized cross-check
def _random_dataset(rng: np.random.Generator):
    n_images = int(rng.integers(1, 9))
    sizes = {i: (int(rng.integers(12, 40)), int(rng.integers(12, 40))) for i in range(n_images)}
    image_ids = [i if rng.random() < 0.5 else f"img{i}" for i in range(n_images)]
    size_of = dict(zip(image_ids, sizes.values()))

    def random_region(img):
        h, w = size_of[img]
        x0, y0 = int(rng.integers(0, w - 2)), int(rng.integers(0, h - 2))
        x1, y1 = int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1))
        m = rect_mask(x0, y0, x1, y1, size=(h, w))
        m &= rng.random(m.shape) < 0.85  # ragged masks so mask IoU differs from box IoU
        m[y0, x0] = True
        return m

    queries, results = [], {}
    for qi in range(int(rng.integers(1, 9))):
        instances = []
        if rng.random() > 0.2:
            for ii in rng.choice(n_images, size=int(rng.integers(1, min(4, n_images) + 1)), replace=False):
                img = image_ids[int(ii)]
                for _ in range(int(rng.integers(1, 4))):
                    rle = encode_mask(random_region(img))
                    instances.append(Instance(image_id=img, rle=rle, box=rle_to_box(rle)))
        q = Query(query_id=f"q{qi}", expression=f"e{qi}", instances=instances)
        queries.append(q)
        if rng.random() < 0.15:
            continue  # missing from results = empty prediction
        hits = []
        for _ in range(int(rng.integers(0, 16))):
            score = float(rng.integers(0, 6)) / 5  # coarse scores -> many ties
            present = bool(rng.random() < 0.6)
            if instances and rng.random() < 0.6:
                t = instances[int(rng.integers(len(instances)))]
                jitter = rng.integers(-2, 3, size=4) * (rng.random() < 0.7)
                h, w = size_of[t.image_id]
                x0, y0, x1, y1 = np.array(t.box) + jitter
                x0, x1 = sorted((float(np.clip(x0, 0, w)), float(np.clip(x1, 0, w))))
                y0, y1 = sorted((float(np.clip(y0, 0, h)), float(np.clip(y1, 0, h))))
                mask = encode_mask(random_region(t.image_id) | rect_mask(x0, y0, x1, y1, size=(h, w))) \
                    if rng.random() < 0.5 else None
                hits.append(Hit(t.image_id, (x0, y0, x1, y1), score, present, mask))
            else:
                img = image_ids[int(rng.integers(n_images))]
                m = random_region(img)
                rle = encode_mask(m)
                hits.append(Hit(img, rle_to_box(rle), score, present, rle if rng.random() < 0.5 else None))
        results[q.query_id] = hits
    return queries, results


@pytest.mark.parametrize("mode", ["box", "mask"])
@pytest.mark.parametrize("seed", range(50))
def test_evaluate_matches_reference_on_random_data(seed, mode):
    rng = np.random.default_rng(seed)
    queries, results = _random_dataset(rng)
    n = 10 if seed % 2 else None  # ≥ the 1..8 images of the random corpus; None: IL_MCC unknown
    got, want = evaluate(queries, results, iou=mode, n_images=n), ref_evaluate(queries, results, iou=mode, n_images=n)
    assert set(got) == set(want)
    for k, v in want.items():
        if v is None:
            assert got[k] is None, k
        else:
            assert math.isclose(got[k], v, rel_tol=0, abs_tol=1e-9), (mode, k, got[k], v)
    for q in queries:
        hs = results.get(q.query_id, [])
        ms = match_detections(q, hs, iou=mode)
        assert [m.hit for m in ms] == ref_sorted(hs)
        assert [m.instance for m in ms] == ref_greedy(q, ref_sorted(hs), mode)
