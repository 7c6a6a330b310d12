"""Box geometry and NMS (resedis.boxes) and mask RLE (resedis.masks): hand-computed tables and a slow reference."""

import numpy as np
import pytest

from resedis.boxes import box_area, box_iou, clip_boxes, nms
from resedis.masks import decode_rle, encode_mask, rle_to_box


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # touching edges: no overlap
        ([0, 0, 10, 10], [2, 2, 4, 4], 4 / 100),
        ([3, 3, 3, 9], [3, 3, 3, 9], 0.0),  # zero-area boxes: plain IoU is 0
    ],
)
def test_box_iou_hand_table(a, b, expected):
    assert box_iou(np.array([a]), np.array([b]))[0, 0] == pytest.approx(expected)


def test_same_box_is_one_only_changes_identical_degenerate_pairs():
    boxes = np.array([[0, 636, 318, 636], [0, 636, 318, 636], [0, 0, 10, 10], [1, 636, 318, 636]], float)
    plain = box_iou(boxes, boxes)
    dedup = box_iou(boxes, boxes, same_box_is_one=True)
    assert plain[0, 1] == 0.0 and dedup[0, 1] == 1.0
    assert dedup[0, 3] == 0.0  # a different degenerate box is still no overlap
    assert dedup[2, 2] == plain[2, 2] == 1.0


def slow_nms(boxes, scores, thr):
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(not (box_iou(boxes[i : i + 1], boxes[j : j + 1], same_box_is_one=True)[0, 0] > thr) for j in keep):
            keep.append(i)
    return keep


def test_nms_suppresses_duplicate_degenerate_boxes():
    boxes = np.array([[0, 636, 318, 636]] * 2, float)
    assert nms(boxes, np.array([0.9, 0.8]), 0.5).tolist() == [0]


def test_nms_matches_slow_reference_on_random_boxes():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 25))
        xy = rng.integers(0, 40, size=(n, 2))
        wh = rng.integers(0, 15, size=(n, 2))  # some zero-width/height boxes
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(float)
        boxes[rng.random(n) < 0.2] = boxes[0]  # exact duplicates
        scores = rng.random(n)
        thr = float(rng.choice([0.3, 0.5, 0.7]))
        assert nms(boxes, scores, thr).tolist() == slow_nms(boxes, scores, thr)


def test_rle_round_trip_and_box():
    mask = np.zeros((20, 30), bool)
    mask[5:9, 10:17] = True
    rle = encode_mask(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [20, 30]
    assert (decode_rle(rle) == mask).all()
    assert rle_to_box(rle) == (10.0, 5.0, 17.0, 9.0)


@pytest.mark.parametrize(
    "box, area",
    [([0, 0, 10, 10], 100.0), ([2, 3, 5, 4], 3.0), ([0, 528, 264, 528], 0.0), ([5, 5, 1, 9], 0.0)],
)
def test_box_area_hand_table(box, area):
    assert box_area(np.array([box]))[0] == pytest.approx(area)


def test_clip_boxes_to_a_non_square_image():
    boxes = np.array([[-5, -5, 20, 8], [0, 560, 264, 600], [3, 2, 4, 3]], np.float32)
    clipped = clip_boxes(boxes, width=16, height=528)
    np.testing.assert_array_equal(clipped, [[0, 0, 16, 8], [0, 528, 16, 528], [3, 2, 4, 3]])
    assert clipped.dtype == np.float32
    assert box_area(clipped)[1] == 0.0  # wholly below the image: nothing visible once clipped
