"""COCO results in and out: format checks, category maps, and the round trip
resedis -> COCO -> resedis keeping every metric."""

from __future__ import annotations

import json

import pytest

from evalkit import make_dataset, oracle
from resedis.eval import evaluate_predictions
from resedis.io import is_coco_results_file, load_category_map, read_coco_results, write_coco_results, write_predictions
from resedis.types import FormatError, Hit, QueryResult


def _mixed_predictions(ds):
    """Oracle hits (with masks) for some queries, shifted and undecided ones for others,
    a false alarm on the absent query, and score ties (file order must survive)."""
    out = []
    for k, q in enumerate(ds.queries):
        hits = [Hit(i.image_id, i.box, 1.0 - 0.01 * n, True, mask=i.rle) for n, i in enumerate(q.instances)]
        if k % 2:
            hits = [Hit(h.image_id, (h.box[0] + 7, h.box[1], h.box[2] + 7, h.box[3]), 0.5, False) for h in hits]
        hits.append(Hit(1, (0.0, 0.0, 30.0, 30.0), 0.5, True))
        out.append(QueryResult(q.query_id, q.expression, hits))
    return out


@pytest.mark.parametrize("iou", ["box", "mask"])
def test_round_trip_keeps_metrics(tmp_path, iou):
    ds = make_dataset(tmp_path)
    preds = _mixed_predictions(ds)
    path = write_coco_results(tmp_path / "r.json", preds)
    assert is_coco_results_file(path)
    back = read_coco_results(path)
    a = evaluate_predictions(ds, preds, iou=iou)
    b = evaluate_predictions(ds, back, iou=iou)
    assert a.metrics == b.metrics and a.per_query == b.per_query
    rec = json.loads(path.read_text())[0]
    q0 = preds[0].hits[0]
    assert rec["bbox"] == [q0.box[0], q0.box[1], q0.box[2] - q0.box[0], q0.box[3] - q0.box[1]]  # xywh on disk


def test_digit_query_ids_become_int_categories_and_maps_apply(tmp_path):
    res = [QueryResult("12", "", [Hit(5, (1.0, 2.0, 4.0, 6.0), 0.7, True)])]
    path = write_coco_results(tmp_path / "r.json", res)
    assert json.loads(path.read_text()) == [{"image_id": 5, "category_id": 12, "bbox": [1.0, 2.0, 3.0, 4.0],
                                              "score": 0.7, "present": True}]
    (tmp_path / "map.json").write_text(json.dumps({"12": "q_cup"}))
    back = read_coco_results(path, category_map=load_category_map(tmp_path / "map.json"))
    assert [r.query_id for r in back] == ["q_cup"] and back[0].hits[0].box == (1.0, 2.0, 4.0, 6.0)
    with pytest.raises(FormatError, match="category 12 is not in the category map"):
        read_coco_results(path, category_map={"3": "x"})


def test_other_tools_results_default_to_present(tmp_path):
    path = tmp_path / "det.json"
    path.write_text(json.dumps([{"image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "score": 0.2}]))
    (r,) = read_coco_results(path)
    assert r.query_id == "3" and r.hits[0].present is True and r.hits[0].box == (0.0, 0.0, 10.0, 10.0)


@pytest.mark.parametrize("records, match", [
    ({"a": 1}, "expected a JSON list"),
    ([{"image_id": 1, "category_id": 3, "score": 0.2}], "bbox"),
    ([{"image_id": 1, "category_id": 3, "bbox": [0, 0, -1, 2], "score": 0.2}], "negative width"),
    ([{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1], "score": 0.2}], r"\[x, y, w, h\]"),
    ([{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": "high"}], "score"),
])
def test_bad_results_name_the_problem(tmp_path, records, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records))
    with pytest.raises(FormatError, match=match):
        read_coco_results(path)


def test_jsonl_predictions_are_not_coco(tmp_path):
    ds = make_dataset(tmp_path)
    path = write_predictions(tmp_path / "p.jsonl", oracle(ds))
    assert not is_coco_results_file(path)
