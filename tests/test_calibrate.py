"""Calibration: the fitted threshold is the brute-force F1 optimum (checked with the metric
suite itself), it is stored per pipeline in the manifest and used by search, and
evaluation with a calibration split never reports the queries it fitted on."""

from __future__ import annotations

import math

import numpy as np
import pytest

import pipekit
from resedis import metrics
from resedis.calibrate import (
    digest_ids,
    evaluate_with_calibration,
    fit_threshold,
    kfold_splits,
    parse_split,
    split_queries,
)
from resedis.errors import ResedisError
from resedis.types import Hit, Instance, Query, QueryResult


def _rle_box(h, w, box):
    from resedis.masks import encode_mask

    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return encode_mask(m)


def _toy():
    """3 queries (one absent), hand-made hits with tied scores."""
    q1 = Query("q1", "a", [Instance("A", _rle_box(50, 50, (0, 0, 10, 10)), (0, 0, 10, 10))])
    q2 = Query("q2", "b", [Instance("B", _rle_box(50, 50, (20, 20, 40, 40)), (20, 20, 40, 40)),
                           Instance("C", _rle_box(50, 50, (0, 0, 10, 10)), (0, 0, 10, 10))])
    q3 = Query("q3", "c", [])
    res = [
        QueryResult("q1", "a", [Hit("A", (0, 0, 10, 10), 0.9, True), Hit("B", (0, 0, 5, 5), 0.6, True),
                                Hit("A", (30, 30, 40, 40), 0.6, True)]),
        QueryResult("q2", "b", [Hit("B", (20, 20, 40, 40), 0.7, True), Hit("C", (0, 0, 10, 10), 0.3, True),
                                Hit("C", (30, 0, 40, 10), 0.8, True)]),
        QueryResult("q3", "c", [Hit("A", (0, 0, 10, 10), 0.65, True), Hit("B", (1, 1, 9, 9), 0.2, True)]),
    ]
    return [q1, q2, q3], res


def _f1_at(queries, results, t):
    decided = {r.query_id: [Hit(h.image_id, h.box, h.score, h.score >= t) for h in r.hits] for r in results}
    return metrics.evaluate(queries, decided)["F1"]


def test_fit_threshold_is_the_brute_force_optimum():
    queries, results = _toy()
    fit = fit_threshold(queries, results)
    scores = sorted({h.score for r in results for h in r.hits} | {1.0})
    brute = max(_f1_at(queries, results, t) for t in scores)
    assert fit.F1 == pytest.approx(brute)
    assert _f1_at(queries, results, fit.threshold) == pytest.approx(fit.F1)
    # hand check: keep >= 0.7 -> TP q1A, q2B ; FP q2 C(30..) , FP q3? no (0.65 < .7): P=2/3, R=2/3
    assert fit.F1 == pytest.approx(2 / 3) and fit.threshold == pytest.approx((0.7 + 0.65) / 2)


def test_fit_threshold_random_cross_check():
    rng = np.random.default_rng(0)
    queries, _ = _toy()
    for _ in range(20):
        results = []
        for q in queries:
            hits = [Hit(rng.choice(["A", "B", "C"]), tuple(float(v) for v in rng.choice([(0, 0, 10, 10), (20, 20, 40, 40), (5, 5, 15, 15)])),
                        float(rng.choice([0.1, 0.3, 0.5, 0.7, 0.9])), True) for _ in range(int(rng.integers(0, 6)))]
            results.append(QueryResult(q.query_id, q.expression, hits))
        fit = fit_threshold(queries, results)
        grid = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
        assert fit.F1 == pytest.approx(max(_f1_at(queries, results, t) for t in grid))
        if math.isfinite(fit.threshold):
            assert _f1_at(queries, results, fit.threshold) == pytest.approx(fit.F1)


def test_splits_are_disjoint_stratified_and_stable(env):
    ds = env.dataset
    calib, rest = split_queries(ds, 0.4, seed=3)
    assert set(calib).isdisjoint(rest) and set(calib) | set(rest) == {q.query_id for q in ds.queries}
    absent = {q.query_id for q in ds.queries if q.is_absent}
    assert absent & set(calib) and absent & set(rest)  # 2 absent queries: one on each side
    assert (calib, rest) == split_queries(ds, 0.4, seed=3)
    folds = kfold_splits(ds, 3)
    assert sorted(qid for f in folds for qid in f) == sorted(q.query_id for q in ds.queries)
    assert parse_split("kfold:4") == ("kfold", 4) and parse_split("0.25") == ("holdout", 0.25)
    for bad in ("1.5", "kfold:x", "half"):
        with pytest.raises(ResedisError):
            parse_split(bad)


@pytest.fixture(scope="module")
def env():
    return pipekit.env()


def test_calibrate_cli_stores_threshold_per_pipeline_and_search_uses_it(env, tmp_path, capsys):
    from resedis.cli import main
    from resedis.index.manifest import read_manifest
    from resedis.pipelines import PipelineConfig, get_pipeline
    from resedis.search import Searcher

    db = pipekit.copy_db(env, tmp_path)
    assert main(["calibrate", "--dataset", str(env.synth), "--db", str(db), "--top-k", "10"]) == 0
    out = capsys.readouterr().out
    assert "threshold" in out and "F1" in out and "N_acc" in out
    cal = read_manifest(db).calibration
    entry = cal["owl"]
    assert isinstance(entry["threshold"], float) and entry["queries"] == len(env.dataset.queries)
    assert entry["query_ids_sha256"] == digest_ids([q.query_id for q in env.dataset.queries])
    assert cal["threshold"] == entry["threshold"]  # mirrored where the engine's Searcher reads it
    searcher = Searcher(db, encoder=pipekit.models(env).get(env.spec("owlv2")))
    assert searcher.threshold == entry["threshold"]
    pipe = get_pipeline("owl", db, PipelineConfig(), pipekit.models(env))
    params, threshold, source = pipe.resolved()
    assert (threshold, source) == (entry["threshold"], "calibrated")
    # the reported F1 is what the metric suite gives with that threshold on those queries
    results = pipe.run(__import__("resedis.pipelines", fromlist=["as_queries"]).as_queries(dataset=env.dataset), env.dataset)
    got = metrics.evaluate(env.dataset.queries, metrics.results_by_query(results))
    assert got["F1"] == pytest.approx(entry["F1"]) and got["N_acc"] == entry["N_acc"]

    # clip-crops: its own entry with the relation weight; the owl entry is untouched
    assert main(["calibrate", "--dataset", str(env.synth), "--db", str(db), "--pipeline", "clip-crops", "--json"]) == 0
    cal2 = read_manifest(db).calibration
    assert cal2["owl"] == entry and "weight" in cal2["clip-crops"]["params"]
    assert cal2["threshold"] == entry["threshold"]


def test_eval_holdout_never_reports_the_fitted_queries(env):
    from resedis.pipelines import PipelineConfig, get_pipeline

    pipe = get_pipeline("owl", env.db, PipelineConfig(top_k=10), pipekit.models(env))
    results, reported, report = evaluate_with_calibration(pipe, env.dataset, "0.5", seed=1)
    calib, rest = split_queries(env.dataset, 0.5, seed=1)
    assert report["mode"] == "holdout" and report["calibration_query_ids"] == calib
    assert [q.query_id for q in reported.queries] == rest == [r.query_id for r in results]
    assert report["evaluated_queries"] == len(rest) and report["calibration_queries"] == len(calib)
    # the threshold is the one fitted on the calibration queries alone
    sub_q = [q for q in env.dataset.queries if q.query_id in set(calib)]
    prepared = pipe.prepare(__import__("resedis.pipelines", fromlist=["as_queries"]).as_queries(dataset=env.dataset), env.dataset)
    fit = fit_threshold(sub_q, [r for r in pipe.finish(prepared, {}, 0.0) if r.query_id in set(calib)])
    assert report["threshold"] == pytest.approx(fit.threshold)
    assert all(h.present == (h.score >= fit.threshold) for r in results for h in r.hits)

    results_k, reported_k, report_k = evaluate_with_calibration(pipe, env.dataset, "kfold:2")
    assert len(results_k) == len(env.dataset.queries) and len(report_k["folds"]) == 2
    for fold in report_k["folds"]:
        assert set(fold["queries"]) <= {q.query_id for q in env.dataset.queries}


def test_stored_calibration_on_the_same_queries_is_flagged(env, tmp_path):
    from resedis.calibrate import calibrate_prepared, store_calibration
    from resedis.pipelines import PipelineConfig, as_queries, get_pipeline

    db = pipekit.copy_db(env, tmp_path)
    pipe = get_pipeline("owl", db, PipelineConfig(top_k=10), pipekit.models(env))
    prepared = pipe.prepare(as_queries(dataset=env.dataset), env.dataset)
    store_calibration(pipe.index, calibrate_prepared(pipe, prepared, env.dataset.queries, dataset_name=env.dataset.name))
    _, _, report = evaluate_with_calibration(pipe, env.dataset, None)
    assert report["source"] == "calibrated" and "warning" in report
    _, _, report = evaluate_with_calibration(pipe, env.dataset, "none")
    assert report["source"] == "default" and report["threshold"] == pipe.default_threshold


def test_calibration_fitted_with_another_crop_encoder_or_grounder_is_not_used(env, tmp_path):
    """A clip-crops threshold fitted on CLIP cosines must not decide presence for SigLIP
    probabilities (nor rerank weights for another grounder): the entry records the models
    it was fitted with and is ignored, with a note, under other ones."""
    from resedis.calibrate import calibrate_prepared, store_calibration
    from resedis.index.manifest import read_manifest
    from resedis.pipelines import PipelineConfig, as_queries, get_pipeline

    db = pipekit.copy_db(env, tmp_path)
    models = pipekit.models(env)
    queries = as_queries(dataset=env.dataset)
    clip = get_pipeline("clip-crops", db, PipelineConfig(top_k=5), models)
    result = calibrate_prepared(clip, clip.prepare(queries, env.dataset), env.dataset.queries)
    store_calibration(clip.index, result)
    entry = read_manifest(db).calibration["clip-crops"]
    assert entry["context"] == {"crop_model": clip.crop_model()}
    # the same crop encoder (index crops or GT proposals): the stored values apply
    for cfg in (PipelineConfig(top_k=5), PipelineConfig(top_k=5, proposals="gt")):
        _, threshold, source = get_pipeline("clip-crops", db, cfg, models).resolved()
        assert (threshold, source) == (entry["threshold"], "calibrated")
    # another encoder: its own documented default, and eval says why
    siglip = get_pipeline("clip-crops", db, PipelineConfig(top_k=5, proposals="gt", crop_model=env.spec("siglip")), models)
    _, threshold, source = siglip.resolved()
    assert source == "default" and threshold == siglip.default_threshold == 0.1
    _, _, report = evaluate_with_calibration(siglip, env.dataset, None)
    assert report["source"] == "default" and "siglip" in report["note"] and "not" in report["note"]

    rerank = get_pipeline("owl+rerank", db, PipelineConfig(top_k=5, rerank_k=1, grounder=env.spec("gdino")), models)
    store_calibration(rerank.index, calibrate_prepared(rerank, rerank.prepare(queries[:4], env.dataset), env.dataset.queries[:4]))
    assert rerank.resolved()[2] == "calibrated"
    other = get_pipeline("owl+rerank", db, PipelineConfig(grounder="gdino:/some/other/grounder"), models)
    assert other.resolved()[2] == "default" and "/some/other/grounder" in other.calibration_note
