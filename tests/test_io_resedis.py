"""ReSeDis-format loading: grouping, targets in every encoding, absent queries,
malformed inputs (strict -> FormatError naming file and field; lenient -> skip list)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resedis.io import load_dataset
from resedis.io.coco import compressed_rle_counts
from resedis.io.resedis_format import derived_query_id, load_resedis
from resedis.masks import decode_rle, encode_mask
from resedis.types import FormatError

# image id -> (height, width); images 1 and 2 have files, 3 is a listed-only distractor
SIZES = {1: (30, 40), 2: (20, 50), 3: (30, 30)}


def rect(image_id: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros(SIZES[image_id], dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def uncompressed(mask: np.ndarray) -> dict:
    """Slow obvious COCO uncompressed RLE: run lengths of the column-major pixel
    sequence, starting with a (possibly empty) run of zeros."""
    flat = mask.flatten(order="F").astype(int).tolist()
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


MASK_A = rect(1, 5, 10, 10, 20)    # box (10, 5, 20, 10)
MASK_B = rect(1, 12, 25, 2, 8)     # box (2, 12, 8, 25)
POLY_C = [[10, 5, 30, 5, 30, 15, 10, 15]]  # image 2, box (10, 5, 30, 15)


def make_root(tmp_path: Path, records: dict[str, object], *, with_files: bool = True) -> Path:
    root = tmp_path / "ds"
    (root / "expressions").mkdir(parents=True)
    (root / "images").mkdir()
    images = []
    for iid, (h, w) in SIZES.items():
        images.append({"id": iid, "file_name": f"img{iid}.jpg", "width": w, "height": h})
        if with_files and iid != 3:
            Image.new("RGB", (w, h), (iid * 40, 0, 0)).save(root / "images" / f"img{iid}.jpg")
    anns = [{"id": 11, "image_id": 1, "category_id": 7, "attributes": {"color": "red"},
             "segmentation": encode_mask(MASK_A), "bbox": [10, 5, 10, 5], "area": 50}]
    (root / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 7, "name": "cup"}]}))
    for name, content in records.items():
        path = root / "expressions" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return root


def good_records() -> dict[str, object]:
    return {
        "e1.json": {"image_id": 1, "expression": "a red  cup", "category": "cup",
                    "target_annotation": {"11": encode_mask(MASK_A)}},
        "e2.json": {"image_id": 2, "expression": " a red cup\n", "category": "cup",
                    "target_annotation": {"21": POLY_C}},
        "e3.json": {"image_id": 1, "expression": "two things", "category": "thing",
                    "target_annotation": {"a": encode_mask(MASK_A), "b": uncompressed(MASK_B)}},
        "e4.json": {"image_id": 2, "expression": "the blue ball", "query_id": "custom", "type": "attribute",
                    "target_annotation": {"p": POLY_C}},
        "e5.json": {"image_id": 1, "expression": "the blue ball", "query_id": "custom",
                    "target_annotation": {"q": uncompressed(MASK_B)}},
        "e6.json": {"image_id": None, "expression": "a purple elephant", "category": "elephant",
                    "target_annotation": {}, "type": "absent"},
        "e7.json": {"image_id": 2, "expression": "A Red Cup", "target_annotation": {"x": POLY_C}},
    }


@pytest.mark.parametrize("seed", range(5))
def test_uncompressed_helper_matches_pycocotools_compressed(seed):
    m = np.random.default_rng(seed).random((9, 7)) > 0.6
    assert compressed_rle_counts(encode_mask(m)["counts"]) == uncompressed(m)["counts"]


def test_loads_grouped_queries_in_every_encoding(tmp_path):
    ds = load_resedis(make_root(tmp_path, good_records()))
    assert ds.skipped == []
    assert set(ds.images) == {1, 2, 3}
    assert Path(ds.images[1].path).is_absolute() and Path(ds.images[1].path).is_file()
    assert ds.images[3].path is None
    assert (ds.images[2].height, ds.images[2].width) == (20, 50)

    by_expr = {q.expression: q for q in ds.queries}
    # order = first record, files in sorted order
    assert [q.expression for q in ds.queries] == [
        "a red cup", "two things", "the blue ball", "a purple elephant", "A Red Cup"]

    red = by_expr["a red cup"]  # whitespace variants across two files -> one query
    assert red.query_id == "q-" + hashlib.sha1(b"a red cup").hexdigest()[:12] == derived_query_id(" a red  cup ")
    assert red.target_images == [1, 2]
    assert red.category == "cup" and red.type is None
    assert [Path(s).name for s in red.sources] == ["e1.json", "e2.json"]
    assert red.instances[0].box == (10.0, 5.0, 20.0, 10.0)
    assert np.array_equal(decode_rle(red.instances[0].rle), MASK_A)
    assert isinstance(red.instances[0].rle["counts"], str)
    assert red.instances[0].attributes == {"color": "red", "category_id": 7}  # from annotation 11
    poly = red.instances[1]
    assert poly.image_id == 2 and poly.box == (10.0, 5.0, 30.0, 15.0)
    assert decode_rle(poly.rle).shape == (20, 50)

    two = by_expr["two things"]  # several instances in one file, one uncompressed
    assert [i.image_id for i in two.instances] == [1, 1]
    assert np.array_equal(decode_rle(two.instances[1].rle), MASK_B)
    assert two.instances[1].box == (2.0, 12.0, 8.0, 25.0)
    assert two.instances[1].attributes == {}  # key "b" names no annotation

    custom = ds.query("custom")  # explicit query_id groups across files; type from any record
    assert custom.type == "attribute" and custom.target_images == [2, 1]

    absent = by_expr["a purple elephant"]
    assert absent.is_absent and absent.type == "absent" and absent.category == "elephant"

    # case-sensitive: "A Red Cup" is its own query
    assert by_expr["A Red Cup"].query_id != red.query_id and by_expr["A Red Cup"].target_images == [2]


def test_load_dataset_auto_and_determinism(tmp_path):
    root = make_root(tmp_path, good_records())
    a = load_dataset(root)
    b = load_dataset(root, format="resedis")
    assert [(q.query_id, len(q.instances)) for q in a.queries] == [(q.query_id, len(q.instances)) for q in b.queries]


@pytest.mark.parametrize("where, kwargs, error, message", [
    ("ds", {"format": "coco"}, ValueError, "unknown dataset format"),
    (".", {}, FormatError, "not a recognised dataset"),
], ids=["unknown-format", "not-a-dataset"])
def test_load_dataset_refuses(tmp_path, where, kwargs, error, message):
    make_root(tmp_path, good_records())  # tmp_path/ds is a dataset; tmp_path itself is not
    with pytest.raises(error, match=message):
        load_dataset(tmp_path / where, **kwargs)


def test_variants_list_file_jsonl_nested_and_coco_annotations_dir(tmp_path):
    records = good_records()
    root = make_root(tmp_path, {})
    (root / "expressions").rmdir()
    (root / "expressions.json").write_text(json.dumps(list(records.values())))
    ds = load_dataset(root)
    assert len(ds.queries) == 5 and ds.query("custom").target_images == [2, 1]
    assert ds.queries[0].sources[0].endswith("expressions.json[0]")

    root2 = make_root(tmp_path / "b", {})
    (root2 / "annotations").mkdir()
    (root2 / "instances.json").rename(root2 / "annotations" / "instances_val2014.json")
    (root2 / "expressions" / "split" / "part.jsonl").parent.mkdir()
    (root2 / "expressions" / "split" / "part.jsonl").write_text(
        "\n".join(json.dumps(r) for r in records.values()) + "\n\n")
    ds2 = load_dataset(root2)
    assert [q.query_id for q in ds2.queries] == [q.query_id for q in ds.queries]
    assert ds2.queries[1].sources[0].endswith("part.jsonl:3")


def test_duplicate_instance_kept_once_and_reported(tmp_path):
    recs = {"a.json": {"image_id": 1, "expression": "cup", "target_annotation": {"k": encode_mask(MASK_A)}},
            "b.json": {"image_id": 1, "expression": "cup", "target_annotation": {"k": uncompressed(MASK_A)}}}
    ds = load_resedis(make_root(tmp_path, recs))
    assert len(ds.queries) == 1 and len(ds.queries[0].instances) == 1
    assert len(ds.skipped) == 1 and "duplicate instance" in ds.skipped[0].reason
    assert "b.json" in ds.skipped[0].source


GOOD = {"image_id": 1, "expression": "ok", "target_annotation": {"k": encode_mask(MASK_A)}}


def _bad(**changes):
    rec = dict(GOOD, expression="bad one")
    for k, v in changes.items():
        if v is KeyError:
            rec.pop(k)
        else:
            rec[k] = v
    return rec


MALFORMED = [
    ("bad_json", "{not json", "<json>"),
    ("not_object", json.dumps("a string"), "<root>"),
    ("no_expression", _bad(expression=KeyError), "expression"),
    ("expression_type", _bad(expression=12), "expression"),
    ("blank_expression", _bad(expression="   "), "expression"),
    ("no_image_id", _bad(image_id=KeyError), "image_id"),
    ("unknown_image", _bad(image_id=999), "image_id"),
    ("image_id_type", _bad(image_id=[1]), "image_id"),
    ("no_targets_field", _bad(target_annotation=KeyError), "target_annotation"),
    ("targets_list", _bad(target_annotation=[encode_mask(MASK_A)]), "target_annotation"),
    ("empty_targets_with_image", _bad(target_annotation={}), "target_annotation"),
    ("null_image_with_targets", _bad(image_id=None), "target_annotation"),
    ("size_mismatch", _bad(target_annotation={"k": encode_mask(rect(2, 1, 3, 1, 3))}), "target_annotation['k'].size"),
    ("garbage_rle", _bad(target_annotation={"k": {"size": [30, 40], "counts": "!!!!"}}), "target_annotation['k'].counts"),
    ("short_rle", _bad(target_annotation={"k": {"size": [30, 40], "counts": "52"}}), "target_annotation['k'].counts"),
    ("bad_uncompressed", _bad(target_annotation={"k": {"size": [30, 40], "counts": [5, 7]}}), "target_annotation['k']"),
    ("bad_polygon", _bad(target_annotation={"k": [[1, 2, 3]]}), "target_annotation['k']"),
    ("empty_mask", _bad(target_annotation={"k": encode_mask(np.zeros((30, 40), bool))}), "target_annotation['k']"),
    ("bad_type", _bad(type="colour"), "type"),
    ("absent_type_with_targets", _bad(type="absent"), "type"),
    ("category_type", _bad(category=3), "category"),
    ("query_id_type", _bad(query_id=["x"]), "query_id"),
    # conflicts with the good record "ok" (file a_good.json sorts first)
    ("conflicting_type", dict(GOOD, type="position"), "type"),
    ("absent_and_present", dict(GOOD, image_id=None, target_annotation={}), "image_id"),
    ("query_id_other_expression", dict(GOOD, query_id="qq", expression="ok2"), "expression"),
    ("derived_id_collision", dict(GOOD, expression="other", query_id=derived_query_id("ok")), "query_id"),
]


@pytest.mark.parametrize("name,content,field", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_strict_and_lenient(tmp_path, name, content, field):
    first = dict(GOOD, type="attribute")
    if name == "query_id_other_expression":
        first = dict(GOOD, query_id="qq")
    recs = {"a_good.json": first, f"b_{name}.json": content}
    root = make_root(tmp_path, recs)
    with pytest.raises(FormatError) as info:
        load_resedis(root)
    err = info.value
    assert f"b_{name}.json" in err.source and err.field_name == field
    assert f"b_{name}.json" in str(err) and repr(field) in str(err)

    ds = load_resedis(root, strict=False)
    assert len(ds.queries) == 1 and ds.queries[0].expression == "ok" and len(ds.queries[0].instances) == 1
    assert len(ds.skipped) == 1
    assert f"b_{name}.json" in ds.skipped[0].source and repr(field) in ds.skipped[0].reason


BAD_IMAGES = [  # (case, image index, key, value: KeyError removes the key, field named by the error)
    ("height_str", 1, "height", "20", "images[1].height"),
    ("width_zero", 0, "width", 0, "images[0].width"),
    ("no_file_name", 2, "file_name", KeyError, "images[2].file_name"),
    ("no_id", 0, "id", KeyError, "images[0].id"),
    ("duplicate_id", 2, "id", 1, "images[2].id"),
]


@pytest.mark.parametrize("name, i, key, value, field", BAD_IMAGES, ids=[b[0] for b in BAD_IMAGES])
def test_bad_instances_file_is_fatal_even_when_lenient(tmp_path, name, i, key, value, field):
    root = make_root(tmp_path, good_records())
    data = json.loads((root / "instances.json").read_text())
    if value is KeyError:
        data["images"][i].pop(key)
    else:
        data["images"][i][key] = value
    (root / "instances.json").write_text(json.dumps(data))
    with pytest.raises(FormatError) as info:
        load_resedis(root, strict=False)
    assert "instances.json" in info.value.source and info.value.field_name == field


def test_synthetic_corpus_loads(synth_small):
    ds = load_dataset(synth_small)
    assert ds.skipped == []
    assert len(ds.queries) == 30
    assert sum(q.is_absent for q in ds.queries) == 4
    assert all(q.type in ("attribute", "position", "relation", "absent") for q in ds.queries)
    assert all((q.type == "absent") == q.is_absent for q in ds.queries)
    assert len(ds.images) == 24
    assert all(info.path is not None and Path(info.path).is_file() for info in ds.images.values())
    for q in ds.queries:
        for inst in q.instances:
            h, w = ds.images[inst.image_id].height, ds.images[inst.image_id].width
            assert 0 <= inst.box[0] < inst.box[2] <= w and 0 <= inst.box[1] < inst.box[3] <= h
