"""clip-crops: the relation parser and priors on hand-computed tables, crops stored once at
index time (equal to the encoder's own crop embeddings), scores equal to the crop model's
own forward, and --proposals gt handing the crop scorer exactly the ground-truth boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest

import pipekit
from resedis.errors import MissingExtraError
from resedis.pipelines.relations import Cue, cue_priors, parse_expression, relation_matrix, rescore


@pytest.fixture(scope="module")
def env():
    return pipekit.env()


@pytest.mark.parametrize(
    "text, head, cues",
    [
        ("the red circle on the left", "red circle", [("left", None)]),
        ("The largest blue square", "blue square", [("largest", None)]),
        ("a green star in the top left corner", "green star", [("top", None), ("left", None)]),
        ("the circle to the left of the yellow square", "circle", [("left_of", "yellow square")]),
        ("the cross right of a star", "cross", [("right_of", "star")]),
        ("the square next to the star", "square", [("near", "star")]),
        ("cat closest to the dog", "cat", [("near", "dog")]),
        ("the star below the large hexagon", "star", [("below", "large hexagon")]),
        ("the smallest object in the middle", "object", [("smallest", None), ("middle", None)]),
        ("a small red circle", "a small red circle", []),  # nominal size is an attribute, no cue
    ],
)
def test_parse_expression(text, head, cues):
    p = parse_expression(text)
    assert p.head == head
    assert [(c.kind, c.anchor) for c in p.cues] == cues


def test_absolute_and_comparative_priors_hand_computed():
    boxes = np.array([[0, 0, 10, 10], [40, 30, 60, 50], [80, 80, 100, 100]], float)  # W=H=100
    np.testing.assert_allclose(cue_priors(Cue("left"), boxes, 100, 100), [0.95, 0.5, 0.1])
    np.testing.assert_allclose(cue_priors(Cue("right"), boxes, 100, 100), [0.05, 0.5, 0.9])
    np.testing.assert_allclose(cue_priors(Cue("top"), boxes, 100, 100), [0.95, 0.6, 0.1])
    np.testing.assert_allclose(cue_priors(Cue("bottom"), boxes, 100, 100), [0.05, 0.4, 0.9])
    np.testing.assert_allclose(cue_priors(Cue("middle"), boxes, 100, 100), [0.1, 0.8, 0.2])
    np.testing.assert_allclose(cue_priors(Cue("largest"), boxes, 100, 100), [0.25, 1.0, 1.0])
    np.testing.assert_allclose(cue_priors(Cue("smallest"), boxes, 100, 100), [1.0, 0.25, 0.25])


def test_relation_priors_hand_computed():
    # a: left of b (gap 10); c: overlaps b's left edge by 5 px, width 10
    boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [15, 20, 25, 30]], float)
    g = relation_matrix("left_of", boxes, 100, 100)
    assert g[0, 1] == 1.0 and g[2, 1] == pytest.approx(0.5) and g[1, 0] == 0.0
    near = relation_matrix("near", boxes, 100, 100)  # 0.25 * 100 = 25 px scale
    assert near[0, 1] == pytest.approx(1 - 10 / 25) and near[0, 2] == pytest.approx(1 - 10 / 25)
    # anchor scores: box 1 is clearly the anchor ("the square"), box 2 half as much
    prior = cue_priors(Cue("left_of", "square"), boxes, 100, 100, np.array([0.0, 1.0, 0.5]))
    # box0: max(a1*g01=1, a2*g02) ; g02 = clip(1-(10-15)/10)=1 -> 0.5 ; box1: g10=0, g12: 1-(30-15)/10<0 -> 0
    np.testing.assert_allclose(prior, [1.0, 0.0, 0.5])
    s = rescore(np.array([0.3, 0.3, 0.3]), boxes, parse_expression("the circle left of the square"), 100, 100,
                anchor_scores={"square": np.array([0.0, 1.0, 0.5])}, weight=0.1)
    np.testing.assert_allclose(s, [0.3, 0.2, 0.25])


def test_crops_stored_at_index_time_are_the_encoders_crop_embeddings(env):
    from resedis.index.store import open_index
    from resedis.io.images import open_rgb
    from resedis.index.crops import load_crops

    index = open_index(env.db)
    corpus = load_crops(index)
    assert index.manifest.extra["crops"]["model"] == env.spec("clip")
    counts = np.bincount(corpus.crop_image, minlength=len(corpus.image_ids))
    assert (counts <= 5).all() and counts.sum() == len(corpus) > 0
    clip = pipekit.models(env).get(env.spec("clip"))
    row = int(np.argmax(counts))
    sel = corpus.crop_image == row
    own = clip.encode_crops(open_rgb(corpus.paths[row]), corpus.boxes[sel])
    np.testing.assert_allclose(corpus.vectors[sel], own, atol=2e-3)  # float16 storage
    # the crops are the image's top OWL boxes by objectness
    regions = index.read("regions", ["image_id", "box", "objectness"]).to_pylist()
    mine = sorted((r for r in regions if r["image_id"] == corpus.image_ids[row]), key=lambda r: -r["objectness"])[:5]
    np.testing.assert_allclose(corpus.boxes[sel], [r["box"] for r in mine], atol=1e-4)


def test_clip_crops_scores_are_the_crop_models_cosine(env):
    from resedis.io.images import open_rgb
    from resedis.pipelines import PipelineConfig
    from resedis.query import QueryEngine

    ds = env.dataset
    results = QueryEngine(env.db, PipelineConfig(top_k=8), pipekit.models(env)).run_dataset(ds, pipeline="clip-crops")
    clip = pipekit.models(env).get(env.spec("clip"))
    checked = 0
    for q, r in zip(ds.queries, results):
        assert 0 < len(r.hits) <= 8 and all(h.image_id in ds.images for h in r.hits)
        if parse_expression(q.expression).cues:
            continue
        text = clip.encode_texts([parse_expression(q.expression).head])[0]
        for h in r.hits[:2]:
            crop = clip.encode_crops(open_rgb(h.path), np.array([h.box]))[0]
            assert h.score == pytest.approx(float(crop @ text), abs=3e-3)
            checked += 1
    assert checked >= 2


def test_siglip_scores_are_the_models_own_sigmoid_probability(env, tmp_path):
    """GT proposals + a SigLIP crop model: score = sigmoid(SiglipModel logit) of the crop."""
    from resedis.io.images import open_rgb
    from resedis.pipelines import PipelineConfig
    from resedis.query import QueryEngine

    ds = env.dataset
    cfg = PipelineConfig(top_k=3, proposals="gt", crop_model=env.spec("siglip"))
    results = QueryEngine(env.db, cfg, pipekit.models(env)).run_dataset(ds, pipeline="clip-crops")
    siglip = pipekit.models(env).get(env.spec("siglip"))
    q, r = next((q, r) for q, r in zip(ds.queries, results) if not parse_expression(q.expression).cues)
    for h in r.hits:
        x0, y0, x1, y1 = h.box
        crop = open_rgb(h.path).crop((int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))))
        logit = siglip.model_logits([crop], [parse_expression(q.expression).head])[0, 0]
        assert h.score == pytest.approx(1 / (1 + np.exp(-logit)), rel=1e-3, abs=1e-6)


class RecordingEncoder:
    """Wraps the real crop encoder; records every (image size, boxes) it is asked to embed."""

    def __init__(self, inner):
        self.inner = inner
        self.spec, self.kind, self.model = inner.spec, inner.kind, inner.model
        self.embed_dim = inner.embed_dim
        self.calls: list[tuple[tuple[int, int], np.ndarray]] = []

    def encode_crops(self, image, boxes):
        self.calls.append((image.size, np.array(boxes, float)))
        return self.inner.encode_crops(image, boxes)

    def encode_texts(self, texts):
        return self.inner.encode_texts(texts)

    def logit_params(self):
        return self.inner.logit_params()


def test_gt_proposals_give_the_scorer_exactly_the_ground_truth_boxes(env):
    from resedis.pipelines import Models, PipelineConfig
    from resedis.query import QueryEngine

    ds = env.dataset
    models = Models("cpu")
    recorder = RecordingEncoder(pipekit.models(env).get(env.spec("clip")))
    models.put(env.spec("clip"), recorder)
    cfg = PipelineConfig(top_k=5, proposals="gt")
    results = QueryEngine(env.db, cfg, models).run_dataset(ds, pipeline="clip-crops")
    # the reference: every annotation of instances.json, read independently
    inst = json.loads((env.synth / "instances.json").read_text())
    expected: dict = {}
    for a in inst["annotations"]:
        x, y, w, h = a["bbox"]
        expected.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    sizes = {im["id"]: (im["width"], im["height"]) for im in inst["images"]}
    assert len(recorder.calls) == len(expected)
    got = {}
    for size, boxes in recorder.calls:
        image_id = next(i for i, s in sizes.items() if s == size and i not in got and len(expected[i]) == len(boxes)
                        and np.allclose(sorted(map(tuple, expected[i])), sorted(map(tuple, boxes)), atol=1e-3))
        got[image_id] = boxes
    assert set(got) == set(expected)
    for r in results:  # every hit is one of those boxes
        for h in r.hits:
            assert any(np.allclose(h.box, b, atol=1e-3) for b in expected[h.image_id])


def test_gt_proposals_need_a_dataset(env):
    from resedis.errors import ResedisError
    from resedis.pipelines import PipelineConfig
    from resedis.query import QueryEngine, QueryRequest

    with pytest.raises(ResedisError, match="needs a dataset"):
        QueryEngine(env.db, PipelineConfig(proposals="gt"), pipekit.models(env)).run(
            QueryRequest("a red circle", pipeline="clip-crops"))


def test_yolo_proposals_without_the_extra_is_a_clear_error():
    import importlib.util

    from resedis.index.crop_proposals import load_yolo

    if importlib.util.find_spec("ultralytics") is not None:
        pytest.skip("ultralytics is installed")
    with pytest.raises(MissingExtraError, match=r"resedis\[yolo\]"):
        load_yolo("yolov8n.pt")


def test_index_without_crops_is_explained(env, tmp_path):
    import shutil

    from resedis.errors import ResedisError
    from resedis.index.manifest import read_manifest, write_manifest
    from resedis.pipelines import PipelineConfig
    from resedis.query import QueryEngine, QueryRequest

    db = tmp_path / "db"
    shutil.copytree(env.db, db)
    m = read_manifest(db)
    m.extra.pop("crops")
    write_manifest(db, m)
    shutil.rmtree(db / "crops.lance")
    with pytest.raises(ResedisError, match="--crop-model"):
        QueryEngine(db, PipelineConfig(), pipekit.models(env)).run(QueryRequest("a red circle", pipeline="clip-crops"))


def test_crop_corpus_is_read_once_per_pool_until_the_crops_change(env, tmp_path, monkeypatch):
    """A server makes one pipeline per request over one model pool: the crops table is read
    once, not per query, and re-read when crops are written."""
    import shutil

    import resedis.pipelines.clip_crops as cc
    from resedis.pipelines import Models, PipelineConfig
    from resedis.query import QueryEngine, QueryRequest
    from resedis.index.crops import CropConfig, CropWriter, load_crops

    db = tmp_path / "db"
    shutil.copytree(env.db, db)
    reads = []
    monkeypatch.setattr(cc, "load_crops", lambda index: reads.append(1) or load_crops(index))
    models = Models("cpu")
    models.put(env.spec("clip"), pipekit.models(env).get(env.spec("clip")))
    first = [QueryEngine(db, PipelineConfig(top_k=5), models).run(QueryRequest("a red circle", pipeline="clip-crops")).result]
    again = [QueryEngine(db, PipelineConfig(top_k=5), models).run(QueryRequest("a red circle", pipeline="clip-crops")).result]
    assert len(reads) == 1
    assert [(h.image_id, h.box, h.score) for h in first[0].hits] == [(h.image_id, h.box, h.score) for h in again[0].hits]
    # new crop rows (an image embedded again under a fresh batch) invalidate the cached corpus
    from resedis.index.store import open_index

    index = open_index(db)
    writer = CropWriter(index, CropConfig(model=env.spec("clip"), max_crops=5), encoder=models.get(env.spec("clip")))
    writer.delete(["nonexistent.jpg"])
    [QueryEngine(db, PipelineConfig(top_k=5), models).run(QueryRequest("a red circle", pipeline="clip-crops")).result]
    assert len(reads) == 2
