"""The --protocol metric sets (resedis.eval_protocols): D³ COCO mAP, GREC, REIR, SA-Co,
on hand-computed tables; and their plumbing through evaluate_predictions."""

from __future__ import annotations

import numpy as np
import pytest

from evalkit import make_dataset, oracle
from resedis.eval import evaluate_predictions
from resedis.eval_protocols.d3 import coco_map, d3_metrics
from resedis.eval_protocols.grec import generalized_iou, grec_metrics, sample_f1
from resedis.eval_protocols.reir import reir_metrics
from resedis.eval_protocols.suite import PROTOCOLS, protocol_metrics
from resedis.types import Hit, ImageInfo, Instance, Query

A = (0.0, 0.0, 10.0, 10.0)
IMAGES = {i: ImageInfo(i, f"{i}.jpg", 100, 100) for i in (1, 2, 3)}


def inst(image_id, box=A):
    return Instance(image_id, None, tuple(map(float, box)))


def hit(image_id, score, box=A, present=True):
    return Hit(image_id, tuple(map(float, box)), score, present)


# ---------------------------------------------------------------- D³ (COCO mAP)
def _d3_case():
    q1 = Query("q1", "a red cup", [inst(1)], type="presence", scope=[1])
    q2 = Query("q2", "a dog without a leash", [inst(2)], type="absence", scope=[2])
    res = {"q1": [hit(1, 0.9)],
           "q2": [hit(3, 0.9), hit(2, 0.8)]}  # a false positive outside q2's scope ranks first
    return [q1, q2], res


def test_d3_inter_and_intra_hand_table():
    qs, res = _d3_case()
    # inter: q1 AP 1; q2 precision 1/2 at its only recall step at every IoU threshold -> AP 0.5
    assert coco_map(qs, res, IMAGES, setting="inter")["mAP"] == pytest.approx(0.75)
    # intra: the image-3 detection is outside q2's scope and is not run -> both perfect
    assert coco_map(qs, res, IMAGES, setting="intra")["mAP"] == pytest.approx(1.0)


def test_d3_partitions_and_absent_categories():
    qs, res = _d3_case()
    absent = Query("q3", "a unicorn", [], type="absence")
    m = d3_metrics(qs + [absent], {**res, "q3": [hit(1, 0.99)]}, IMAGES)
    assert m["FULL"]["mAP"] == pytest.approx(0.75)  # a category without ground truth is left out
    assert m["PRES"]["mAP"] == pytest.approx(1.0) and m["ABS"]["mAP"] == pytest.approx(0.5)


def test_d3_iou_thresholds_average():
    q = Query("q", "x", [inst(1)])
    m = coco_map([q], {"q": [hit(1, 0.9, (0, 0, 10, 7.2))]}, IMAGES)  # IoU 0.72: TP at 0.50..0.70
    assert m["mAP"] == pytest.approx(0.5) and m["AP50"] == pytest.approx(1.0) and m["AP75"] == 0.0


def test_d3_empty_and_no_targets():
    qs, _ = _d3_case()
    assert coco_map(qs, {}, IMAGES)["mAP"] == 0.0
    assert coco_map([Query("a", "x")], {}, IMAGES)["mAP"] is None


# ---------------------------------------------------------------- GREC
def test_generalized_iou_table():
    g = generalized_iou(np.array([[0, 0, 1, 1], [0, 0, 2, 2]]), np.array([[0, 0, 1, 1], [2, 0, 3, 1]]))
    # identical: 1; disjoint side by side: IoU 0, hull 3, union 2 -> -1/3; (0,0,2,2) vs (0,0,1,1): IoU 1/4
    assert g[0, 0] == pytest.approx(1.0) and g[0, 1] == pytest.approx(-1 / 3) and g[1, 0] == pytest.approx(0.25)


def test_sample_f1_table():
    two = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], dtype=float)
    assert sample_f1(two, two) == 1.0
    assert sample_f1(two[:1], two) == pytest.approx(2 / 3)  # TP 1, FN 1
    assert sample_f1(np.zeros((0, 4)), np.zeros((0, 4))) == 1.0 and sample_f1(two, np.zeros((0, 4))) == 0.0


def test_grec_hand_table():
    qs = [Query("t", "two cups", [inst(1), inst(1, (20, 0, 30, 10))]),
          Query("n", "a unicorn", [], scope=[2]),
          Query("n2", "a ghost", [], scope=[3]),
          Query("lost", "no image known", [])]
    res = {"t": [hit(1, 0.9), hit(1, 0.8, (20, 0, 30, 10))],
           "n": [hit(2, 0.75)],       # kept (≥ 0.7): a wrong answer for a no-target sample
           "n2": [hit(3, 0.5)]}       # below the score threshold: nothing kept, right
    m = grec_metrics(qs, res)
    assert (m["samples"], m["no_target_samples"], m["unscored_queries"]) == (3, 2, 1)
    assert m["F1_score"] == pytest.approx(2 / 3) and m["N_acc"] == 0.5 and m["T_acc"] == 1.0
    res["t"][1] = hit(1, 0.6, (20, 0, 30, 10))  # second target's box now below threshold: F1 2/3
    assert grec_metrics(qs, res)["F1_score"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------- REIR
def test_reir_hand_table():
    qs = [Query("a", "x", [inst(2)]), Query("b", "y", [inst(3)]), Query("absent", "z", [])]
    res = {"a": [hit(1, 0.9), hit(1, 0.8), hit(2, 0.7)],   # image rank 1, detection position 2
           "b": [hit(3, 0.9, (0, 0, 10, 3))]}             # right image first, IoU 0.3
    m = reir_metrics(qs, res)
    assert (m["ir@1"], m["ir@5"], m["ir@10"]) == (0.5, 1.0, 1.0)
    assert (m["ir@1_iou"], m["ir@5_iou"]) == (0.0, 0.5)
    assert (m["queries"], m["unscored_queries"]) == (2, 1)
    assert reir_metrics(qs, {})["ir@10"] == 0.0


# ---------------------------------------------------------------- plumbing
def test_every_protocol_through_evaluate_predictions(tmp_path):
    ds = make_dataset(tmp_path)
    for protocol in PROTOCOLS:
        ev = evaluate_predictions(ds, oracle(ds), protocol=protocol)
        js = ev.to_json()
        if protocol == "resedis":
            assert ev.protocol_metrics == {} and "protocol" not in js
            continue
        assert js["protocol"] == protocol and js[protocol] == ev.protocol_metrics
    assert evaluate_predictions(ds, oracle(ds), protocol="saco").protocol_metrics["cgF1"] == pytest.approx(1.0)
    assert evaluate_predictions(ds, oracle(ds), protocol="d3").protocol_metrics["inter"]["FULL"]["mAP"] == pytest.approx(1.0)
    assert evaluate_predictions(ds, oracle(ds), protocol="reir").protocol_metrics["ir@1"] == 1.0
    with pytest.raises(ValueError, match="protocol"):
        evaluate_predictions(ds, [], protocol="coco")


def test_saco_protocol_equals_default_suite_numbers(tmp_path):
    ds = make_dataset(tmp_path)
    ev = evaluate_predictions(ds, oracle(ds)[:2], protocol="saco")
    for k in ("IL_MCC", "pmF1", "cgF1"):
        assert ev.protocol_metrics[k] == pytest.approx(ev.metrics[k])
    assert protocol_metrics("resedis", ds.queries, {}, ds.images)["cgF1"] == 0.0
