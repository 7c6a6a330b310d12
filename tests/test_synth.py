"""The synthetic benchmark: layout, COCO validity, exact targets, determinism, CLI.

The central check re-parses every written expression TEXT and re-evaluates it with a
slow, independent implementation of the documented semantics (loops over the
``instances.json`` attributes and bboxes), then compares with the written targets.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as cocomask
from scipy import ndimage

from resedis.errors import ResedisError
from resedis.masks import decode_rle
from resedis.synth import Expression, ObjectTable, evaluate
from resedis.synth.grammar import NounPhrase

SHAPES = ["circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "ring"]
COLOURS = {
    "red": (220, 35, 35), "green": (35, 165, 60), "blue": (40, 80, 225), "yellow": (245, 215, 30),
    "purple": (145, 50, 190), "orange": (245, 135, 20), "white": (246, 246, 246), "black": (22, 22, 22),
}
SIZES = ["small", "large"]


# ---------------------------------------------------------------- loading helpers
def load(root: Path):
    coco = json.loads((root / "instances.json").read_text())
    files = sorted((root / "expressions").glob("*.json"))
    records = [(f, json.loads(f.read_text())) for f in files]
    return coco, records


def queries_of(records):
    """query_id -> (expression, type, {image_id: {ann_id: rle}})."""
    out: dict[str, tuple[str, str, dict]] = {}
    for _, rec in records:
        expr, typ, targets = out.setdefault(rec["query_id"], (rec["expression"], rec["type"], {}))
        assert rec["expression"] == expr and rec["type"] == typ
        if rec["image_id"] is not None:
            assert rec["image_id"] not in targets
            targets[rec["image_id"]] = rec["target_annotation"]
    return out


# ---------------------------------------------------------------- independent semantics
NP = r"(?:(small|large) )?(?:(" + "|".join(COLOURS) + r") )?(" + "|".join(SHAPES) + r")"
POS = {
    "on the left": "L", "on the right": "R", "at the top": "T", "at the bottom": "B", "in the middle": "M",
    "in the top left corner": "TL", "in the top right corner": "TR",
    "in the bottom left corner": "BL", "in the bottom right corner": "BR",
}
REL = ["to the left of", "to the right of", "above", "below", "next to"]


def parse(text: str) -> dict:
    m = re.fullmatch(r"the (largest|smallest) " + NP, text)
    if m:
        assert m.group(2) is None, "superlatives take no size word"
        return {"sup": m.group(1), "head": m.group(2, 3, 4)}
    m = re.fullmatch(r"(?:the|a) " + NP + r"(?: (" + "|".join(POS) + r"))?(?: (" + "|".join(REL) + r") the " + NP + ")?", text)
    assert m, f"expression outside the grammar: {text!r}"
    out = {"head": m.group(1, 2, 3), "pos": m.group(4), "rel": m.group(5)}
    if out["rel"]:
        out["ref"] = m.group(6, 7, 8)
    assert not (out["pos"] and out["rel"])
    return out


def np_matches(np_, ann) -> bool:
    size, colour, shape = np_
    a = ann["attributes"]
    return a["shape"] == shape and (colour is None or a["color"] == colour) and (size is None or a["size"] == size)


def box(ann):
    x, y, w, h = ann["bbox"]
    return x, y, x + w, y + h


def at_position(ann, img, code) -> bool:
    x0, y0, x1, y1 = box(ann)
    cx, cy, W, H = (x0 + x1) / 2, (y0 + y1) / 2, img["width"], img["height"]
    horiz = "L" if cx < W / 3 else ("R" if cx > 2 * W / 3 else "C")
    vert = "T" if cy < H / 3 else ("B" if cy > 2 * H / 3 else "C")
    if code == "M":
        return horiz == "C" and vert == "C"
    return all(c in (horiz, vert) for c in code)


def related(a, b, img, rel) -> bool:
    ax0, ay0, ax1, ay1 = box(a)
    bx0, by0, bx1, by1 = box(b)
    if rel == "to the left of":
        return ax1 <= bx0
    if rel == "to the right of":
        return ax0 >= bx1
    if rel == "above":
        return ay1 <= by0
    if rel == "below":
        return ay0 >= by1
    gap = max(max(0, bx0 - ax1, ax0 - bx1), max(0, by0 - ay1, ay0 - by1))
    return gap <= 0.05 * min(img["width"], img["height"])


def reference_targets(text: str, coco: dict) -> dict[int, set[int]]:
    """Slow, obvious evaluation over every object of every image: {image_id: {ann_id}}."""
    q = parse(text)
    by_image = defaultdict(list)
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    out: dict[int, set[int]] = {}
    for img in coco["images"]:
        anns = by_image[img["id"]]
        hits = set()
        heads = [a for a in anns if np_matches(q["head"], a)]
        if "sup" in q:
            for a in heads:
                others = [o for o in heads if o is not a]
                if not others:
                    continue
                if q["sup"] == "largest" and all(a["area"] >= 1.2 * o["area"] for o in others):
                    hits.add(a["id"])
                if q["sup"] == "smallest" and all(1.2 * a["area"] <= o["area"] for o in others):
                    hits.add(a["id"])
        else:
            for a in heads:
                if q["pos"] and not at_position(a, img, POS[q["pos"]]):
                    continue
                if q["rel"] and not any(
                    b is not a and np_matches(q["ref"], b) and related(a, b, img, q["rel"]) for b in anns
                ):
                    continue
                hits.add(a["id"])
        if hits:
            out[img["id"]] = hits
    return out


# ---------------------------------------------------------------- tests
def test_layout_and_coco(synth_small: Path):
    coco, records = load(synth_small)
    assert set(coco) >= {"images", "annotations", "categories"}
    assert len(coco["images"]) == 24
    assert [c["name"] for c in coco["categories"]] == SHAPES
    cat_name = {c["id"]: c["name"] for c in coco["categories"]}
    sizes = set()
    for img in coco["images"]:
        path = synth_small / "images" / img["file_name"]
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.size == (img["width"], img["height"])
        assert 240 <= img["width"] <= 800 and 240 <= img["height"] <= 800
        sizes.add((img["width"], img["height"]))
    assert len(sizes) > 10 and any(w != h for w, h in sizes)
    per_image = defaultdict(int)
    for ann in coco["annotations"]:
        per_image[ann["image_id"]] += 1
        assert ann["iscrowd"] == 0
        a = ann["attributes"]
        assert set(a) == {"shape", "color", "size"}
        assert a["shape"] == cat_name[ann["category_id"]]
        assert a["color"] in COLOURS and a["size"] in SIZES
        assert isinstance(ann["segmentation"]["counts"], str)
    assert set(per_image) == {img["id"] for img in coco["images"]}
    assert all(2 <= n <= 10 for n in per_image.values())
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])


def test_masks_decode_and_match_boxes(synth_small: Path):
    coco, _ = load(synth_small)
    imgs = {img["id"]: img for img in coco["images"]}
    union = {}
    for ann in coco["annotations"]:
        img = imgs[ann["image_id"]]
        mask = decode_rle(ann["segmentation"])
        assert mask.shape == (img["height"], img["width"])
        assert mask.sum() == ann["area"] > 0
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        assert list(cocomask.toBbox(rle)) == pytest.approx(ann["bbox"])
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == pytest.approx([xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()])
        # masks are VISIBLE regions: no two objects of an image share a pixel
        seen = union.setdefault(ann["image_id"], np.zeros_like(mask))
        assert not (seen & mask).any()
        seen |= mask


def test_pixels_under_masks_have_the_annotated_colour(synth_small: Path):
    coco, _ = load(synth_small)
    imgs = {img["id"]: img for img in coco["images"]}
    palette = np.array(list(COLOURS.values()), dtype=float)
    names = list(COLOURS)
    pixels = {i: np.asarray(Image.open(synth_small / "images" / img["file_name"]).convert("RGB"), dtype=float) for i, img in imgs.items()}
    for ann in coco["annotations"]:
        mask = decode_rle(ann["segmentation"])
        inner = ndimage.binary_erosion(mask, iterations=2)
        mean = pixels[ann["image_id"]][inner if inner.sum() >= 20 else mask].mean(axis=0)
        dist = np.linalg.norm(palette - mean, axis=1)
        assert names[int(dist.argmin())] == ann["attributes"]["color"], (ann["id"], mean)
        assert dist.min() < 30, (ann["id"], mean)
        # and just outside the object the picture is NOT that colour on average
        ring = ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_dilation(mask, iterations=1)
        others = np.zeros_like(mask)
        for other in coco["annotations"]:
            if other["image_id"] == ann["image_id"] and other["id"] != ann["id"]:
                others |= decode_rle(other["segmentation"])
        ring &= ~others
        if ring.sum() >= 50:
            outside = pixels[ann["image_id"]][ring].mean(axis=0)
            assert np.linalg.norm(outside - palette[names.index(ann["attributes"]["color"])]) > 40


def test_expression_files(synth_small: Path):
    coco, records = load(synth_small)
    anns = {a["id"]: a for a in coco["annotations"]}
    queries = queries_of(records)
    assert len(queries) == 30
    texts = [expr for expr, _, _ in queries.values()]
    assert len(set(texts)) == len(texts), "two queries share an expression"
    for path, rec in records:
        assert list(rec) == ["image_id", "expression", "category", "target_annotation", "query_id", "type"]
        assert rec["type"] in {"attribute", "position", "relation", "absent"}
        assert rec["category"] == parse(rec["expression"])["head"][2]
        if rec["type"] == "absent":
            assert rec["image_id"] is None and rec["target_annotation"] == {}
            assert path.name == f"{rec['query_id']}_absent.json"
            continue
        assert rec["target_annotation"]
        for key, rle in rec["target_annotation"].items():
            ann = anns[int(key)]
            assert ann["image_id"] == rec["image_id"]
            assert rle == ann["segmentation"]
    absent = [q for q in queries.values() if q[1] == "absent"]
    assert len(absent) == 4 and all(not targets for _, _, targets in absent)


def test_targets_agree_with_independent_evaluation(synth_small: Path):
    coco, records = load(synth_small)
    queries = queries_of(records)
    types = defaultdict(int)
    for qid, (text, typ, targets) in queries.items():
        written = {img: {int(k) for k in t} for img, t in targets.items()}
        assert written == reference_targets(text, coco), (qid, text)
        q = parse(text)
        kind = "relation" if ("sup" in q or q.get("rel")) else ("position" if q.get("pos") else "attribute")
        assert typ == ("absent" if not written else kind), (qid, text, typ)
        types[typ] += 1
    assert set(types) == {"attribute", "position", "relation", "absent"}


def test_query_mix(synth_small: Path):
    _, records = load(synth_small)
    queries = queries_of(records).values()
    present = [t for _, typ, t in queries if typ != "absent"]
    single = sum(1 for t in present if len(t) == 1)
    multi_image = sum(1 for t in present if len(t) >= 2)
    multi_instance = sum(1 for t in present if any(len(v) >= 2 for v in t.values()))
    assert single > len(present) / 2
    assert multi_image >= 2 and multi_instance >= 2


def test_vocabulary_covers_every_expression(synth_small: Path):
    from resedis.synth import VOCABULARY

    _, records = load(synth_small)
    assert VOCABULARY == sorted(set(VOCABULARY)) and all(w == w.lower() for w in VOCABULARY)
    assert set(SHAPES) | set(COLOURS) | set(SIZES) | {"left", "above", "largest", "next"} <= set(VOCABULARY)
    for _, rec in records:
        assert set(rec["expression"].split()) <= set(VOCABULARY), rec["expression"]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(synth_small: Path, tmp_path: Path):
    from resedis.synth import generate

    generate(tmp_path / "again", images=24, queries=30, absent=4, seed=1234, progress=False)
    assert _tree_bytes(tmp_path / "again") == _tree_bytes(synth_small)
    generate(tmp_path / "other", images=24, queries=30, absent=4, seed=1235, progress=False)
    other = _tree_bytes(tmp_path / "other")
    assert other["instances.json"] != _tree_bytes(synth_small)["instances.json"]


# One 300x300 image; boxes xyxy; areas chosen for the superlative ratio 1.2.
HAND_TABLE = ObjectTable(
    image=[0, 0, 0, 0],
    shape=[0, 0, 0, 1],  # circle, circle, circle, square
    color=[0, 2, 0, 0],  # red, blue, red, red
    size=[0, 0, 1, 1],
    box=[(0, 0, 50, 50), (50, 0, 100, 50), (215, 215, 275, 290), (105, 100, 195, 200)],
    area=[1200, 1000, 1440, 5000],
    width=[300] * 4,
    height=[300] * 4,
)
CIRCLE, RED_CIRCLE, SQUARE = NounPhrase("circle"), NounPhrase("circle", "red"), NounPhrase("square")
PREDICATES = [  # (case, expression, the objects of HAND_TABLE it denotes, computed by hand)
    ("attribute", Expression(RED_CIRCLE), [0, 2]),
    ("size", Expression(NounPhrase("circle", None, "large")), [2]),
    ("left", Expression(CIRCLE, position="left"), [0, 1]),  # centres x=25, 75 < 100
    ("middle", Expression(SQUARE, position="middle"), [3]),  # centre (150, 150)
    ("bottom_right", Expression(CIRCLE, position="bottom_right"), [2]),  # centre (245, 252.5)
    ("top_left", Expression(CIRCLE, position="top_left"), [0, 1]),
    # touching boxes (x1 == x0) count as left of
    ("left_of_touching", Expression(RED_CIRCLE, relation="left_of", ref=NounPhrase("circle", "blue")), [0]),
    ("right_of", Expression(CIRCLE, relation="right_of", ref=RED_CIRCLE), [1, 2]),
    ("above", Expression(CIRCLE, relation="above", ref=SQUARE), [0, 1]),
    ("below", Expression(SQUARE, relation="below", ref=CIRCLE), [3]),  # y0=100 >= y1=50
    # next to: gap <= 0.05 * 300 = 15. circle0-circle1: 0; square-circle1: max(5, 50) = 50;
    # square-circle2: max(20, 15) = 20
    ("next_to", Expression(CIRCLE, relation="next_to", ref=CIRCLE), [0, 1]),
    ("next_to_none", Expression(SQUARE, relation="next_to", ref=CIRCLE), []),
    # a relation never pairs an object with itself
    ("next_to_itself", Expression(SQUARE, relation="next_to", ref=SQUARE), []),
    # largest red circle: 1440 >= 1.2 * 1200 -> object 2
    ("largest", Expression(RED_CIRCLE, superlative="largest"), [2]),
    # smallest circle: 1000 * 1.2 = 1200 <= 1200 and <= 1440 -> object 1
    ("smallest", Expression(CIRCLE, superlative="smallest"), [1]),
    # smallest red circle: 1200 * 1.2 = 1440 <= 1440 -> object 0
    ("smallest_at_the_margin", Expression(RED_CIRCLE, superlative="smallest"), [0]),
    # a single square has no superlative
    ("superlative_of_one", Expression(SQUARE, superlative="largest"), []),
]


@pytest.mark.parametrize("name, expression, expected", PREDICATES, ids=[p[0] for p in PREDICATES])
def test_predicates_on_hand_made_geometry(name, expression, expected):
    """Boundary cases of the documented semantics, computed by hand."""
    assert np.flatnonzero(evaluate(expression, HAND_TABLE)).tolist() == expected


def test_expression_text_and_type():
    assert Expression(RED_CIRCLE, relation="left_of", ref=SQUARE).text() == "the red circle to the left of the square"
    assert Expression(CIRCLE, superlative="largest").type == "relation"


@pytest.mark.parametrize("superlative", ["largest", "smallest"])
def test_superlative_needs_a_clear_margin(superlative):
    table = ObjectTable(image=[0, 0], shape=[0, 0], color=[0, 0], size=[0, 0], box=[(0, 0, 10, 10), (20, 0, 30, 10)],
                        area=[100, 119], width=[100, 100], height=[100, 100])
    assert not evaluate(Expression(CIRCLE, superlative=superlative), table).any()


@pytest.mark.parametrize("queries, absent, message", [(400, 0, "queries"), (3, 4, "absent")],
                         ids=["too-many-queries", "more-absent-than-queries"])
def test_too_many_queries_is_a_clear_error_and_leaves_nothing(tmp_path: Path, queries, absent, message):
    from resedis.synth import generate

    with pytest.raises(ResedisError, match=message):
        generate(tmp_path / "out", images=2, queries=queries, absent=absent, seed=0, progress=False)
    assert list(tmp_path.iterdir()) == []  # no output and no staging directory left behind


def test_cli(tmp_path: Path, capsys):
    from resedis.cli import main

    out = tmp_path / "bench"
    args = ["synth", str(out), "--images", "6", "--queries", "8", "--absent", "2", "--seed", "5", "--no-progress"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 6 and summary["queries"] == 8 and summary["absent"] == 2
    coco, records = load(out)
    assert len(coco["images"]) == 6 and len(queries_of(records)) == 8
    assert summary["expression_files"] == len(records)
    before = _tree_bytes(out)
    assert main(args) == 2  # refuses a non-empty directory
    assert "not empty" in capsys.readouterr().err
    assert _tree_bytes(out) == before
    assert main(args[:-2] + ["6", "--overwrite", "--no-progress"]) == 0
    assert _tree_bytes(out) != before
    assert main(["synth", str(tmp_path / "x"), "--queries", "3", "--absent", "5"]) == 2
