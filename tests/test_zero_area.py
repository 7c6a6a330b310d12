"""No region of zero visible area: OWLv2 predicts boxes in its square padding; clipped to
a non-square (or tiny) image such a box is a line or a point. The region encoder drops
them before the top-N, so nothing stored or returned has zero area, and every hit is
still one of the detector's own boxes (clipped to the image) with its own forward score.

Tolerances as in tests/test_search.py: |Δlogit| <= 1e-4 * max(1, |logit|), boxes 1e-2 px.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from resedis.index import IndexConfig, build_index, open_index
from resedis.models import load_model
from resedis.search import Searcher, sigmoid

# (width, height): a single pixel, extreme strips, wide, tall (no side of 3 px: transformers
# would take such an axis for the colour channels)
SIZES = [(1, 1), (2, 50), (50, 2), (5, 200), (120, 30), (30, 90)]
QUERIES = ["red circle", "a small blue square on the left"]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(5)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


def _positive(boxes: np.ndarray) -> np.ndarray:
    """Written out independently of the encoder: width and height above 1/100 px."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return (boxes[:, 2] - boxes[:, 0] > 0.01) & (boxes[:, 3] - boxes[:, 1] > 0.01)


@pytest.fixture(scope="module")
def backends(tiny_models) -> dict:
    return {fam: load_model(f"{fam}:{tiny_models[fam]}", "cpu") for fam in ("owlv2", "owlvit")}


@pytest.fixture(scope="module")
def forward(backends) -> dict:
    """(family, image number) -> the detector's own (boxes, logits (P, Q), objectness)."""
    return {(fam, i): b.detector_logits(im, QUERIES) for fam, b in backends.items() for i, im in enumerate(_images())}


def test_the_detector_does_predict_boxes_without_visible_area(forward):
    """Guard against a vacuous test: on these images OWLv2's raw forward has such boxes (in
    its padding), on some image more than half of them. (OWL-ViT stretches the image to
    its input: its boxes lie outside the image only when they leave the model's input.)"""
    hidden = [int((~_positive(forward["owlv2", i][0])).sum()) for i in range(len(SIZES))]
    patches = len(forward["owlv2", 0][0])
    assert sum(hidden) > 0 and max(hidden) > patches // 2, hidden


@pytest.mark.parametrize("family", ["owlv2", "owlvit"])
def test_encoder_keeps_n_visible_boxes(backends, forward, family):
    backend = backends[family]
    patches = len(forward[family, 0][0])
    for n in (1, 5, patches):
        kept = backend.encode_images(_images(), max_regions=n, nms_iou=1.0)
        for i, regions in enumerate(kept):
            boxes, _, objectness = forward[family, i]
            visible = np.flatnonzero(_positive(boxes))
            assert _positive(regions.boxes).all(), (family, SIZES[i])
            # N visible boxes wherever the image has that many: the zero-area ones did not use up the N
            assert len(regions) == min(n, len(visible)), (family, SIZES[i], n)
            ref = visible[np.argsort(-objectness[visible], kind="stable")][:n]
            np.testing.assert_allclose(regions.boxes, boxes[ref], atol=1e-2)


@pytest.mark.parametrize("family", ["owlv2", "owlvit"])
def test_search_hits_are_the_detectors_visible_boxes_and_scores(backends, forward, family, tmp_path):
    backend = backends[family]
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    names = []
    for i, image in enumerate(_images()):
        names.append(f"img{i}_{image.width}x{image.height}.png")
        image.save(images_dir / names[-1])
    patches = len(forward[family, 0][0])
    db = tmp_path / "db"
    build_index(images_dir, db, config=IndexConfig(max_regions=patches, nms_iou=1.0, vector_dtype="float32"),
                progress=False, encoder=backend)
    index = open_index(db)
    stored = np.asarray(index.read("regions", ["box"]).column("box").to_pylist(), np.float64)
    assert len(stored) and _positive(stored).all()
    visible = {name: _positive(forward[family, i][0]) for i, name in enumerate(names)}
    assert len(stored) == sum(int(v.sum()) for v in visible.values())

    searcher = Searcher(index, encoder=backend, nms_iou=1.0)
    number = {name: i for i, name in enumerate(names)}
    for q, query in enumerate(QUERIES):
        hits = searcher.search(query, top_k=len(stored)).hits
        assert len(hits) == len(stored)
        used = {name: np.zeros(patches, bool) for name in names}
        for hit in hits:
            assert hit.box[2] - hit.box[0] > 0 and hit.box[3] - hit.box[1] > 0, hit
            boxes, logits, _ = forward[family, number[hit.image_id]]
            logit = float(np.log(hit.score) - np.log1p(-hit.score))
            same = np.flatnonzero(np.all(np.abs(boxes - np.asarray(hit.box)) <= 1e-2, axis=1) & ~used[hit.image_id])
            assert len(same), f"{family} {query!r}: no forward box equals {hit.box} in {hit.image_id}"
            best = same[np.argmin(np.abs(logits[same, q] - logit))]
            used[hit.image_id][best] = True
            ref = float(logits[best, q])
            assert abs(ref - logit) <= 1e-4 * max(1.0, abs(ref)), (family, query, hit.image_id, ref, logit)
            assert hit.score == pytest.approx(float(sigmoid(ref)), abs=1e-5)
        for name in names:  # exactly the visible patches, each once
            assert (used[name] == visible[name]).all(), (family, name)
