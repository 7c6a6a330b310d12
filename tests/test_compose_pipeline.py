"""``owl+compose``: every phrase's score is the detector's own logit (checked against the
model's forward pass), queries without cues are exactly ``owl``, the negation term and the
explain breakdown equal an independent recomputation from plain ``owl`` searches, the
candidate-image restriction keeps returned scores exact, calibration stores the fusion
weights, and the request options reach the CLI and the pipeline checks.

Tolerance: float32 index vs ``Owl*ForObjectDetection`` forward, |Δlogit| <= 1e-4·max(1, |logit|)
(as tests/test_search.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import pipekit
from resedis.calibrate import calibrate_pipeline
from resedis.cli import main as cli_main
from resedis.errors import ResedisError
from resedis.expressions import FusionWeights, parse
from resedis.index import open_index
from resedis.io.images import open_rgb
from resedis.pipelines import PipelineConfig
from resedis.pipelines.compose import CUE_WEIGHTS
from resedis.query import QueryEngine, QueryRequest
from resedis.search import Searcher, sigmoid

CUED = ["the red circle left of the blue square", "the largest green triangle", "the square at the top",
        "the circle that is not red", "the star between the circle and the square"]


@pytest.fixture(scope="module")
def env(pipe_env):
    return pipe_env


@pytest.fixture(scope="module")
def engine(env):
    return QueryEngine(env.db, PipelineConfig(device="cpu", top_k=500, nms_iou=1.0), pipekit.models(env))


def logit(score: float) -> float:
    return float(np.log(score) - np.log1p(-score))


def owl_logits(env, engine, text: str) -> dict:
    """(image_id, box) -> logit of ``text`` from a plain owl search over every region."""
    searcher: Searcher = engine.pipeline("owl").searcher()
    hits = searcher.search(text, top_k=10_000, threshold=0.0).hits
    return {(h.image_id, tuple(np.round(h.box, 3))): logit(h.score) for h in hits}


@pytest.fixture(scope="module")
def exact_db(env, tmp_path_factory):
    """The same images indexed with float32 vectors (the shared test index stores float16)."""
    from resedis.index import IndexConfig, build_index

    db = tmp_path_factory.mktemp("compose32") / "db"
    build_index(env.synth / "images", db, config=IndexConfig(model=env.spec("owlv2"), max_regions=12, batch_size=4,
                                                             vector_dtype="float32"), progress=False)
    return db


def test_every_phrase_score_is_the_detectors_own_logit(env, exact_db):
    engine = QueryEngine(exact_db, PipelineConfig(device="cpu", top_k=500, nms_iou=1.0), pipekit.models(env))
    pipe = engine.pipeline("owl+compose")
    backend = pipe.searcher().encoder
    from resedis.pipelines.base import QueryText

    prepared = pipe.prepare([QueryText(t, t, ("large",)) for t in CUED])
    assert set(prepared.composed) == set(range(len(CUED))) and not prepared.plain
    images = {}
    checked = 0
    for c in prepared.composed.values():
        phrases = list(c.logits)
        assert c.parsed.subject.text in phrases and len(phrases) >= 2  # subject + anchors / excluded phrases
        for local, (image_id, path) in enumerate(c.images):
            if image_id not in images:
                images[image_id] = open_rgb(path)
            boxes, ref, _ = backend.detector_logits(images[image_id], phrases)
            for r in np.flatnonzero(c.region_image == local):
                same = np.flatnonzero(np.all(np.abs(boxes - c.boxes[r]) <= 1e-2, axis=1))
                assert len(same), f"stored box {c.boxes[r]} of {image_id} is not one of the detector's boxes"
                for k, phrase in enumerate(phrases):
                    got = c.logits[phrase][r]
                    err = np.abs(ref[same, k] - got).min()
                    assert err <= 1e-4 * max(1.0, abs(got)), (phrase, image_id, got, ref[same, k])
                    checked += 1
    assert checked > 100


def test_queries_without_cues_are_exactly_owl(env, engine):
    texts = ["red circle", "a small blue square", "zxq blorp", "the right answer"]
    for text in texts:
        assert not parse(text).has_cues
        owl = engine.run(QueryRequest(text, pipeline="owl", top_k=50)).result.hits
        comp = engine.run(QueryRequest(text, pipeline="owl+compose", top_k=50)).result.hits
        assert [(h.image_id, h.box, h.score, h.present) for h in comp] == \
               [(h.image_id, h.box, h.score, h.present) for h in owl]
        assert all(h.explain is None for h in comp)


def test_negative_term_and_explain_equal_an_independent_recomputation(env, engine):
    text, excluded = "a red circle", "large"
    w = FusionWeights()
    whole = owl_logits(env, engine, text)
    banned = owl_logits(env, engine, "large circle")  # --not large on "a red circle" excludes "large circle"
    hits = engine.run(QueryRequest(text, pipeline="owl+compose", top_k=500, negative=(excluded,),
                                   explain=True)).result.hits
    assert len(hits) == len(whole)  # every region, NMS off
    for h in hits:
        key = (h.image_id, tuple(np.round(h.box, 3)))
        expected = whole[key] - w.negation * float(sigmoid(banned[key]))
        assert logit(h.score) == pytest.approx(expected, abs=1e-4)
        assert set(h.explain) == {"subject", "not: large circle", "total"}
        assert h.explain["subject"] == pytest.approx(whole[key], abs=1e-4)
        assert h.explain["not: large circle"] == pytest.approx(-w.negation * float(sigmoid(banned[key])), abs=1e-5)
        assert h.explain["subject"] + h.explain["not: large circle"] == pytest.approx(h.explain["total"], abs=1e-9)
        assert json.loads(json.dumps(h.to_json()))["explain"] == h.explain
    # the ranking changed where the excluded phrase is strong: a pure re-ranking of owl would not
    owl_order = sorted(whole, key=lambda k: -whole[k])
    assert [(h.image_id, tuple(np.round(h.box, 3))) for h in hits] != owl_order


def test_explain_entries_sum_to_the_score_for_every_cue_kind(engine):
    for text in CUED:
        hits = engine.run(QueryRequest(text, pipeline="owl+compose", top_k=30, explain=True)).result.hits
        assert hits
        for h in hits:
            parts = {k: v for k, v in h.explain.items() if k != "total"}
            assert "subject" in parts and len(parts) >= 2, (text, h.explain)
            assert sum(parts.values()) == pytest.approx(h.explain["total"], abs=1e-9)
            assert logit(h.score) == pytest.approx(h.explain["total"], abs=1e-6)
            assert all(v <= 1e-12 for k, v in parts.items() if k != "subject")  # cues only lower a score
        plain = engine.run(QueryRequest(text, pipeline="owl+compose", top_k=30)).result.hits
        assert [(h.image_id, h.box, h.score) for h in plain] == [(h.image_id, h.box, h.score) for h in hits]
        assert all("explain" not in h.to_json() for h in plain)


def test_candidate_images_keep_returned_scores_exact(env):
    text = "the red circle left of the blue square"
    full = QueryEngine(env.db, PipelineConfig(device="cpu", top_k=500, nms_iou=1.0), pipekit.models(env))
    few = QueryEngine(env.db, PipelineConfig(device="cpu", top_k=500, nms_iou=1.0, compose_images=2),
                      pipekit.models(env))
    a = {(h.image_id, h.box): h.score for h in full.run(QueryRequest(text, pipeline="owl+compose")).result.hits}
    b = few.run(QueryRequest(text, pipeline="owl+compose")).result.hits
    assert len({h.image_id for h in b}) == 2 < len({i for i, _ in a})
    # the two images composed are those with the best whole-expression logit
    whole = full.run(QueryRequest(text, pipeline="owl")).result.hits
    best_images = list(dict.fromkeys(h.image_id for h in whole))[:2]
    assert {h.image_id for h in b} == set(best_images)
    for h in b:
        assert h.score == a[h.image_id, h.box]


def test_calibrate_fits_and_stores_the_cue_weights(env, tmp_path):
    import shutil

    db = tmp_path / "db"
    shutil.copytree(env.db, db)
    index = open_index(db)
    pipe = QueryEngine(index, PipelineConfig(device="cpu"), pipekit.models(env)).pipeline("owl+compose")
    grid = pipe.param_grid()
    assert len(grid) > 4 and all(set(p) == set(CUE_WEIGHTS) for p in grid)
    assert len({p["negation"] for p in grid}) > 1 and len({p["relation"] for p in grid}) > 1
    assert grid[0] == pipe.default_params()  # ties keep the defaults (the test set has no negation)
    result, stored, _ = calibrate_pipeline(pipe, env.dataset)
    assert stored["params"] == result.params and result.params in grid
    assert not any(parse(q.expression).negations for q in env.dataset.queries)
    assert result.params["negation"] == pipe.default_params()["negation"]  # nothing to fit it on
    params, choice = pipe.resolved_choice()
    assert params == result.params and choice.source == "calibrated"
    assert choice.value == pytest.approx(result.threshold)
    assert pipe.weights(params) == replace(FusionWeights(), **result.params)


def test_negative_and_explain_need_a_pipeline_that_takes_them(engine):
    with pytest.raises(ResedisError, match="owl\\+compose"):
        engine.run(QueryRequest("red circle", pipeline="owl", negative=("large",)))
    with pytest.raises(ResedisError, match="explain"):
        engine.run(QueryRequest("red circle", pipeline="owl", explain=True))
    with pytest.raises(ResedisError, match="list of texts"):
        engine.run(QueryRequest("red circle", pipeline="owl+compose", negative="large"))
    with pytest.raises(ResedisError, match="empty negative term"):
        engine.run(QueryRequest("red circle", pipeline="owl+compose", negative=("  ",)))
    with pytest.raises(ResedisError, match="compose_images"):
        PipelineConfig(compose_images=0).validate()


def test_search_cli_not_and_explain(env, capsys):
    args = ["search", "a red circle", "--db", str(env.db), "--device", "cpu", "--pipeline", "owl+compose",
            "--top-k", "3", "--json", "--explain", "--not", "large", "--not", "blue circle"]
    assert cli_main(args) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 3
    for h in hits:
        assert set(h["explain"]) == {"subject", "not: large circle", "not: blue circle", "total"}
    assert cli_main(args[:-6] + ["--json"]) == 0
    assert all("explain" not in json.loads(line) for line in capsys.readouterr().out.splitlines())


def test_with_a_vector_index_images_come_from_its_candidates_and_scores_stay_exact(env, tmp_path, monkeypatch):
    """With a vector index, the images to compose are chosen from the index's candidates
    (a library too large for a full scan: no region-matrix product over every region), and
    the phrases are scored exactly on those images. A one-partition IVF_FLAT dot index
    returns the true top candidates, so with only 8 of them per query the composed hits
    equal the exact path's (same images, boxes and scores)."""
    import shutil

    import resedis.search_corpus as search_corpus
    from resedis.index.ann import AnnConfig, build_ann_index

    ann_db = tmp_path / "db"
    shutil.copytree(env.db, ann_db)
    build_ann_index(open_index(ann_db).regions_table,
                    AnnConfig(min_rows=1, index_type="IVF_FLAT", metric="dot", num_partitions=1))
    config = PipelineConfig(device="cpu", top_k=50, nms_iou=1.0, compose_images=2)
    exact = QueryEngine(env.db, config, pipekit.models(env))
    want = {t: exact.run(QueryRequest(t, pipeline="owl+compose")).result.hits for t in CUED}
    monkeypatch.setattr(AnnConfig, "candidates_for", lambda self, k: 8)
    full_scans = []
    real = search_corpus.Corpus.logits

    def spy(self, queries):
        full_scans.append(np.shape(queries))
        return real(self, queries)

    monkeypatch.setattr(search_corpus.Corpus, "logits", spy)
    from resedis.index.ann_search import AnnSearch

    def dense(*args, **kwargs):
        raise AssertionError("an (N, Q) logits array was built: compose must rank the candidate rows only")

    monkeypatch.setattr(AnnSearch, "logits", dense)
    ann = QueryEngine(ann_db, config, pipekit.models(env))
    searcher = ann.pipeline("owl+compose").searcher()
    assert searcher.ann is not None and searcher.ann.available()
    before = searcher.ann.queries_answered
    for t in CUED:
        got = ann.run(QueryRequest(t, pipeline="owl+compose")).result.hits
        assert len(got) > 0
        assert [(h.image_id, h.box, h.score, h.present) for h in got] == \
            [(h.image_id, h.box, h.score, h.present) for h in want[t]], t
    assert full_scans == []  # never a product over every region
    assert not searcher.corpus().vectors_loaded  # nor the region matrix read whole
    assert searcher.ann.queries_answered - before == len(CUED)


def test_a_dataset_run_composes_only_the_datasets_images(env):
    """A dataset holding some of the index's images: the images to compose come from those
    only, however high another image's subject score is (every hit is a dataset image)."""
    from resedis.pipelines.base import QueryText

    engine = QueryEngine(env.db, PipelineConfig(device="cpu", top_k=50, nms_iou=1.0, compose_images=3),
                         pipekit.models(env))
    pipe = engine.pipeline("owl+compose")
    queries = [QueryText(f"q{i}", t) for i, t in enumerate(CUED)]
    everywhere = {h.image_id for r in pipe.run(queries, env.dataset) for h in r.hits}
    keep = sorted(set(env.dataset.images) - everywhere)  # drop the images that do answer the queries
    subset = replace(env.dataset, images={i: env.dataset.images[i] for i in keep})
    results = pipe.run(queries, subset)
    hits = [h for r in results for h in r.hits]
    assert hits and {h.image_id for h in hits} <= set(keep)
    # and no compose slot went to an image outside the dataset: each query composes 3 of them
    assert len(keep) >= 3 and all(len({h.image_id for h in r.hits}) == 3 for r in results)
