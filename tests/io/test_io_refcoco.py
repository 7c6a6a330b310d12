"""RefCOCO-family loading from a tiny refs pickle + instances.json written here."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from resedis.io import load_dataset
from resedis.io.refcoco import load_refcoco
from resedis.masks import decode_rle, encode_mask
from resedis.types import FormatError


def _mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


M100 = _mask(20, 30, 2, 6, 3, 9)  # image 100, box (3, 2, 9, 6)


def make_refcoco(tmp_path: Path, *, name="refcoco", split_by="unc", refs=None, anns=None) -> Path:
    ddir = tmp_path / "data" / name
    ddir.mkdir(parents=True)
    images = [{"id": 100, "file_name": "COCO_train2014_000000000100.jpg", "width": 30, "height": 20},
              {"id": 200, "file_name": "COCO_train2014_000000000200.jpg", "width": 40, "height": 40},
              {"id": 300, "file_name": "COCO_train2014_000000000300.jpg", "width": 10, "height": 10}]
    if anns is None:
        anns = [{"id": 1, "image_id": 100, "category_id": 1, "segmentation": encode_mask(M100)},
                {"id": 2, "image_id": 200, "category_id": 2, "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]}]
    (ddir / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": anns,
         "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}]}))
    if refs is None:
        refs = [
            {"ref_id": 0, "ann_id": 1, "image_id": 100, "split": "train", "category_id": 1,
             "sentences": [{"sent": "man on left", "raw": "Man on left.", "sent_id": 10},
                           {"sent": "left  guy", "raw": "left guy", "sent_id": 11}]},
            {"ref_id": 1, "ann_id": 2, "image_id": 200, "split": "testA", "category_id": 2,
             "sentences": [{"sent": "brown dog", "raw": "brown dog", "sent_id": 12}]},
        ]
    with open(ddir / f"refs({split_by}).p", "wb") as f:
        pickle.dump(refs, f)
    return ddir


def test_one_query_per_sentence(tmp_path):
    ddir = make_refcoco(tmp_path)
    ds = load_refcoco(tmp_path / "data")
    assert [q.query_id for q in ds.queries] == ["10", "11", "12"]
    assert [q.expression for q in ds.queries] == ["man on left", "left guy", "brown dog"]
    assert [q.category for q in ds.queries] == ["person", "person", "dog"]
    q = ds.query("10")
    assert q.target_images == [100] and len(q.instances) == 1
    assert q.instances[0].box == (3.0, 2.0, 9.0, 6.0)
    assert np.array_equal(decode_rle(q.instances[0].rle), M100)
    dog = ds.query("12").instances[0]
    assert dog.image_id == 200 and dog.box == (10.0, 10.0, 30.0, 20.0)
    assert set(ds.images) == {100, 200, 300}  # no split: the whole instances file
    assert ds.root == str(ddir)


def test_split_filter_and_auto_detection(tmp_path):
    make_refcoco(tmp_path, name="refcocog", split_by="umd")
    ds = load_refcoco(tmp_path / "data", dataset="refcocog", split_by="umd", split="testA")
    assert [q.query_id for q in ds.queries] == ["12"] and set(ds.images) == {200}
    auto = load_dataset(tmp_path / "data" / "refcocog")
    assert auto.name == "refcocog(umd)" and len(auto.queries) == 3
    auto_parent = load_dataset(tmp_path / "data")
    assert [q.query_id for q in auto_parent.queries] == ["10", "11", "12"]
    with pytest.raises(FormatError, match="split"):
        load_refcoco(tmp_path / "data", dataset="refcocog", split_by="umd", split="nope")


def test_image_paths_resolved(tmp_path):
    ddir = make_refcoco(tmp_path)
    (ddir / "images").mkdir()
    (ddir / "images" / "COCO_train2014_000000000100.jpg").write_bytes(b"x")
    ds = load_refcoco(ddir)
    assert ds.images[100].path == str((ddir / "images" / "COCO_train2014_000000000100.jpg").resolve())
    assert ds.images[200].path is None


BAD_REFS = [
    ("unknown_image", {"image_id": 999}, "image_id"),
    ("unknown_ann", {"ann_id": 77}, "ann_id"),
    ("ann_of_other_image", {"ann_id": 2}, "ann_id"),
    ("no_sentences", {"sentences": []}, "sentences"),
    ("no_sent_id", {"sentences": [{"sent": "x"}]}, "sentences[0].sent_id"),
    ("duplicate_sent_id", {"sentences": [{"sent": "x", "sent_id": 12}]}, "sent_id"),
    ("missing_ref_id", {"ref_id": KeyError}, "ref_id"),
]


@pytest.mark.parametrize("name,change,field", BAD_REFS, ids=[b[0] for b in BAD_REFS])
def test_bad_ref_strict_and_lenient(tmp_path, name, change, field):
    good = {"ref_id": 1, "ann_id": 2, "image_id": 200, "split": "val", "category_id": 2,
            "sentences": [{"sent": "brown dog", "sent_id": 12}]}
    bad = {"ref_id": 0, "ann_id": 1, "image_id": 100, "split": "val", "category_id": 1,
           "sentences": [{"sent": "man", "sent_id": 10}]}
    for k, v in change.items():
        if v is KeyError:
            bad.pop(k)
        else:
            bad[k] = v
    make_refcoco(tmp_path, refs=[good, bad])
    with pytest.raises(FormatError) as info:
        load_refcoco(tmp_path / "data")
    assert "refs(unc).p[1]" in info.value.source and info.value.field_name == field
    ds = load_refcoco(tmp_path / "data", strict=False)
    assert [q.query_id for q in ds.queries] == ["12"]
    assert len(ds.skipped) == 1 and "refs(unc).p[1]" in ds.skipped[0].source


def test_bad_segmentation_and_pickle(tmp_path):
    anns = [{"id": 1, "image_id": 100, "category_id": 1, "segmentation": {"size": [21, 30], "counts": "x"}},
            {"id": 2, "image_id": 200, "category_id": 2, "segmentation": [[1, 2]]}]
    make_refcoco(tmp_path, anns=anns)
    with pytest.raises(FormatError) as info:
        load_refcoco(tmp_path / "data")
    assert "instances.json (annotation 1)" in info.value.source and info.value.field_name == "segmentation.size"
    ds = load_refcoco(tmp_path / "data", strict=False)
    assert ds.queries == [] and len(ds.skipped) == 2
    assert "'segmentation'" in ds.skipped[1].reason

    (tmp_path / "data" / "refcoco" / "refs(unc).p").write_bytes(b"not a pickle")
    with pytest.raises(FormatError, match="cannot unpickle"):
        load_refcoco(tmp_path / "data")
