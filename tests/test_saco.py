"""SA-Co presence metrics (IL_MCC, pmF1, cgF1): hand tables, the slow reference, and the
official evaluator (sam3/eval/cgf1_eval.py) when the ``sam3`` package is importable."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest

from reference_metrics import ref_presence
from resedis.eval_protocols.saco import IOU_THRESHOLDS, PresenceCounts, mcc, pair_counts, presence_scores
from resedis.metrics import evaluate
from resedis.types import Hit, Instance, Query

from test_metrics import hit, inst, query


def test_thresholds_are_cocoeval_defaults():
    assert IOU_THRESHOLDS.shape == (10,) and IOU_THRESHOLDS[0] == 0.5 and IOU_THRESHOLDS[-1] == 0.95


@pytest.mark.parametrize("ious, il, tp", [
    (np.zeros((0, 0)), (0, 0, 0, 1), [0] * 10),          # nothing: true negative
    (np.zeros((0, 2)), (0, 0, 1, 0), [0] * 10),          # targets only: false negative
    (np.zeros((3, 0)), (0, 1, 0, 0), [0] * 10),          # predictions only: false positive
    (np.array([[0.72]]), (1, 0, 0, 0), [1] * 5 + [0] * 5),  # 0.5..0.70 hit, 0.75.. miss
    # Hungarian (max total IoU) takes 0.5 + 0.55, where greedy-by-row would take 0.6 alone
    (np.array([[0.6, 0.5], [0.55, 0.0]]), (1, 0, 0, 0), [2, 1] + [0] * 8),
])
def test_pair_counts_table(ious, il, tp):
    c = pair_counts(ious)
    assert (c.il_tp, c.il_fp, c.il_fn, c.il_tn) == il
    assert c.tp.tolist() == tp


def test_mcc_table():
    assert mcc(1, 1, 1, 9) == pytest.approx(0.4)  # (9 - 1) / sqrt(2·2·10·10)
    assert mcc(5, 0, 0, 5) == 1.0 and mcc(0, 5, 5, 0) == -1.0
    assert mcc(3, 2, 0, 0) == 0.0  # a zero marginal: 0, not NaN


def _hand_case():
    """Corpus of 4 images. Query a: two targets in image 1, found at IoU 1.0 and 100/120,
    plus a decided detection in image 2. b: absent, nothing decided. c: one target in 3, missed."""
    qs = [query("a", [inst(1, (0, 0, 10, 10)), inst(1, (20, 0, 30, 10))]), query("b"), query("c", [inst(3, (0, 0, 10, 10))])]
    res = {"a": [hit(1, (0, 0, 10, 10), 0.9), hit(1, (20, 0, 30, 12), 0.8), hit(2, (0, 0, 5, 5), 0.7),
                 hit(4, (0, 0, 5, 5), 0.6, present=False)],
           "c": [hit(3, (0, 0, 10, 10), 0.2, present=False)]}
    return qs, res


def test_hand_computed_table():
    qs, res = _hand_case()
    m = evaluate(qs, res, n_images=4)
    # pairs: a-1 TP, a-2 FP, a-3/a-4 TN, b: 4 TN, c-3 FN, c-1/2/4 TN -> TP 1, FP 1, FN 1, TN 9
    assert m["IL_MCC"] == pytest.approx(0.4)
    # IoU 100/120 = 0.833 clears 0.50..0.80 (7 thresholds): TP 2 of 2 predictions, 3 targets -> F1 0.8;
    # at 0.85..0.95: TP 1 -> P 0.5, R 1/3, F1 0.4
    assert m["pmF1"] == pytest.approx((7 * 0.8 + 3 * 0.4) / 10)
    assert m["cgF1"] == pytest.approx(0.68 * 0.4)
    assert evaluate(qs, res)["IL_MCC"] is None and evaluate(qs, res)["cgF1"] is None  # corpus size unknown
    assert evaluate(qs, res)["pmF1"] == pytest.approx(0.68)  # pmF1 needs no negatives


def test_scores_at_single_thresholds():
    c = PresenceCounts(1, 1, 1, 9, np.array([2] * 7 + [1] * 3), 2, 3)
    s = presence_scores(c)
    assert s["pmF1@50"] == pytest.approx(0.8) and s["cgF1@50"] == pytest.approx(0.32)
    assert s["pmF1@75"] == pytest.approx(0.8) and s["IL_precision"] == 0.5 and s["IL_recall"] == 0.5


def test_n_images_smaller_than_used_images_is_an_error():
    qs, res = _hand_case()
    with pytest.raises(ValueError, match="corpus size"):
        evaluate(qs, res, n_images=1)


def test_perfect_and_empty():
    qs, res = _hand_case()
    perfect = {q.query_id: [Hit(i.image_id, i.box, 1.0, True) for i in q.instances] for q in qs}
    m = evaluate(qs, perfect, n_images=4)
    assert (m["IL_MCC"], m["pmF1"], m["cgF1"]) == (1.0, 1.0, 1.0)
    m = evaluate(qs, {}, n_images=4)
    assert (m["IL_MCC"], m["pmF1"], m["cgF1"]) == (0.0, 0.0, 0.0)


# ---------------------------------------------------------------- random data vs references
def _random_case(rng):
    n_images = int(rng.integers(2, 7))
    queries, results = [], {}
    for qi in range(int(rng.integers(1, 7))):
        instances = []
        for img in range(n_images):
            for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.4 else 0):
                x, y = rng.integers(0, 60, size=2)
                w, h = rng.integers(5, 40, size=2)
                instances.append(Instance(img, None, (float(x), float(y), float(x + w), float(y + h))))
        hits = []
        for t in instances:
            if rng.random() < 0.7:
                j = rng.normal(0, 4, size=4)
                b = np.array(t.box) + j
                hits.append(Hit(t.image_id, (float(min(b[0], b[2] - 1)), float(min(b[1], b[3] - 1)), float(b[2]), float(b[3])),
                                float(rng.random()), bool(rng.random() < 0.8)))
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.integers(0, 60, size=2)
            hits.append(Hit(int(rng.integers(n_images)), (float(x), float(y), float(x + 20), float(y + 20)),
                            float(rng.random()), bool(rng.random() < 0.5)))
        queries.append(Query(f"q{qi}", f"expr {qi}", instances))
        results[f"q{qi}"] = hits
    return queries, results, n_images


@pytest.mark.parametrize("seed", range(30))
def test_matches_slow_reference(seed):
    queries, results, n_images = _random_case(np.random.default_rng(seed))
    got, want = evaluate(queries, results, n_images=n_images), ref_presence(queries, results, "box", n_images)
    for k in ("IL_MCC", "pmF1", "cgF1"):
        assert got[k] == pytest.approx(want[k], abs=1e-12), k


def _official_evaluator():
    spec = importlib.util.find_spec("sam3")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "eval" / "cgf1_eval.py"
    if not path.is_file():
        return None
    mod_spec = importlib.util.spec_from_file_location("sam3_cgf1_eval_official", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)  # numpy, pycocotools, scipy, tqdm only; not sam3/__init__
    return module.CGF1Evaluator


@pytest.mark.parametrize("seed", range(6))
def test_matches_official_cgf1_evaluator(seed, tmp_path):
    """Each (query, image) pair becomes one COCO 'image' of the official evaluator; present
    detections get score 1, the others 0 (its threshold is 0.5)."""
    Evaluator = _official_evaluator()
    if Evaluator is None:
        pytest.skip("the sam3 package (sam3/eval/cgf1_eval.py) is not installed")
    queries, results, n_images = _random_case(np.random.default_rng(100 + seed))
    images, anns, dets = [], [], []
    for qi, q in enumerate(queries):
        for img in range(n_images):
            pid = qi * n_images + img + 1
            images.append({"id": pid, "height": 200, "width": 200, "is_instance_exhaustive": True})
            for i in q.instances_of(img):
                x0, y0, x1, y1 = i.box
                anns.append({"id": len(anns) + 1, "image_id": pid, "category_id": 1, "iscrowd": 0,
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
            for h in results[q.query_id]:
                if h.image_id == img:
                    x0, y0, x1, y1 = h.box
                    dets.append({"image_id": pid, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                 "score": 1.0 if h.present else 0.0})
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(dets))
    with contextlib.redirect_stdout(io.StringIO()):
        ev = Evaluator(str(gt), iou_type="bbox")
        ev.evaluate(str(pred))
    official = ev.coco_evals[0].eval
    got = evaluate(queries, results, n_images=n_images)
    # the official code adds 1e-4 / 1e-6 to denominators; agreement to 1e-3
    assert got["IL_MCC"] == pytest.approx(official["IL_MCC"], abs=1e-3)
    assert got["pmF1"] == pytest.approx(float(np.mean(official["positive_micro_F1"])), abs=1e-3)
    assert got["cgF1"] == pytest.approx(float(np.mean(official["cgF1"])), abs=1e-3)
