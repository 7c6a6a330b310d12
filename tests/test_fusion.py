"""The compositional scorer against a slow per-region reference written from the module
docstring's formulas, plus small hand tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from resedis.errors import ResedisError
from resedis.expressions import FusionWeights, compose, compose_image, parse
from resedis.expressions import geometry as geometry_module


def sig(x):
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


MARGIN = {
    "left": lambda u, v: 1 / 3 - u, "right": lambda u, v: u - 2 / 3, "top": lambda u, v: 1 / 3 - v,
    "bottom": lambda u, v: v - 2 / 3, "middle": lambda u, v: min(1 / 6 - abs(u - 0.5), 1 / 6 - abs(v - 0.5)),
}
FAR = {  # how far from the side a centre lies (larger = further)
    "left": lambda u, v: u, "right": lambda u, v: -u, "top": lambda u, v: v, "bottom": lambda u, v: -v,
    "middle": lambda u, v: max(abs(u - 0.5), abs(v - 0.5)),
}


def reference(parsed, logits, boxes, region_image, sizes, w):
    """One region at a time, straight from the formulas."""
    n = len(boxes)
    out = np.zeros(n)
    for i in range(n):
        out[i] = ref_region(parsed, logits, boxes, region_image, sizes, w, i)
    return out


def ref_region(parsed, logits, boxes, region_image, sizes, w, i):
    W, H = sizes[region_image[i]]
    others = [j for j in range(len(boxes)) if j != i and region_image[j] == region_image[i]]
    s = float(logits[parsed.subject.text][i])
    p = [sig(float(x)) for x in logits[parsed.subject.text]]
    u = [(b[0] + b[2]) / 2 / sizes[region_image[k]][0] for k, b in enumerate(boxes)]
    v = [(b[1] + b[3]) / 2 / sizes[region_image[k]][1] for k, b in enumerate(boxes)]

    def rank(measure, temperature):  # share of others' mass that i beats (measure: bigger = better)
        num = sum(p[j] * sig((measure(i) - measure(j)) / temperature) for j in others) + w.rank_prior / 2
        return math.log(num / (sum(p[j] for j in others) + w.rank_prior))

    def far(sides, k2):  # how far centre k2 lies from the side(s)
        return sum(FAR[k](u[k2], v[k2]) for k in sides)

    def area(k2):
        return (boxes[k2][2] - boxes[k2][0]) * (boxes[k2][3] - boxes[k2][1])

    def height(k2):
        return boxes[k2][3] - boxes[k2][1]

    z = s
    for cue in parsed.positions:
        sg = -1 if cue.negated else 1
        sides = cue.kind.split("_")
        m = min(MARGIN[k](u[i], v[i]) for k in sides)
        z += w.position * math.log(sig(sg * m / w.position_temperature))
        z += w.position_relative * rank(lambda k2, sg=sg, sides=sides: -sg * far(sides, k2), w.rank_temperature)
    for cue in parsed.superlatives:
        sg = (1 if cue.kind in ("largest", "tallest") else -1) * (-1 if cue.negated else 1)
        size = area if cue.kind in ("largest", "smallest") else height
        z += w.size * rank(lambda k2, sg=sg, size=size: sg * math.log(size(k2)), w.size_temperature)
    for cue in parsed.relations:
        anchors = [reference(a, logits, boxes, region_image, sizes, w) for a in cue.anchors]
        cands = [j for j in others if iou(boxes[i], boxes[j]) < w.overlap_max]
        if cue.kind == "between":
            def side(a, coord, sign, anchors=anchors, cands=cands):
                return max([sig(anchors[a][j]) * sig(sign * (coord[i] - coord[j]) / w.position_temperature)
                            for j in cands], default=0.0)
            m = max(side(0, u, 1) * side(1, u, -1), side(0, u, -1) * side(1, u, 1),
                    side(0, v, 1) * side(1, v, -1), side(0, v, -1) * side(1, v, 1))
        else:
            m = max([sig(anchors[0][j]) * geo(cue.kind, boxes[i], boxes[j], W, H, w) for j in cands], default=0.0)
        if cue.negated:
            m = 1 - m
        z += w.relation * math.log((m + w.relation_floor) / (1 + w.relation_floor))
    for neg in parsed.negations:
        z -= w.negation * sig(float(logits[neg.phrase.text][i]))
    return z


def geo(kind, a, b, W, H, w):
    ww = ((a[2] - a[0]) + (b[2] - b[0])) / 2
    hh = ((a[3] - a[1]) + (b[3] - b[1])) / 2
    gap = max(0.0, b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3]) / min(W, H)
    near = sig((w.near_fraction - gap) / w.near_temperature)
    ox = min(1.0, max(0.0, (min(a[2], b[2]) - max(a[0], b[0])) / min(a[2] - a[0], b[2] - b[0])))
    cya, cyb = (a[1] + a[3]) / 2, (b[1] + b[3]) / 2
    t, beta = w.relation_temperature, w.relation_slack
    return {
        "left_of": lambda: sig(((b[0] - a[2]) / ww + beta) / t),
        "right_of": lambda: sig(((a[0] - b[2]) / ww + beta) / t),
        "above": lambda: sig(((b[1] - a[3]) / hh + beta) / t),
        "below": lambda: sig(((a[1] - b[3]) / hh + beta) / t),
        "next_to": lambda: near,
        "on_top_of": lambda: sig((cyb - cya) / (hh * t)) * ox * near,
        "under": lambda: sig((cya - cyb) / (hh * t)) * ox,
        "behind": lambda: sig((b[3] - a[3]) / (hh * t)) * near,
        "in_front_of": lambda: sig((a[3] - b[3]) / (hh * t)) * near,
    }[kind]()


def random_scene(rng, n_images, max_regions):
    counts = rng.integers(1, max_regions + 1, size=n_images)
    region_image = np.repeat(np.arange(n_images), counts)
    rng.shuffle(region_image)  # regions of an image need not be contiguous
    sizes = rng.uniform(100, 600, size=(n_images, 2))
    wh = sizes[region_image]
    x0 = rng.uniform(0, 0.8, len(region_image)) * wh[:, 0]
    y0 = rng.uniform(0, 0.8, len(region_image)) * wh[:, 1]
    bw = rng.uniform(0.03, 0.4, len(region_image)) * wh[:, 0]
    bh = rng.uniform(0.03, 0.4, len(region_image)) * wh[:, 1]
    boxes = np.stack([x0, y0, np.minimum(x0 + bw, wh[:, 0]), np.minimum(y0 + bh, wh[:, 1])], 1)
    return boxes, region_image, sizes


EXPRESSIONS = [
    "the red circle on the left", "the dog in the top right corner", "the cat in the middle", "the cat not at the bottom",
    "the largest red circle", "the smallest star", "the tallest man", "shorter girl on the right",
    "the circle to the left of the square", "the circle right of the square", "the star above the ring",
    "the star below the largest ring", "the cup next to the plate", "cat on top of the tv", "dog under the table",
    "man behind the counter", "kid in front of the tv", "chair between the table and the lamp",
    "the man without a hat", "the dog that is not black next to the cat on the left",
    "dog not next to the cat", "the bigger elephant, not the grey one", "a red mug",
]


@pytest.mark.parametrize("expression", EXPRESSIONS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_slow_reference(expression, seed, monkeypatch):
    rng = np.random.default_rng(seed)
    boxes, region_image, sizes = random_scene(rng, n_images=5, max_regions=7)
    parsed = parse(expression)
    logits = {t: rng.normal(0, 3, len(boxes)) for t in parsed.phrases()}
    w = FusionWeights(position=0.7, position_relative=0.6, size=1.3, relation=0.9, negation=1.7, rank_prior=0.3)
    monkeypatch.setattr(geometry_module, "BLOCK_PAIRS", 60)  # several blocks of images
    got = compose(parsed, logits, boxes, region_image, sizes, w)
    want = reference(parsed, logits, boxes, region_image, sizes, w)
    np.testing.assert_allclose(got.logits, want, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.sum(list(got.explain.values()), axis=0), got.logits, rtol=1e-12, atol=1e-12)
    assert len(got.explain) == 1 + len(parsed.positions) + len(parsed.superlatives) + len(parsed.relations) + len(parsed.negations)
    np.testing.assert_array_equal(got.explain["subject"], logits[parsed.subject.text])


def test_batched_equals_one_image_at_a_time():
    rng = np.random.default_rng(5)
    boxes, region_image, sizes = random_scene(rng, n_images=6, max_regions=9)
    parsed = parse("the dog left of the largest cat, not on the bottom")
    logits = {t: rng.normal(0, 2, len(boxes)) for t in parsed.phrases()}
    whole = compose(parsed, logits, boxes, region_image, sizes).logits
    for img in range(6):
        sel = region_image == img
        one = compose_image(parsed, {k: v[sel] for k, v in logits.items()}, boxes[sel], *sizes[img])
        np.testing.assert_allclose(one.logits, whole[sel], rtol=1e-12)


# hand tables: a 100 x 100 image, two equal candidates; the cue must pick the right one
LEFT, RIGHT = [10, 40, 30, 60], [70, 40, 90, 60]
TOP, BOTTOM = [40, 5, 60, 25], [40, 75, 60, 95]


@pytest.mark.parametrize("expression,boxes,anchor_logits,winner", [
    ("the circle to the left of the square", [LEFT, RIGHT, RIGHT], None, 0),
    ("the circle to the right of the square", [LEFT, RIGHT, LEFT], None, 1),
    ("the circle above the square", [TOP, BOTTOM, BOTTOM], None, 0),
    ("the circle below the square", [TOP, BOTTOM, TOP], None, 1),
    ("the circle on the left", [LEFT, RIGHT], None, 0),
    ("the circle on the right", [LEFT, RIGHT], None, 1),
    ("the circle at the top", [TOP, BOTTOM], None, 0),
    ("the circle at the bottom", [TOP, BOTTOM], None, 1),
    ("the circle not on the left", [LEFT, RIGHT], None, 1),
    ("the largest circle", [[10, 10, 20, 20], [50, 50, 90, 90]], None, 1),
    ("the smallest circle", [[10, 10, 20, 20], [50, 50, 90, 90]], None, 0),
    ("the circle in the middle", [[40, 40, 60, 60], [0, 0, 20, 20]], None, 0),
])
def test_hand_tables(expression, boxes, anchor_logits, winner):
    parsed = parse(expression)
    boxes = np.asarray(boxes, float)
    n = len(boxes)
    logits = {"the circle": np.r_[np.full(2, 1.0), np.full(n - 2, -8.0)]}
    if parsed.relations:  # only the third box is a square
        logits["the square"] = np.r_[-8.0, -8.0, 6.0]
    out = compose_image(parsed, logits, boxes, 100, 100)
    assert int(np.argmax(out.logits)) == winner
    assert out.logits[winner] > out.logits[1 - winner] + 0.5


def test_relation_ignores_the_candidate_itself_and_heavy_overlaps():
    # region 0 is both a good circle and a good square: it must not be its own anchor
    parsed = parse("the circle left of the square")
    boxes = np.array([[10, 40, 30, 60], [11, 40, 31, 60]], float)  # IoU 0.9: the same object twice
    logits = {"the circle": np.array([3.0, 3.0]), "the square": np.array([5.0, 5.0])}
    out = compose_image(parsed, logits, boxes, 100, 100)
    floor = FusionWeights().relation * math.log(0.05 / 1.05)
    np.testing.assert_allclose(out.explain["relation left_of: the square"], [floor, floor])


def test_negation_suppresses_regions_matching_the_excluded_phrase():
    parsed = parse("the dog without a collar")
    logits = {"the dog": np.array([2.0, 2.0]), "a collar": np.array([6.0, -6.0])}
    out = compose_image(parsed, logits, np.array([LEFT, RIGHT], float), 100, 100)
    assert out.logits[1] > out.logits[0]
    np.testing.assert_allclose(out.explain["not: a collar"], -2.0 / (1 + np.exp(-np.array([6.0, -6.0]))))


def test_no_cue_is_the_subject_logit_exactly():
    parsed = parse("a red mug")
    s = np.array([0.3, -1.2, 4.0])
    out = compose(parsed, {"a red mug": s}, np.zeros((3, 4)) + [0, 0, 5, 5], np.array([0, 1, 1]), [[10, 10], [20, 20]])
    np.testing.assert_array_equal(out.logits, s)


def test_weights_vector_roundtrip_and_validation():
    w = FusionWeights(position=0.3, negation=4.0)
    v = w.to_vector()
    assert v.shape == (len(FusionWeights.names()),) and v[0] == 0.3
    assert FusionWeights.from_vector(v) == w
    with pytest.raises(ResedisError, match="expected 15 values"):
        FusionWeights.from_vector(v[:-1])
    with pytest.raises(ResedisError, match="relation_temperature must be > 0"):
        FusionWeights(relation_temperature=0)
    with pytest.raises(ResedisError, match="overlap_max"):
        FusionWeights(overlap_max=1.5)


def test_bad_inputs_name_the_problem():
    parsed = parse("the dog left of the cat")
    boxes = np.array([LEFT, RIGHT], float)
    with pytest.raises(ResedisError, match="no logits for the phrase 'the cat'"):
        compose_image(parsed, {"the dog": np.zeros(2)}, boxes, 100, 100)
    with pytest.raises(ResedisError, match=r"shape \(3,\); expected \(2,\)"):
        compose_image(parsed, {"the dog": np.zeros(3), "the cat": np.zeros(2)}, boxes, 100, 100)
    with pytest.raises(ResedisError, match="boxes must be"):
        compose(parsed, {}, np.zeros((2, 3)), np.zeros(2, int), [[1, 1]])
    with pytest.raises(ResedisError, match="region_image values must index"):
        compose(parsed, {}, boxes, np.array([0, 2]), [[100, 100]])
