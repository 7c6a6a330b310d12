"""SAM segmenter (tiny random checkpoint) and the mask cache: masks are valid RLE of the
image's size, lie inside their box up to the stated margin, equal SAM's own output
restricted to that window, are computed only for hits, batched per image, and cached."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import pipekit
from resedis.masks import decode_rle, mask_iou
from resedis.models.sam import box_margin, box_window, restrict_to_boxes
from resedis.types import Hit, QueryResult


@pytest.fixture(scope="module")
def env():
    return pipekit.env()


@pytest.fixture(scope="module")
def sam(env):
    return pipekit.models(env).get(env.spec("sam"))


def test_box_margin_and_window_hand_computed():
    assert box_margin([0, 0, 10, 20]) == 2.0  # 5 % of 20 = 1 < 2 px floor
    assert box_margin([0, 0, 100, 300]) == pytest.approx(15.0)
    # box (10.5, 20.2)-(30.1, 40) in a 50x35 image (H=35, W=50); margin 2: dilated box
    # (8.5, 18.2)-(32.1, 42); pixels wholly inside: cols 9..31, rows 19..34 (clipped)
    assert box_window([10.5, 20.2, 30.1, 40], 35, 50) == (19, 35, 9, 32)
    m = np.ones((1, 35, 50), bool)
    out = restrict_to_boxes(m, np.array([[10.5, 20.2, 30.1, 40]]))
    assert out.sum() == (35 - 19) * (32 - 9)
    assert not out[0, :19].any() and not out[0, :, 32:].any() and not out[0, :, :9].any()


def test_restricted_mask_bbox_lies_inside_box_plus_margin():
    """The stated guarantee, checked the way a consumer would: the mask's pycocotools
    toBbox ``[x, y, x + w, y + h]`` lies within the box dilated by ``box_margin`` (a floor /
    ceil window let pixels straddling the dilated edge through: up to 1 px beyond it), and
    no pixel wholly inside is dropped."""
    from pycocotools import mask as mask_utils

    from resedis.masks import encode_mask

    rng = np.random.default_rng(11)
    h, w = 60, 80
    for _ in range(200):
        x0, x1 = np.sort(rng.uniform(-5, w + 5, 2))
        y0, y1 = np.sort(rng.uniform(-5, h + 5, 2))
        box = np.array([x0, y0, x1, y1])
        out = restrict_to_boxes(np.ones((1, h, w), bool), box[None])[0]
        m = box_margin(box)
        rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
        wholly_inside = (cols >= x0 - m) & (cols + 1 <= x1 + m) & (rows >= y0 - m) & (rows + 1 <= y1 + m)
        np.testing.assert_array_equal(out, wholly_inside)
        if out.any():
            bx, by, bw, bh = mask_utils.toBbox(encode_mask(out))
            assert bx >= x0 - m and by >= y0 - m and bx + bw <= x1 + m and by + bh <= y1 + m


def test_segment_matches_sam_own_output_inside_margin(sam):
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 255, (45, 70, 3), dtype=np.uint8))
    boxes = np.array([[5, 4, 30, 25], [20, 10, 66, 41], [0, 0, 70, 45]], float)
    raw = sam.raw_masks(image, boxes)
    masks = sam.segment(image, boxes)
    assert masks.shape == (3, 45, 70) and masks.dtype == bool
    assert raw.any(), "tiny SAM produced only empty masks: the checks below would be blind"
    for m, r, box in zip(masks, raw, boxes):
        r0, r1, c0, c1 = box_window(box, 45, 70)
        inside = np.zeros_like(m)
        inside[r0:r1, c0:c1] = True
        assert not (m & ~inside).any()
        np.testing.assert_array_equal(m, r & inside)
    # the restriction matters for the small box (SAM spills out of it with random weights)
    assert (raw[0] & ~masks[0]).any()


def test_segment_no_boxes(sam):
    image = Image.new("RGB", (20, 10))
    assert sam.segment(image, np.zeros((0, 4))).shape == (0, 10, 20)


def _hits(env, n_images=3, boxes_per_image=2):
    from resedis.index.store import IMAGES, open_index

    rows = open_index(env.db).read(IMAGES, ["image_id", "path", "width", "height"]).to_pylist()[:n_images]
    hits = []
    for r in rows:
        w, h = r["width"], r["height"]
        for j in range(boxes_per_image):
            box = (w * 0.1 * (j + 1), h * 0.15, w * (0.5 + 0.2 * j), h * 0.8)
            hits.append(Hit(image_id=r["image_id"], box=box, score=0.5 - 0.01 * len(hits), present=True, path=r["path"]))
    return rows, hits


def test_attach_masks_valid_cached_and_batched_per_image(env, sam, tmp_path):
    from resedis.index.store import open_index
    from resedis.index.masks import attach_masks

    db = pipekit.copy_db(env, tmp_path)
    index = open_index(db)
    rows, hits = _hits(env)
    results = [QueryResult("q1", "a thing", hits[:4]), QueryResult("q2", "another", hits[2:])]
    calls0, boxes0 = sam.image_calls, sam.boxes_segmented
    out = attach_masks(results, index, sam)
    assert sam.image_calls - calls0 == 3  # one call per image, all its boxes at once
    assert sam.boxes_segmented - boxes0 == 6  # shared hits of q1/q2 segmented once
    sizes = {r["path"]: (r["height"], r["width"]) for r in rows}
    for res in out:
        for h in res.hits:
            assert h.mask is not None and h.mask["size"] == list(sizes[h.path])
            m = decode_rle(h.mask)
            r0, r1, c0, c1 = box_window(h.box, *sizes[h.path])
            assert m[:r0].sum() == m[r1:].sum() == m[:, :c0].sum() == m[:, c1:].sum() == 0
            # same box in both queries -> the same mask
    assert out[0].hits[2].mask == out[1].hits[0].mask
    # a repeated query costs nothing: every mask comes from the index's cache
    calls1 = sam.image_calls
    again = attach_masks(results, open_index(db), sam)
    assert sam.image_calls == calls1
    assert [h.mask for r in again for h in r.hits] == [h.mask for r in out for h in r.hits]
    # one new box -> one call, for that image only, with that box only
    moved = Hit(image_id=hits[0].image_id, box=(1.0, 2.0, 40.0, 50.0), score=0.1, present=True, path=hits[0].path)
    boxes1 = sam.boxes_segmented
    attach_masks([QueryResult("q3", "x", [hits[0], moved])], open_index(db), sam)
    assert sam.image_calls == calls1 + 1 and sam.boxes_segmented == boxes1 + 1


def test_mask_iou_mode_scores_attached_masks(env, sam, tmp_path):
    """eval --iou mask scores hit masks with pycocotools mask IoU against the targets."""
    from resedis.eval import evaluate_predictions
    from resedis.index.store import open_index
    from resedis.index.masks import attach_masks
    from resedis.pipelines import PipelineConfig
    from resedis.query import QueryEngine

    ds = env.dataset
    db = pipekit.copy_db(env, tmp_path)
    results = QueryEngine(db, PipelineConfig(top_k=5), pipekit.models(env)).run_dataset(ds, pipeline="owl")
    results = attach_masks(results, open_index(db), sam)
    ev = evaluate_predictions(ds, results, iou="mask")
    from resedis import metrics

    for q, r in zip(ds.queries, results):
        for mt in metrics.match_detections(q, r.hits, iou="mask"):
            targets = q.instances_of(mt.hit.image_id)
            expected = max((mask_iou([mt.hit.mask], [t.rle])[0, 0] for t in targets), default=0.0)
            assert mt.iou == pytest.approx(expected)
    assert set(ev.metrics) >= {"mAP50", "F1", "BR@1@0.5"}


def test_masks_cached_under_another_mask_rule_are_recomputed(env, sam, tmp_path):
    """A cache row written before the box-restriction rule changed (keyed by the bare spec)
    is never served: the key carries the segmenter's ``mask_rule``."""
    from resedis.models.spec import canonical_spec
    from resedis.index.store import open_index
    from resedis.masks import encode_mask
    from resedis.index.masks import MaskCache, attach_masks, box_key

    db = pipekit.copy_db(env, tmp_path)
    index = open_index(db)
    rows, hits = _hits(env, n_images=1, boxes_per_image=1)
    h = hits[0]
    cache = MaskCache(index)
    image_id, sha = cache.image_key(h.path)
    stale = np.ones((rows[0]["height"], rows[0]["width"]), bool)  # everything: violates the margin
    rle = encode_mask(stale)
    cache.store([{"image_id": image_id, "sha256": sha, "box_key": box_key(h.box), "segmenter": canonical_spec(sam.spec),
                  "height": rle["size"][0], "width": rle["size"][1], "counts": rle["counts"]}])
    calls0 = sam.image_calls
    [out] = attach_masks([QueryResult("q", "x", [h])], index, sam)
    assert sam.image_calls == calls0 + 1  # recomputed, not served from the stale row
    assert out.hits[0].mask["counts"] != rle["counts"]
    [again] = attach_masks([QueryResult("q", "x", [h])], index, sam)
    assert sam.image_calls == calls0 + 1 and again.hits[0].mask == out.hits[0].mask  # now cached
    np.testing.assert_array_equal(decode_rle(out.hits[0].mask), sam.segment(Image.open(h.path).convert("RGB"), np.array([h.box]))[0])
