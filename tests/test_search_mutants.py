"""resedis.search's pure pieces on hand-made values, no model (from the mutation run, issue
16; docs/testing.md): ``sigmoid`` against the plain float64 formula, ``normalize_text``,
``rank_hits`` at its edges (one region, ``top_k`` 0 and 1, identical boxes with no area,
more than 16 tied logits, the candidate window's last slot), and ``map_dataset_images``
on a table that exercises each of its three rules and its ambiguity and first-wins cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from resedis.search import map_dataset_images, normalize_text, rank_hits, sigmoid
from resedis.search_corpus import Corpus
from resedis.types import Dataset, ImageInfo


def test_sigmoid_is_the_float64_logistic():
    xs = np.array([-30.0, -2.0, -0.1, 0.0, 0.1, 2.0, 30.0])
    assert np.allclose(sigmoid(xs), [1 / (1 + math.exp(-x)) for x in xs], rtol=1e-13, atol=0)  # a few ulps
    assert sigmoid(0.0) == 0.5
    # float32 logits are computed in float64 (a float32 sigmoid is off by ~1e-8)
    x32 = np.float32(0.1)
    got = sigmoid(np.array([x32]))
    assert got.dtype == np.float64 and got[0] == pytest.approx(1 / (1 + math.exp(-float(x32))), rel=1e-13)
    assert sigmoid(-800.0) == 0.0 and sigmoid(800.0) == 1.0  # no overflow warning turned error


def test_normalize_text_collapses_whitespace():
    assert normalize_text("  a \t red\n\nmug  ") == "a red mug"
    assert normalize_text("mug") == "mug"


def boxes_in_a_row(n: int) -> np.ndarray:
    x = np.arange(n, dtype=np.float32)[:, None] * 20
    return np.concatenate([x, np.zeros_like(x), x + 10, np.full_like(x, 10)], axis=1)


def test_rank_hits_edges():
    one = rank_hits(np.array([0.5], np.float32), np.zeros(1, np.int64), boxes_in_a_row(1), 5, 0.5)
    assert one == [(0, 0.5)]
    logits = np.array([1.0, 3.0, 2.0], np.float32)
    image, boxes = np.arange(3), boxes_in_a_row(3)
    assert rank_hits(logits, image, boxes, 0, 0.5) == [] and rank_hits(logits, image, boxes, -1, 0.5) == []
    assert rank_hits(logits, image, boxes, 1, 0.5) == [(1, 3.0)]
    assert rank_hits(logits, image, boxes, 3, 0.5) == [(1, 3.0), (2, 2.0), (0, 1.0)]
    assert rank_hits(np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros((0, 4), np.float32), 3, 0.5) == []


def test_identical_boxes_without_area_suppress_each_other():
    boxes = np.array([[5, 5, 5, 9], [5, 5, 5, 9], [0, 0, 10, 10]], np.float32)  # a line, twice
    got = rank_hits(np.array([3.0, 2.0, 1.0], np.float32), np.zeros(3, np.int64), boxes, 10, 0.5)
    assert [i for i, _ in got] == [0, 2]
    got = rank_hits(np.array([3.0, 2.0, 1.0], np.float32), np.zeros(3, np.int64), boxes, 10, 1.0)  # 1: no NMS
    assert [i for i, _ in got] == [0, 1, 2]


def test_more_than_16_tied_logits_keep_index_order():
    """Ties are ranked by region index (a stable sort: numpy's default is not, past 16 keys)."""
    rng = np.random.default_rng(1)
    for n in (40, 300):
        logits = np.round(rng.normal(size=n), 0).astype(np.float32)  # a handful of values, each many times
        got = rank_hits(logits, np.arange(n), boxes_in_a_row(n), n, 0.5)
        assert [i for i, _ in got] == sorted(range(n), key=lambda i: (-logits[i], i))


def test_ties_rank_by_row_whatever_the_window():
    """Ties are ranked by row in a partial window too (argpartition returns the window in no
    particular order), so ``top_k`` 10 is the prefix of ``top_k`` 20 and of the full ranking,
    and which of two tied overlapping boxes NMS keeps does not depend on ``top_k``."""
    rng = np.random.default_rng(0)
    n = 2000
    logits = np.round(rng.normal(size=n), 1).astype(np.float32)  # ~60 values for 2000 rows
    full = sorted(range(n), key=lambda i: (-logits[i], i))
    for top_k in (10, 20, 100, n):
        assert [i for i, _ in rank_hits(logits, np.arange(n), boxes_in_a_row(n), top_k, 0.5)] == full[:top_k]
    # two identical boxes of one image, tied at the top: the lower row is kept at any top_k
    logits[[700, 300]] = 9.0
    image = np.arange(n)
    image[700] = image[300]
    boxes = boxes_in_a_row(n)
    boxes[700] = boxes[300]
    for top_k in (1, 10, n):
        assert rank_hits(logits, image, boxes, top_k, 0.5)[0] == (300, 9.0)


def test_the_first_windows_last_candidate_counts():
    """The first window is 256 candidates: 255 near-copies of one box (one hit), then the
    256th-best region in another image; asked for 2 hits, that region is the second
    (whatever the order of the rows: the window is a partial sort)."""
    for seed in range(12):
        rng = np.random.default_rng(seed)
        n_dup, n_other = 255, 2 if seed == 0 else int(rng.integers(3, 200))  # seed 0: 257 rows, one past the window
        dup = np.array([10, 10, 50, 50], np.float32) + rng.uniform(-0.2, 0.2, (n_dup, 4)).astype(np.float32)
        other = boxes_in_a_row(n_other + 1)[1:]
        logits = np.concatenate([np.linspace(10, 9, n_dup), [5.0], rng.uniform(-5, 4, n_other - 1)]).astype(np.float32)
        image = np.concatenate([np.zeros(n_dup, np.int64), np.arange(1, n_other + 1)])
        boxes = np.concatenate([dup, other])
        perm = rng.permutation(len(logits))
        got = rank_hits(logits[perm], image[perm], boxes[perm], 2, 0.5)
        assert [float(v) for _, v in got] == [10.0, 5.0], seed


def test_map_dataset_images_rules(tmp_path):
    files = {}
    for name in ("a.jpg", "b.jpg", "sub/b.jpg", "x/c.jpg", "y/c.jpg", "d.jpg", "deep/sub/f.jpg"):
        path = tmp_path / "photos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        files[name] = str(path)
    (tmp_path / "link.jpg").symlink_to(files["d.jpg"])
    ids = ["photos/a.jpg", "b.jpg", "sub/b.jpg", "x/c.jpg", "y/c.jpg", "d.jpg", "deep/sub/f.jpg"]
    paths = [files[i.removeprefix("photos/")] for i in ids]
    corpus = Corpus(version=(1, 1), image_ids=ids, paths=paths, region_image=np.zeros(0, np.int64),
                    boxes=np.zeros((0, 4), np.float32), vectors=np.zeros((0, 3), np.float32))
    images = {
        1: ImageInfo(1, "no/such/name.jpg", 1, 1, path=str(tmp_path / "link.jpg")),  # (1) the same file, via a symlink
        2: ImageInfo(2, "photos/a.jpg", 1, 1),  # (2) the index id
        3: ImageInfo(3, "b.jpg", 1, 1),  # (2) wins over the one index id ending with /b.jpg
        4: ImageInfo(4, "b.jpg", 1, 1, path=str(tmp_path / "elsewhere.jpg")),  # path unknown: falls back to (2)
        5: ImageInfo(5, "c.jpg", 1, 1),  # (3) ambiguous: x/c.jpg and y/c.jpg -> not found
        6: ImageInfo(6, "zzz.jpg", 1, 1),  # not found
        7: ImageInfo(7, "photos/a.jpg", 1, 1),  # row of 2 already mapped: the first dataset id keeps it
        8: ImageInfo(8, "", 1, 1),  # no name, no path: not found
        9: ImageInfo(9, "a.jpg", 1, 1),  # (3) exactly one index id ends with /a.jpg
    }
    mapping, missing = map_dataset_images(corpus, str(tmp_path), Dataset("d", None, images, []))
    assert mapping == [2, 3, None, None, None, 1, None]
    assert missing == 3
    del images[2], images[7]
    mapping, missing = map_dataset_images(corpus, str(tmp_path), Dataset("d", None, images, []))
    assert mapping == [9, 3, None, None, None, 1, None] and missing == 3
    images[10] = ImageInfo(10, "sub/b.jpg", 1, 1)  # (2)
    images[11] = ImageInfo(11, "sub/f.jpg", 1, 1)  # (3) with a folder: one id ends with /sub/f.jpg
    mapping, missing = map_dataset_images(corpus, str(tmp_path), Dataset("d", None, images, []))
    assert mapping == [9, 3, 10, None, None, 1, 11] and missing == 3
