"""D³ and REIRCOCO loaders on fixture files written from the public format definitions
(d-cube ``doc.md`` / ``d_cube/d3.py``; REIR ``base_reir_dataset.py``), their auto-detection,
and D³'s protocol against the official toolkit when ``d_cube`` is importable."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import pickle
import sys
import types

import numpy as np
import pytest

from resedis.errors import ResedisError
from resedis.eval_protocols.d3 import coco_map
from resedis.io import load_dataset
from resedis.masks import encode_mask
from resedis.types import FormatError, Hit

H, W = 40, 50


def rle_of(x, y, w, h, as_bytes=False):
    m = np.zeros((H, W), dtype=bool)
    m[y:y + h, x:x + w] = True
    rle = encode_mask(m)
    return {"size": rle["size"], "counts": rle["counts"].encode() if as_bytes else rle["counts"]}


def write_d3(root, *, code_form=False):
    """Two groups: {images 0, 1; sentences 1, 2}, {image 2; sentence 3}. Sentence 2 is an
    absence description nobody is annotated with; annotation 2 also carries sentence 3
    (an outer-group link). ``code_form``: segmentation / bbox as the toolkit reads them
    (``segmentation[0]``, ``bbox[0]`` of a (1, 4) array), else as doc.md shows them."""
    pkl = root / "d3_pkl"
    pkl.mkdir(parents=True)

    def seg(x, y, w, h):
        r = rle_of(x, y, w, h, as_bytes=code_form)
        return [r] if code_form else r

    def box(x, y, w, h):
        return np.array([[x, y, w, h]]) if code_form else [x, y, w, h]

    sentences = {
        1: {"id": 1, "raw_sent": "a red  cup", "is_negative": False, "anno_id": [1, 2], "group_id": [1]},
        2: {"id": 2, "raw_sent": "a dog without a leash", "is_negative": True, "anno_id": [], "group_id": [1]},
        3: {"id": 3, "raw_sent": "a cat", "is_negative": False, "anno_id": [2, 3], "group_id": [2]},
    }
    annotations = {
        1: {"id": 1, "sent_id": [1], "segmentation": seg(10, 10, 20, 20), "area": [400], "iscrowd": 0,
            "image_id": 0, "bbox": box(10, 10, 20, 20), "group_id": 1},
        2: {"id": 2, "sent_id": [1, 3], "segmentation": seg(0, 0, 5, 5), "area": [25], "iscrowd": 0,
            "image_id": 1, "bbox": box(0, 0, 5, 5), "group_id": 1},
        3: {"id": 3, "sent_id": [3], "segmentation": seg(5, 5, 30, 20), "area": [600], "iscrowd": 0,
            "image_id": 2, "bbox": box(5, 5, 30, 20), "group_id": 2},
    }
    images = {i: {"id": i, "file_name": f"g/{i}.jpg", "height": H, "width": W, "flickr_url": "",
                  "anno_id": [i + 1], "group_id": 1 if i < 2 else 2, "license": ""} for i in range(3)}
    groups = {
        1: {"id": 1, "pos_sent_id": [1], "inner_sent_id": [1, 2], "outer_sent_id": [3], "img_id": [0, 1],
            "scene": ["kitchen"], "group_name": "cups and dogs", "group_name_zh": ""},
        2: {"id": 2, "pos_sent_id": [3], "inner_sent_id": [3], "outer_sent_id": [], "img_id": [2],
            "scene": ["home"], "group_name": "cats", "group_name_zh": ""},
    }
    for name, data in (("sentences", sentences), ("annotations", annotations), ("images", images), ("groups", groups)):
        (pkl / f"{name}.pkl").write_bytes(pickle.dumps(data))
    return pkl


@pytest.mark.parametrize("code_form", [False, True])
def test_d3_loads_inter_queries_with_scope_and_types(tmp_path, code_form):
    write_d3(tmp_path, code_form=code_form)
    ds = load_dataset(tmp_path)
    assert ds.name == "d3" and sorted(ds.images) == [0, 1, 2]
    q = {x.query_id: x for x in ds.queries}
    assert q["1"].expression == "a red cup" and q["1"].type == "presence" and q["1"].category == "cups and dogs"
    assert sorted(i.image_id for i in q["1"].instances) == [0, 1] and q["1"].scope == [0, 1]
    assert q["1"].instances[0].box == (10.0, 10.0, 30.0, 30.0) and q["1"].instances[0].rle["size"] == [H, W]
    assert q["2"].is_absent and q["2"].type == "absence" and q["2"].scope == [0, 1]
    assert sorted(i.image_id for i in q["3"].instances) == [1, 2] and q["3"].scope == [2]
    assert load_dataset(tmp_path / "d3_pkl").name == "d3"  # the pickle folder itself


def test_d3_errors_strict_and_lenient(tmp_path):
    pkl = write_d3(tmp_path)
    anns = pickle.loads((pkl / "annotations.pkl").read_bytes())
    anns[3]["bbox"] = [1, 2, 3]
    (pkl / "annotations.pkl").write_bytes(pickle.dumps(anns))
    with pytest.raises(FormatError, match=r"annotations.pkl\[3\].*bbox"):
        load_dataset(tmp_path)
    ds = load_dataset(tmp_path, strict=False)
    assert len(ds.skipped) == 1 and "bbox" in ds.skipped[0].reason
    assert [i.image_id for i in ds.query("3").instances] == [1]
    with pytest.raises(ResedisError, match="no splits"):
        load_dataset(tmp_path, split="val")


def _d3_predictions(ds):
    rng = np.random.default_rng(0)
    out = {}
    for q in ds.queries:
        hits = [Hit(i.image_id, tuple(np.array(i.box) + rng.normal(0, 1.5, 4)), float(rng.random()), True)
                for i in q.instances]
        hits += [Hit(int(rng.integers(3)), (1.0, 1.0, 12.0, 14.0), float(rng.random()), True) for _ in range(2)]
        out[q.query_id] = hits
    return out


def test_d3_protocol_intra_drops_out_of_scope_pairs(tmp_path):
    write_d3(tmp_path)
    ds = load_dataset(tmp_path)
    perfect = {q.query_id: [Hit(i.image_id, i.box, 0.9, True) for i in q.instances
                            if q.scope is None or i.image_id in q.scope] for q in ds.queries}
    assert coco_map(ds.queries, perfect, ds.images, setting="intra")["mAP"] == pytest.approx(1.0)
    # inter also asks for sentence 3's object in image 1 (an outer-group link), never predicted here
    assert coco_map(ds.queries, perfect, ds.images, setting="inter")["mAP"] < 1.0


@pytest.mark.parametrize("separated, setting", [(False, "inter"), (True, "intra")])
def test_d3_protocol_matches_official_toolkit(tmp_path, monkeypatch, separated, setting):
    if importlib.util.find_spec("d_cube") is None:
        pytest.skip("the ddd-dataset package (d_cube) is not installed")
    for name in ("cv2", "matplotlib"):  # used only by its drawing helpers
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            stub = types.ModuleType(name)
            monkeypatch.setitem(sys.modules, name, stub)
            if name == "matplotlib":
                stub.pyplot = types.ModuleType("matplotlib.pyplot")
                monkeypatch.setitem(sys.modules, "matplotlib.pyplot", stub.pyplot)
    from d_cube import D3
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    pkl = write_d3(tmp_path, code_form=True)
    ds = load_dataset(tmp_path)
    preds = _d3_predictions(ds)
    with contextlib.redirect_stdout(io.StringIO()):
        D3(str(tmp_path), str(pkl)).convert2coco(str(tmp_path / "coco"), anti_mode=0, is_group_separated=separated)
    dets = [{"image_id": h.image_id, "category_id": int(qid), "score": h.score,
             "bbox": [h.box[0], h.box[1], h.box[2] - h.box[0], h.box[3] - h.box[1]]}
            for qid, hits in preds.items() for h in hits
            if setting == "inter" or h.image_id in ds.query(qid).scope]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    # convert2coco numbers annotations from 0, and pycocotools' COCOeval takes a matched
    # ground-truth id of 0 for "unmatched" (its first box can never be a true positive);
    # resedis numbers from 1. Shift the official ids so both score the same matching.
    official = json.loads((tmp_path / "coco" / "coco_annotations.json").read_text())
    for a in official["annotations"]:
        a["id"] += 1
    (tmp_path / "gt.json").write_text(json.dumps(official))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "gt.json"))
        ev = COCOeval(gt, gt.loadRes(str(tmp_path / "dets.json")), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert coco_map(ds.queries, preds, ds.images, setting=setting)["mAP"] == pytest.approx(ev.stats[0], abs=1e-12)


# ---------------------------------------------------------------- REIRCOCO
def write_reircoco(folder, name="anno.p"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train2014").mkdir(exist_ok=True)
    (folder / "train2014" / "COCO_train2014_000000000007.jpg").write_bytes(b"")  # only its existence matters
    records = [
        {"image_id": 7, "file_name": "COCO_train2014_000000000007.jpg", "height": H, "width": W, "split": "train",
         "ref_anno": {"bbox": [10, 10, 20, 20], "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]], "category_name": "dog"},
         "det_anno": [{"bbox": [10, 10, 20, 20], "category_name": "dog"}],
         "sentences": [{"raw": "The brown DOG on the left"}, {"raw": "a sleeping  dog"}]},
        {"image_id": 9, "file_name": "COCO_train2014_000000000009.jpg", "height": H, "width": W, "split": "val",
         "ref_anno": {"bbox": [0, 0, 5, 5], "segmentation": rle_of(0, 0, 5, 5), "category_name": "cup"},
         "det_anno": [], "sentences": [{"raw": "the small cup"}]},
    ]
    (folder / name).write_bytes(pickle.dumps(records))
    return records


def test_reircoco_loads_by_content_with_splits(tmp_path):
    write_reircoco(tmp_path / "reir")
    ds = load_dataset(tmp_path / "reir")
    assert ds.name == "reircoco" and sorted(ds.images) == [7, 9]
    q = ds.query("0:0")
    assert q.expression == "the brown dog on the left" and q.category == "dog"
    assert q.instances[0].box == (10.0, 10.0, 30.0, 30.0) and q.instances[0].rle["size"] == [H, W]
    assert ds.query("0:1").expression == "a sleeping dog"
    assert ds.images[7].path is not None and ds.images[9].path is None
    val = load_dataset(tmp_path / "reir", split="val")
    assert [x.query_id for x in val.queries] == ["1:0"] and list(val.images) == [9]
    with pytest.raises(FormatError, match="split"):
        load_dataset(tmp_path / "reir", split="testA")


def test_reircoco_errors_strict_and_lenient(tmp_path):
    records = write_reircoco(tmp_path)
    records[1]["ref_anno"]["bbox"] = [0, 0, 5]
    del records[0]["sentences"][1]["raw"]
    (tmp_path / "anno.p").write_bytes(pickle.dumps(records))
    with pytest.raises(FormatError, match=r"anno.p\[0\].*sentences\[1\].raw"):
        load_dataset(tmp_path)
    ds = load_dataset(tmp_path, strict=False)
    assert ds.queries == [] and len(ds.skipped) == 2


def test_unrecognised_folder_names_the_new_formats(tmp_path):
    (tmp_path / "other.p").write_bytes(pickle.dumps([{"a": 1}]))
    with pytest.raises(FormatError, match="D³.*REIRCOCO"):
        load_dataset(tmp_path)
