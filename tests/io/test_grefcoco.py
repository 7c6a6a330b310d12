"""gRefCOCO loading from a tiny grefs(unc).json + instances.json written here, in the
released layout (ann_id int or list, [-1] + no_target for no-target refs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from resedis.baselines import oracle_predictions
from resedis.cli import main as cli_main
from resedis.io import load_dataset, write_predictions
from resedis.io.grefcoco import load_grefcoco
from resedis.masks import decode_rle, encode_mask
from resedis.metrics import evaluate, results_by_query
from resedis.types import FormatError, Hit, QueryResult


def _mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


M1 = _mask(20, 30, 2, 6, 3, 9)  # image 100, ann 1: box (3, 2, 9, 6)
POLY2 = [[15, 10, 25, 10, 25, 18, 15, 18]]  # image 100, ann 2: box (15, 10, 25, 18)
POLY3 = [[10, 10, 30, 10, 30, 20, 10, 20]]  # image 200, ann 3: box (10, 10, 30, 20)


def good_refs() -> list[dict]:
    return [
        {"ref_id": 0, "image_id": 100, "ann_id": [1, 2], "category_id": [1, 1], "split": "val", "no_target": False,
         "file_name": "COCO_train2014_000000000100_0.jpg",
         "sentences": [{"sent": "two people", "raw": "Two people.", "sent_id": 10, "tokens": ["two", "people"]},
                       {"sent": "both  persons", "raw": "both persons", "sent_id": 11, "tokens": []}]},
        {"ref_id": 1, "image_id": 200, "ann_id": [3], "category_id": [2], "split": "train", "no_target": False,
         "sentences": [{"sent": "brown dog", "raw": "brown dog", "sent_id": 12}]},
        {"ref_id": 2, "image_id": 300, "ann_id": [-1], "category_id": [-1], "split": "val", "no_target": True,
         "sentences": [{"sent": "the kid in blue", "raw": "the kid in blue", "sent_id": 13}]},
        {"ref_id": 3, "image_id": 200, "ann_id": 3, "category_id": 2, "split": "testA",  # scalar form
         "sentences": [{"raw": "the dog", "sent_id": 14}]},
        {"ref_id": 4, "image_id": 100, "ann_id": [1], "category_id": [1], "split": "val", "no_target": False,
         "sentences": []},  # the release has such refs; the maintainers say to skip them
    ]


def make_grefcoco(tmp_path: Path, *, refs=None, anns=None) -> Path:
    ddir = tmp_path / "datasets" / "grefcoco"
    ddir.mkdir(parents=True)
    images = [{"id": 100, "file_name": "COCO_train2014_000000000100.jpg", "width": 30, "height": 20},
              {"id": 200, "file_name": "COCO_train2014_000000000200.jpg", "width": 40, "height": 40},
              {"id": 300, "file_name": "COCO_train2014_000000000300.jpg", "width": 10, "height": 10},
              {"id": 400, "file_name": "COCO_train2014_000000000400.jpg", "width": 10, "height": 10}]
    if anns is None:
        anns = [{"id": 1, "image_id": 100, "category_id": 1, "iscrowd": 0, "segmentation": encode_mask(M1)},
                {"id": 2, "image_id": 100, "category_id": 1, "iscrowd": 0, "segmentation": POLY2},
                {"id": 3, "image_id": 200, "category_id": 2, "iscrowd": 0, "segmentation": POLY3}]
    (ddir / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": anns,
         "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}]}))
    (ddir / "grefs(unc).json").write_text(json.dumps(good_refs() if refs is None else refs))
    return ddir


def test_multi_target_no_target_and_empty_refs(tmp_path):
    ddir = make_grefcoco(tmp_path)
    ds = load_grefcoco(tmp_path / "datasets")
    assert ds.name == "grefcoco(unc)" and ds.root == str(ddir)
    assert [q.query_id for q in ds.queries] == ["10", "11", "12", "13", "14"]
    assert [q.expression for q in ds.queries] == ["two people", "both persons", "brown dog", "the kid in blue", "the dog"]
    assert [q.type for q in ds.queries] == ["multi-target"] * 2 + ["single-target", "no-target", "single-target"]
    assert [q.category for q in ds.queries] == ["person", "person", "dog", None, "dog"]

    multi = ds.query("10")
    assert not multi.is_absent and multi.target_images == [100]
    assert [i.instance_id for i in multi.instances] == ["1", "2"]
    assert [i.box for i in multi.instances] == [(3.0, 2.0, 9.0, 6.0), (15.0, 10.0, 25.0, 18.0)]
    assert np.array_equal(decode_rle(multi.instances[0].rle), M1)
    assert decode_rle(multi.instances[1].rle).sum() == 10 * 8  # polygon rasterised by pycocotools
    assert multi.instances[0].attributes == {"category_id": 1, "ref_id": 0}

    no_target = ds.query("13")
    assert no_target.is_absent and no_target.instances == [] and no_target.target_images == []
    assert ds.query("14").instances[0].box == (10.0, 10.0, 30.0, 20.0)  # scalar ann_id accepted

    assert set(ds.images) == {100, 200, 300, 400}  # no split: the whole instances file
    assert len(ds.skipped) == 1 and "grefs(unc).json[4]" in ds.skipped[0].source
    assert "no sentences" in ds.skipped[0].reason


def test_split_filter_and_auto_detection(tmp_path):
    ddir = make_grefcoco(tmp_path)
    val = load_grefcoco(tmp_path / "datasets", split="val")
    assert val.name == "grefcoco(unc)-val"
    assert [q.query_id for q in val.queries] == ["10", "11", "13"]
    assert set(val.images) == {100, 300}  # the no-target ref's image is part of the corpus
    train = load_grefcoco(ddir, split="train")
    assert [q.query_id for q in train.queries] == ["12"] and set(train.images) == {200}
    with pytest.raises(FormatError) as info:
        load_grefcoco(ddir, split="nope")
    assert info.value.field_name == "split" and "grefs(unc).json" in info.value.source

    for path in (tmp_path / "datasets", ddir):
        auto = load_dataset(path)
        assert auto.name == "grefcoco(unc)" and [q.query_id for q in auto.queries] == ["10", "11", "12", "13", "14"]
    assert load_dataset(ddir, format="grefcoco").name == "grefcoco(unc)"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="grefs"):
        load_dataset(tmp_path / "empty", format="grefcoco")


def test_image_paths_resolved(tmp_path):
    make_grefcoco(tmp_path)
    img_dir = tmp_path / "datasets" / "images" / "train2014"  # ReLA's layout
    img_dir.mkdir(parents=True)
    (img_dir / "COCO_train2014_000000000300.jpg").write_bytes(b"x")
    ds = load_grefcoco(tmp_path / "datasets")
    assert ds.images[300].path == str((img_dir / "COCO_train2014_000000000300.jpg").resolve())
    assert ds.images[100].path is None


BAD_REFS = [
    ("unknown_image", {"image_id": 999}, "image_id"),
    ("unknown_ann", {"ann_id": [3, 77]}, "ann_id"),
    ("ann_of_other_image", {"ann_id": [1]}, "ann_id"),
    ("no_target_mixed", {"ann_id": [3, -1]}, "ann_id"),
    ("ann_id_empty", {"ann_id": []}, "ann_id"),
    ("ann_id_string", {"ann_id": "3"}, "ann_id"),
    ("no_target_disagrees", {"no_target": True}, "no_target"),
    ("no_target_not_bool", {"no_target": "no"}, "no_target"),
    ("no_target_flag_missing", {"ann_id": [-1], "no_target": False}, "no_target"),
    ("sentences_not_list", {"sentences": "a dog"}, "sentences"),
    ("no_sent_id", {"sentences": [{"sent": "x"}]}, "sentences[0].sent_id"),
    ("empty_text", {"sentences": [{"sent": "  ", "sent_id": 20}]}, "sentences[0].sent"),
    ("duplicate_sent_id", {"sentences": [{"sent": "x", "sent_id": 10}]}, "sent_id"),
    ("duplicate_sent_id_in_ref", {"sentences": [{"sent": "x", "sent_id": 20}, {"sent": "y", "sent_id": 20}]}, "sent_id"),
    ("missing_ref_id", {"ref_id": KeyError}, "ref_id"),
    ("missing_ann_id", {"ann_id": KeyError}, "ann_id"),
]


@pytest.mark.parametrize("name,change,field", BAD_REFS, ids=[b[0] for b in BAD_REFS])
def test_bad_ref_strict_and_lenient(tmp_path, name, change, field):
    good = {"ref_id": 0, "image_id": 100, "ann_id": [1, 2], "category_id": [1, 1], "split": "val",
            "no_target": False, "sentences": [{"sent": "two people", "sent_id": 10}]}
    bad = {"ref_id": 1, "image_id": 200, "ann_id": [3], "category_id": [2], "split": "val", "no_target": False,
           "sentences": [{"sent": "brown dog", "sent_id": 12}]}
    for k, v in change.items():
        if v is KeyError:
            bad.pop(k)
        else:
            bad[k] = v
    make_grefcoco(tmp_path, refs=[good, bad])
    with pytest.raises(FormatError) as info:
        load_grefcoco(tmp_path / "datasets")
    assert info.value.source.endswith("grefs(unc).json[1]") and info.value.field_name == field
    ds = load_grefcoco(tmp_path / "datasets", strict=False)
    assert [q.query_id for q in ds.queries] == ["10"]
    assert len(ds.skipped) == 1 and ds.skipped[0].source.endswith("grefs(unc).json[1]")
    assert f"field {field!r}" in ds.skipped[0].reason


def test_bad_segmentation_names_instances_file(tmp_path):
    anns = [{"id": 1, "image_id": 100, "category_id": 1, "segmentation": {"size": [21, 30], "counts": "x"}},
            {"id": 2, "image_id": 100, "category_id": 1, "segmentation": POLY2},
            {"id": 3, "image_id": 200, "category_id": 2, "segmentation": [[1, 2]]}]
    make_grefcoco(tmp_path, anns=anns)
    with pytest.raises(FormatError) as info:
        load_grefcoco(tmp_path / "datasets")
    assert info.value.source.endswith("instances.json (annotation 1)") and info.value.field_name == "segmentation.size"
    ds = load_grefcoco(tmp_path / "datasets", strict=False)
    # refs 0 and 4 use annotation 1, refs 1 and 3 annotation 3: only the no-target ref survives
    assert [q.query_id for q in ds.queries] == ["13"]
    reasons = [s.reason for s in ds.skipped]
    assert sum("'segmentation.size'" in r for r in reasons) == 2 and sum("'segmentation'" in r for r in reasons) == 2


def test_refs_file_not_a_list_and_bad_json(tmp_path):
    ddir = make_grefcoco(tmp_path, refs={"refs": []})
    with pytest.raises(FormatError) as info:
        load_grefcoco(ddir)
    assert info.value.field_name == "<root>" and info.value.source.endswith("grefs(unc).json")
    (ddir / "grefs(unc).json").write_text("[{")
    with pytest.raises(FormatError) as info:
        load_grefcoco(ddir)
    assert info.value.field_name == "<json>"


def test_repeated_ann_id_kept_once_and_reported(tmp_path):
    refs = [{"ref_id": 0, "image_id": 100, "ann_id": [1, 2, 1], "category_id": [1, 1, 1], "split": "val",
             "sentences": [{"sent": "two people", "sent_id": 10}]}]
    make_grefcoco(tmp_path, refs=refs)
    ds = load_grefcoco(tmp_path / "datasets")  # not an error, even in strict mode
    assert [i.instance_id for i in ds.query("10").instances] == ["1", "2"]
    assert len(ds.skipped) == 1 and "annotation 1 listed twice" in ds.skipped[0].reason


def test_oracle_round_trip_scores_one_and_no_target_is_absent(tmp_path):
    make_grefcoco(tmp_path)
    ds = load_grefcoco(tmp_path / "datasets")
    oracle = oracle_predictions(ds)
    assert [len(r.hits) for r in oracle] == [2, 2, 1, 0, 1]
    m = evaluate(ds.queries, results_by_query(oracle))
    assert m["queries"] == 5 and m["absent_queries"] == 1
    for key in ("IR@1", "IR@5", "IR@10", "Pr@50", "mAP50", "precision", "recall", "F1", "N_acc"):
        assert m[key] == pytest.approx(1.0), key
    assert all(m[f"BR@{k}@{t}"] == pytest.approx(1.0) for k in (1, 5, 10) for t in (0.5, 0.7, 0.9))
    assert m["FA_per_query"] == 0.0 and m["Pr@50_count"] == 4

    # a present detection for the no-target expression, even in its own image, is a false alarm
    wrong = [r if r.query_id != "13" else QueryResult("13", r.expression, [Hit(300, (0, 0, 5, 5), 0.9, True)])
             for r in oracle]
    m2 = evaluate(ds.queries, results_by_query(wrong))
    assert m2["N_acc"] == 0.0 and m2["FA_per_query"] == pytest.approx(1 / 5)
    assert m2["precision"] == pytest.approx(6 / 7) and m2["recall"] == pytest.approx(1.0)


def test_cli_eval_on_grefcoco_dir(tmp_path, capsys):
    make_grefcoco(tmp_path)
    ds = load_dataset(tmp_path / "datasets")
    preds = tmp_path / "oracle.jsonl"
    write_predictions(preds, oracle_predictions(ds))
    out = tmp_path / "metrics.json"
    assert cli_main(["eval", "--dataset", str(tmp_path / "datasets"), "--predictions", str(preds),
                     "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["IR@1"] == pytest.approx(1.0) and metrics["N_acc"] == pytest.approx(1.0)
    assert set(metrics["breakdown"]["type"]) == {"single-target", "multi-target", "no-target"}
    assert "no sentences" in capsys.readouterr().err  # the skipped empty ref is reported
