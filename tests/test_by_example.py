"""Query by example (:mod:`resedis.by_example`): every returned score is the detector's own
image-conditioned logit — its class head applied with the example region's class
embedding, as transformers' ``image_guided_detection`` computes it — for a region of an
indexed image (``--like``) and of an image that is not indexed (``--like-image``), on tiny
OWLv2 and OWL-ViT checkpoints.

Tolerance: float32 index vs the model's forward, |Δlogit| <= 1e-4 * max(1, |logit|) (as
tests/test_search.py); the indexed example's q̂ = e/|e| differs from the detector's
e/(|e|+1e-6) by a relative 1e-6/|e|, well inside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resedis.boxes import best_match, box_iou
from resedis.by_example import ByExample, parse_box
from resedis.cli import main
from resedis.errors import ResedisError
from resedis.index import IndexConfig, build_index, open_index
from resedis.io.images import open_rgb
from resedis.pipelines import Models, PipelineConfig
from resedis.query import QueryEngine, QueryRequest

FAMILIES = ["owlv2", "owlvit"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from resedis.synth import generate

    out = tmp_path_factory.mktemp("synth_qbe")
    generate(out, images=5, queries=4, absent=1, seed=21, progress=False)
    return out


@pytest.fixture(scope="module")
def backends(tiny_models) -> dict:
    from resedis.models import load_model

    return {fam: load_model(f"{fam}:{tiny_models[fam]}", "cpu") for fam in FAMILIES}


def n_patches(backend) -> int:
    return len(backend.encode_patches([Image.new("RGB", (32, 32))])[0])


@pytest.fixture(scope="module")
def engines(synth, backends, tmp_path_factory) -> dict:
    """family -> QueryEngine over a float32 index storing every visible patch, NMS off."""
    out = {}
    for fam, backend in backends.items():
        db = tmp_path_factory.mktemp(f"qbe-{fam}")
        config = IndexConfig(max_regions=n_patches(backend), nms_iou=1.0, vector_dtype="float32", batch_size=8)
        build_index(synth / "images", db, config=config, progress=False, encoder=backend)
        models = Models("cpu")
        models.put(backend.spec, backend)
        index = open_index(db)
        out[fam] = QueryEngine(index, PipelineConfig(nms_iou=1.0, top_k=10_000, device="cpu"), models)
    return out


def _feats(backend, image):
    model = backend.model
    pixel_values, _ = backend.preprocess([image])
    fmap, _ = model.image_embedder(pixel_values=pixel_values)
    return fmap.reshape(1, -1, fmap.shape[-1]), fmap


def class_embeds(backend, image) -> torch.Tensor:
    """(P, E) the class head's raw query embeddings of every patch (transformers' modules)."""
    with torch.inference_mode():
        feats, _ = _feats(backend, image)
        return backend.model.class_predictor(feats)[1][0]


def guided_logits(backend, image, query: torch.Tensor) -> np.ndarray:
    """(P,) the class head's logits on ``image`` for query embedding ``query`` (E,), as
    image_guided_detection applies it."""
    with torch.inference_mode():
        feats, _ = _feats(backend, image)
        logits, _ = backend.model.class_predictor(image_feats=feats, query_embeds=query[None, None, :])
    return logits[0, :, 0].float().numpy()


def _logit(score: float) -> float:
    return float(np.log(score) - np.log1p(-score))


def check_every_hit(engine, backend, hits, reference) -> None:
    """Each hit's logit equals ``reference[image_id][patch]`` at a patch with the hit's box."""
    paths = {r["image_id"]: r["path"] for r in engine.index.read("images", ["image_id", "path"]).to_pylist()}
    boxes = {i: backend.detector_logits(open_rgb(p), ["x"])[0] for i, p in paths.items()}
    assert hits
    for hit in hits:
        same = np.flatnonzero(np.all(np.abs(boxes[hit.image_id] - np.asarray(hit.box)) <= 1e-2, axis=1))
        assert len(same), (hit.image_id, hit.box)
        ref = reference[hit.image_id][same]
        err = np.abs(ref - _logit(hit.score)).min()
        assert err <= 1e-4 * max(1.0, float(np.abs(ref).max())), (hit.image_id, ref, _logit(hit.score))


@pytest.mark.parametrize("family", FAMILIES)
def test_like_an_indexed_region_scores_are_image_conditioned_logits(family, engines, backends):
    engine, backend = engines[family], backends[family]
    index = engine.index
    paths = {r["image_id"]: r["path"] for r in index.read("images", ["image_id", "path"]).to_pylist()}
    source = sorted(paths)[1]
    image = open_rgb(paths[source])
    pred_boxes, _, objectness = backend.detector_logits(image, ["x"])
    w, h = image.size
    box = (0.2 * w, 0.25 * h, 0.7 * w, 0.8 * h)
    answer = engine.run(QueryRequest(like=ByExample(image_id=source, box=box)))
    hits = answer.result.hits
    assert answer.pipeline == "owl" and answer.example.source == "index"
    assert len(hits) == index.stats()["regions"]  # every stored region once (NMS off)
    # The chosen region: highest IoU with the box among the patches the index stored
    # (every visible one here), ties by objectness.
    visible = (pred_boxes[:, 2] - pred_boxes[:, 0] > 0.01) & (pred_boxes[:, 3] - pred_boxes[:, 1] > 0.01)
    iou = np.where(visible, box_iou(np.array([box]), pred_boxes)[0], -1.0)
    best = np.flatnonzero(iou == iou.max())
    patch = int(best[np.argmax(objectness[best])])
    assert np.allclose(answer.example.box, pred_boxes[patch], atol=1e-2)
    query = class_embeds(backend, image)[patch]
    reference = {i: guided_logits(backend, open_rgb(p), query) for i, p in paths.items()}
    check_every_hit(engine, backend, hits, reference)
    # The source region finds itself, with the logit s(1+b): the best any query can give it.
    own = [h for h in hits if h.image_id == source and np.allclose(h.box, pred_boxes[patch], atol=1e-2)]
    assert own


@pytest.mark.parametrize("family", FAMILIES)
def test_like_an_image_without_box_equals_image_guided_detection(family, engines, backends, synth, tmp_path):
    """No box: OWL's own query rule (transformers' embed_image_query), and every score is
    the logit of transformers' own image_guided_detection forward."""
    engine, backend = engines[family], backends[family]
    query_image = Image.new("RGB", (48, 40), (240, 240, 240))
    query_image.paste((200, 30, 30), (8, 6, 30, 30))
    path = tmp_path / "query.png"
    query_image.save(path)
    answer = engine.run(QueryRequest(like=ByExample(image=str(path))))
    assert answer.example.source == "image"
    paths = {r["image_id"]: r["path"] for r in engine.index.read("images", ["image_id", "path"]).to_pylist()}
    model, processor = backend.model, backend.processor
    reference = {}
    for image_id, p in paths.items():
        inputs = processor(images=open_rgb(p), query_images=open_rgb(str(path)), return_tensors="pt")
        with torch.inference_mode():
            out = model.image_guided_detection(**inputs)
        reference[image_id] = out.logits[0, :, 0].float().numpy()
    check_every_hit(engine, backend, answer.result.hits, reference)
    # and the query embedding is the one embed_image_query picks
    with torch.inference_mode():
        feats, fmap = _feats(backend, open_rgb(str(path)))
        picked, _, _ = model.embed_image_query(feats, fmap)
    q = picked[0, 0] / (torch.linalg.norm(picked[0, 0]) + 1e-6)
    np.testing.assert_allclose(answer.example.vector[:-1], q.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_like_an_image_with_box(family, engines, backends, tmp_path):
    engine, backend = engines[family], backends[family]
    image = Image.new("RGB", (64, 48), (20, 20, 20))
    image.paste((30, 200, 30), (30, 10, 60, 40))
    path = tmp_path / "q.png"
    image.save(path)
    pred_boxes, _, objectness = backend.detector_logits(open_rgb(str(path)), ["x"])
    area = (pred_boxes[:, 2] - pred_boxes[:, 0]) * (pred_boxes[:, 3] - pred_boxes[:, 1])
    x0, y0, x1, y1 = pred_boxes[int(np.argmax(area))]
    box = (x0 + 1.0, y0 + 0.5, x1 + 2.0, y1 - 0.5)  # near a predicted box, equal to none
    answer = engine.run(QueryRequest(like=ByExample(image=str(path), box=box), top_k=15))
    iou = box_iou(np.array([box]), pred_boxes)[0]
    assert iou.max() > 0
    best = np.flatnonzero(iou == iou.max())
    patch = int(best[np.argmax(objectness[best])])
    assert answer.example.patch == patch
    query = class_embeds(backend, open_rgb(str(path)))[patch]
    paths = {r["image_id"]: r["path"] for r in engine.index.read("images", ["image_id", "path"]).to_pylist()}
    reference = {i: guided_logits(backend, open_rgb(p), query) for i, p in paths.items()}
    assert len(answer.result.hits) == 15
    check_every_hit(engine, backend, answer.result.hits, reference)


def test_best_match_rule():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], float)
    assert best_match((1, 1, 10, 10), boxes) == 0  # highest IoU; tie -> the first
    assert best_match((1, 1, 10, 10), boxes, np.array([0.0, 2.0, 9.0, 9.0])) == 1  # tie -> higher priority
    # no overlap: generalised IoU picks the nearest box, not the first
    assert best_match((31, 31, 35, 35), boxes) == 2
    assert best_match((61, 61, 70, 70), boxes) == 3


def test_bad_examples_are_refused(engines, tmp_path):
    engine = engines["owlv2"]
    with pytest.raises(ResedisError, match="not in the index"):
        engine.run(QueryRequest(like=ByExample(image_id="nope.png", box=(0, 0, 5, 5))))
    with pytest.raises(ResedisError, match="exactly one of"):
        engine.run(QueryRequest(like=ByExample()))
    with pytest.raises(ResedisError, match="no such file"):
        engine.run(QueryRequest(like=ByExample(image=str(tmp_path / "missing.png"))))
    with pytest.raises(ResedisError, match="not both"):
        engine.run(QueryRequest("a red circle", like=ByExample(image_id="x")))
    with pytest.raises(ResedisError, match="owl pipeline"):
        engine.run(QueryRequest(like=ByExample(image_id="x"), pipeline="clip-crops"))
    image_id = engine.index.read("images", ["image_id"]).to_pylist()[0]["image_id"]
    with pytest.raises(ResedisError, match="outside image"):
        engine.run(QueryRequest(like=ByExample(image_id=image_id, box=(5000, 5000, 5100, 5100))))
    for bad in ("1,2,3", "1,2,3,x", "5,5,5,9", [1, 2, 0, 9]):
        with pytest.raises(ResedisError, match="box"):
            parse_box(bad)
    assert parse_box("1, 2, 30, 40") == (1.0, 2.0, 30.0, 40.0)


def test_cli_like_and_like_image(engines, tmp_path, capsys):
    engine = engines["owlvit"]
    db = str(engine.index.path)
    image_id = sorted(r["image_id"] for r in engine.index.read("images", ["image_id"]).to_pylist())[0]
    assert main(["search", "--db", db, "--like", image_id, "--box", "2,2,30,30", "--top-k", "5", "--json",
                 "--device", "cpu"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    api = engine.run(QueryRequest(like=ByExample(image_id=image_id, box=(2, 2, 30, 30)), top_k=5)).result.hits
    # the CLI uses the library's default NMS, the engine here none: compare the best hit
    assert lines[0]["image_id"] == api[0].image_id and lines[0]["score"] == pytest.approx(api[0].score, rel=1e-5)
    path = tmp_path / "q.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(path)
    assert main(["search", "--db", db, "--like-image", str(path), "--top-k", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "like q.png" in out
    assert main(["search", "--db", db, "--device", "cpu"]) == 2
    assert "TEXT" in capsys.readouterr().err
