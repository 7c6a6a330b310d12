"""owl+rerank: the Grounding DINO backend against transformers' own post-processing, the
fusion function on hand-computed tables, and the stage only ever running the grounding
model on each query's top-K images (forward calls counted)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import pipekit
from resedis.pipelines.fusion import FusionParams, evidence, fuse_image


@pytest.fixture(scope="module")
def env():
    return pipekit.env()


@pytest.fixture(scope="module")
def gdino(env):
    return pipekit.models(env).get(env.spec("gdino"))


def test_tiny_gdino_tokenizer_uses_the_hard_coded_delimiter_ids(gdino):
    from transformers.models.grounding_dino import modeling_grounding_dino as mg

    tok = gdino.processor.tokenizer
    ids = tok("the red circle left of the blue square.")["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102 and ids[-2] == 1012
    assert [tok.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]", ".", "?")] == mg.SPECIAL_TOKENS
    assert tok.pad_token_id == 0 and tok.unk_token_id not in ids
    assert len(set(tok("red blue green circle square star")["input_ids"])) == 8  # 6 words + CLS/SEP


def test_ground_pairs_equals_transformers_postprocess(gdino):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (70, 50, 3), dtype=np.uint8))
    for text in ("a red circle", "the blue square to the left of the green star"):
        g = gdino.ground_pairs([image], [text])[0]
        ref_boxes, ref_scores = gdino.reference_postprocess(image, text)
        np.testing.assert_allclose(g.scores, ref_scores, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(g.boxes, np.clip(ref_boxes, 0, [50, 70, 50, 70]), atol=1e-3)
        assert 0.05 < g.scores.min() and g.scores.max() < 0.99, "scores saturated: tests would be blind"
    a = gdino.ground_pairs([image], ["a red circle"])[0].scores
    b = gdino.ground_pairs([image], ["a blue square"])[0].scores
    assert not np.allclose(a, b), "different texts gave identical scores"


def test_batching_does_not_change_results(gdino):
    rng = np.random.default_rng(1)
    ims = [Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)) for _ in range(2)]
    ims.append(Image.fromarray(rng.integers(0, 255, (90, 40, 3), dtype=np.uint8)))
    texts = ["a red circle", "a blue star", "the large square"]
    together = gdino.ground_pairs(ims, texts)
    for im, t, g in zip(ims, texts, together):
        alone = gdino.ground_pairs([im], [t])[0]
        np.testing.assert_allclose(g.scores, alone.scores, atol=1e-5)
        np.testing.assert_allclose(g.boxes, alone.boxes, atol=1e-3)
    regions = gdino.ground(ims[:1], texts[:1])[0]
    np.testing.assert_allclose(1 / (1 + np.exp(-regions.objectness)), together[0].scores, atol=1e-5)


def test_evidence_and_fusion_hand_computed():
    owl_b = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    owl_s = np.array([0.8, 0.4])
    gd_b = np.array([[0, 0, 10, 9], [50, 50, 60, 60], [21, 20, 30, 30]], float)  # IoU .9 with owl0, .9 with owl1
    gd_s = np.array([0.2, 0.9, 0.6])
    np.testing.assert_allclose(evidence(owl_b, gd_b, gd_s, 0.5), [0.2, 0.6])
    boxes, fused, owl_ev, gd_ev = fuse_image(owl_b, owl_s, gd_b, gd_s, FusionParams(weight=0.25, grounder_boxes=3))
    # candidates: owl0 .75*.8+.25*.2=.65, owl1 .75*.4+.25*.6=.45, gd(50..) .25*.9=.225,
    # gd0 ~ owl0 (suppressed by NMS: IoU .9, fused .65), gd2 ~ owl1 (fused .45, suppressed)
    np.testing.assert_allclose(fused, [0.65, 0.45, 0.225])
    np.testing.assert_allclose(boxes, [[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]])
    np.testing.assert_allclose(owl_ev, [0.8, 0.4, 0.0])
    np.testing.assert_allclose(gd_ev, [0.2, 0.6, 0.9])
    # λ = 0 is plain OWL, λ = 1 plain grounding
    _, f0, _, _ = fuse_image(owl_b, owl_s, gd_b, gd_s, FusionParams(weight=0.0, grounder_boxes=0))
    np.testing.assert_allclose(f0, owl_s)
    b1, f1, _, _ = fuse_image(owl_b, owl_s, gd_b, gd_s, FusionParams(weight=1.0, grounder_boxes=3))
    assert f1[0] == pytest.approx(0.9) and list(b1[0]) == [50, 50, 60, 60]
    with pytest.raises(Exception, match="weight"):
        fuse_image(owl_b, owl_s, gd_b, gd_s, FusionParams(weight=1.5))


class CountingGrounder:
    """Wraps the real backend and records every image it is given."""

    def __init__(self, inner):
        self.inner = inner
        self.spec = inner.spec
        self.seen: list[tuple[str, tuple[int, int], int]] = []

    def ground_pairs(self, images, texts):
        forward0 = self.inner.forward_calls
        out = self.inner.ground_pairs(images, texts)
        self.seen += [(t, im.size, id(im)) for im, t in zip(images, texts)]
        self.forwards = self.inner.forward_calls - forward0
        return out


def test_rerank_runs_grounding_model_only_on_top_k_images(env, gdino):
    from resedis.pipelines import Models, PipelineConfig, as_queries, get_pipeline

    models = Models("cpu")
    models.put(env.spec("owlv2"), pipekit.models(env).get(env.spec("owlv2")))
    counting = CountingGrounder(gdino)
    models.put(env.spec("gdino"), counting)
    k = 2
    cfg = PipelineConfig(top_k=6, rerank_k=k, grounder=env.spec("gdino"))
    rerank = get_pipeline("owl+rerank", env.db, cfg, models)
    owl = get_pipeline("owl", env.db, PipelineConfig(top_k=5 * k), models)
    ds = env.dataset
    queries = as_queries(dataset=ds)
    owl_results = owl.run(queries, ds)
    forwards0, images0 = gdino.forward_calls, gdino.images_seen
    results = rerank.run(queries, ds)
    expected_total = 0
    for _q, o, r in zip(queries, owl_results, results):
        top = list(dict.fromkeys(h.image_id for h in o.hits))[:k]
        expected_total += len(top)
        assert {h.image_id for h in r.hits} <= set(top), "a hit from an image the grounder never saw"
        assert len(r.hits) <= cfg.top_k
        assert all(r.hits[i].score >= r.hits[i + 1].score for i in range(len(r.hits) - 1))
    assert len(counting.seen) == expected_total
    assert gdino.images_seen - images0 == expected_total  # counted inside the backend, per forward
    assert gdino.forward_calls - forwards0 <= expected_total
    assert [t for t, _, _ in counting.seen] == [q.text for q, o in zip(queries, owl_results)
                                               for _ in list(dict.fromkeys(h.image_id for h in o.hits))[:k]]


def test_rerank_weight_zero_keeps_owl_scores(env):
    from resedis.pipelines import PipelineConfig, as_queries, get_pipeline

    models = pipekit.models(env)
    cfg = PipelineConfig(top_k=50, rerank_k=3, grounder=env.spec("gdino"))
    rerank = get_pipeline("owl+rerank", env.db, cfg, models)
    ds = env.dataset
    queries = as_queries(dataset=ds)[:3]
    prepared = rerank.prepare(queries, ds)
    fused = rerank.finish(prepared, {"weight": 0.0, "grounder_boxes": 0}, 0.5)
    for cands, res in zip(prepared.images, fused):
        owl_pairs = sorted((tuple(b), s) for c in cands for b, s in zip(c.owl_boxes.tolist(), c.owl_scores))
        got = sorted((tuple(h.box), h.score) for h in res.hits)
        # NMS at 0.5 on OWL hits that the index already suppressed per image keeps them all
        assert [g[1] for g in got] == pytest.approx([p[1] for p in owl_pairs])
        assert all(h.present == (h.score >= 0.5) for h in res.hits)


def test_rerank_reaches_k_images_when_owl_hits_crowd_into_fewer(env, gdino):
    """When the first ``max(top_k, 5K)`` OWL hits lie in fewer than K images (many boxes of
    the same images), the stage still grounds the first K distinct images of OWL's ranking."""
    from resedis.pipelines import Models, PipelineConfig, as_queries, get_pipeline

    models = Models("cpu")
    models.put(env.spec("owlv2"), pipekit.models(env).get(env.spec("owlv2")))
    counting = CountingGrounder(gdino)
    models.put(env.spec("gdino"), counting)
    ds = env.dataset
    k = len(ds.images)  # every image of the corpus
    rerank = get_pipeline("owl+rerank", env.db, PipelineConfig(top_k=1, rerank_k=k, grounder=env.spec("gdino")), models)
    owl = get_pipeline("owl", env.db, PipelineConfig(top_k=10_000), models)
    queries = as_queries(dataset=ds)
    full = owl.run(queries, ds)
    first_hits = get_pipeline("owl", env.db, PipelineConfig(top_k=5 * k), models).run(queries, ds)
    crowded = [len({h.image_id for h in r.hits}) < k for r in first_hits]
    assert any(crowded), "no query's first 5K hits crowd into fewer than K images: the test would be blind"
    prepared = rerank.prepare(queries, ds)
    for q, f, cands in zip(queries, full, prepared.images):
        expected = list(dict.fromkeys(h.image_id for h in f.hits))[:k]
        assert [c.template.image_id for c in cands] == expected, q.text
    assert len(counting.seen) == sum(len(list(dict.fromkeys(h.image_id for h in f.hits))[:k]) for f in full)
