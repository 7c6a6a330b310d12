"""Which presence threshold decides ``present`` (resedis.thresholds), at every level of the
precedence — argument > index calibration > checkpoint ``presence_threshold`` > 0.1 — and
through every caller: Searcher/search, search_dataset, the pipelines, eval --db,
calibrate's "none" split, ``resedis stats`` and the service.

The "finetuned" checkpoint is the tiny random OWLv2 fixture copied with a
``resedis.json`` added, as ``resedis finetune`` writes it; its threshold is chosen between
two of the index's real scores so it splits hits differently from 0.1."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from resedis.cli import main as cli_main
from resedis.errors import ResedisError
from resedis.index import IndexConfig, build_index, open_index
from resedis.index.manifest import read_manifest, write_manifest
from resedis.pipelines import PipelineConfig, get_pipeline
from resedis.query import QueryEngine, QueryRequest
from resedis.search import Searcher, search, search_dataset
from resedis.thresholds import DEFAULT_THRESHOLD, checkpoint_threshold, choose_threshold

TEXTS = ["a red circle", "the small blue square on the left", "green triangle", "the large yellow star"]


def _present_matches(hits, t) -> None:
    assert hits and [h.present for h in hits] == [h.score >= t for h in hits]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_models, synth_small):
    base = tmp_path_factory.mktemp("thresholds")
    ckpt = base / "finetuned"
    shutil.copytree(tiny_models["owlv2"], ckpt)
    plain_db, db = base / "plain.db", base / "ckpt.db"
    images = synth_small / "images"
    build_index(images, plain_db, config=IndexConfig(model=f"owlv2:{tiny_models['owlv2']}", max_regions=6, device="cpu"),
                progress=False)
    build_index(images, db, config=IndexConfig(model=f"owlv2:{ckpt}", max_regions=6, device="cpu"), progress=False)
    # a threshold between two real scores, above 0.1, that splits the hits
    scores = np.unique([h.score for r in Searcher(db, device="cpu").search_many(TEXTS, top_k=20, threshold=0.0) for h in r.hits])
    usable = scores[scores >= DEFAULT_THRESHOLD]
    assert len(usable) >= 4, scores
    mid = len(usable) // 2
    t = float((usable[mid - 1] + usable[mid]) / 2)
    (ckpt / "resedis.json").write_text(json.dumps({"presence_threshold": t, "threshold_source": "validation"}))
    return {"base": base, "ckpt": ckpt, "db": db, "plain_db": plain_db, "t": t, "dataset": synth_small}


def test_precedence_table(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "resedis.json").write_text(json.dumps({"presence_threshold": 0.6}))
    model = f"owlv2:{tmp_path}"
    rows = [  # (explicit, calibrated, model) -> (value, source)
        ((0.3, 0.5, model), (0.3, "argument")),
        ((0.0, 0.5, model), (0.0, "argument")),  # 0 is a value, not "unset"
        ((None, 0.5, model), (0.5, "calibrated")),
        ((None, None, model), (0.6, "checkpoint")),
        ((None, None, None), (0.1, "default")),
        ((None, None, "owlv2:google/owlv2-base-patch16-ensemble"), (0.1, "default")),  # hub model: no file read
    ]
    for (explicit, calibrated, m), expected in rows:
        c = choose_threshold(explicit=explicit, calibrated=calibrated, model=m)
        assert (c.value, c.source) == expected, (explicit, calibrated, m)
    assert str(tmp_path / "resedis.json") in choose_threshold(explicit=None, calibrated=None, model=model).origin


def test_malformed_or_empty_checkpoint_meta(tmp_path):
    model = f"owlv2:{tmp_path}"
    meta = tmp_path / "resedis.json"
    assert checkpoint_threshold(model) is None  # no file
    meta.write_text(json.dumps({"presence_threshold": None, "history": []}))
    assert checkpoint_threshold(model) is None  # fitted nothing: not an error, falls to the default
    for bad in ('{"presence_threshold": "high"}', '{"presence_threshold": -0.2}', '{"presence_threshold": true}'):
        meta.write_text(bad)
        with pytest.raises(ResedisError, match="presence_threshold") as err:
            choose_threshold(explicit=None, calibrated=None, model=model)
        assert str(meta) in str(err.value)
        assert choose_threshold(explicit=0.4, calibrated=None, model=model).value == 0.4  # never read then
    meta.write_text("{not json")
    with pytest.raises(ResedisError, match="unreadable checkpoint metadata"):
        checkpoint_threshold(model)


def test_default_when_the_model_has_no_threshold(env):
    searcher = Searcher(env["plain_db"], device="cpu")
    assert (searcher.threshold_choice.value, searcher.threshold_choice.source) == (DEFAULT_THRESHOLD, "default")
    _present_matches(searcher.search("a red circle").hits, DEFAULT_THRESHOLD)
    assert get_pipeline("owl", env["plain_db"]).resolved()[1:] == (DEFAULT_THRESHOLD, "default")


def test_checkpoint_threshold_everywhere(env, capsys):
    t, db = env["t"], env["db"]
    searcher = Searcher(db, device="cpu")
    choice = searcher.threshold_choice
    assert (choice.value, choice.source) == (t, "checkpoint") and str(env["ckpt"] / "resedis.json") in choice.origin
    # the split differs from the 0.1 default's: some hit in [0.1, t) is not present
    hits = [h for r in searcher.search_many(TEXTS, top_k=20) for h in r.hits]
    _present_matches(hits, t)
    assert any(h.present for h in hits) and any(DEFAULT_THRESHOLD <= h.score < t and not h.present for h in hits)
    _present_matches(search("a red circle", db, device="cpu").hits, t)
    from resedis.io import load_dataset

    dataset = load_dataset(env["dataset"])
    _present_matches([h for r in search_dataset(searcher, dataset) for h in r.hits], t)
    # pipelines: owl takes it; owl+rerank (fused scores) keeps its own default
    assert get_pipeline("owl", db).resolved()[1:] == (t, "checkpoint")
    assert get_pipeline("owl+rerank", db).resolved()[1:] == (0.3, "default")
    results = [a.result for a in QueryEngine(db, PipelineConfig(device="cpu")).run_many([QueryRequest(t) for t in TEXTS])]
    _present_matches([h for r in results for h in r.hits], t)
    # eval --db
    preds = env["base"] / "preds.jsonl"
    assert cli_main(["eval", "--dataset", str(env["dataset"]), "--db", str(db), "--out-predictions", str(preds)]) == 0
    dets = [d for line in preds.read_text().splitlines() for d in json.loads(line)["detections"]]
    assert dets and all(d["present"] == (d["score"] >= t) for d in dets)
    # resedis stats
    capsys.readouterr()
    assert cli_main(["stats", "--db", str(db)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("threshold"))
    assert "checkpoint" in line and f"{t:.4g}" in line
    assert cli_main(["stats", "--db", str(db), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["threshold"], stats["threshold_source"]) == (t, "checkpoint")


def test_service_uses_checkpoint_then_calibration(env):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from resedis.server import ServeConfig, create_app

    t, db = env["t"], env["base"] / "served.db"
    shutil.copytree(env["db"], db)
    with TestClient(create_app(ServeConfig(db=db)), base_url="http://127.0.0.1") as client:
        stats = client.get("/api/stats").json()
        assert (stats["threshold"], stats["threshold_source"]) == (t, "checkpoint")
        body = client.get("/api/search", params={"q": "a red circle", "top_k": 20}).json()
        assert (body["threshold"], body["threshold_source"]) == (t, "checkpoint")
        assert [h["present"] for h in body["hits"]] == [h["score"] >= t for h in body["hits"]]
        body = client.get("/api/search", params={"q": "a red circle", "top_k": 20, "threshold": 0.0}).json()
        assert body["threshold_source"] == "argument" and all(h["present"] for h in body["hits"])
        manifest = read_manifest(db)
        manifest.calibration = {"owl": {"threshold": 0.999}, "threshold": 0.999}
        write_manifest(db, manifest)
        stats = client.get("/api/stats").json()
        assert (stats["threshold"], stats["threshold_source"]) == (0.999, "calibrated")


def test_calibration_beats_checkpoint_and_argument_beats_both(env):
    from resedis.calibrate import evaluate_with_calibration
    from resedis.io import load_dataset

    t, db = env["t"], env["base"] / "calibrated.db"
    shutil.copytree(env["db"], db)
    c = 0.5 * t  # a different split: everything in [c, t) becomes present
    manifest = read_manifest(db)
    manifest.calibration = {"owl": {"threshold": c}, "threshold": c}
    write_manifest(db, manifest)
    searcher = Searcher(open_index(db), device="cpu")
    assert (searcher.threshold_choice.value, searcher.threshold_choice.source) == (c, "calibrated")
    hits = [h for r in searcher.search_many(TEXTS, top_k=20) for h in r.hits]
    _present_matches(hits, c)
    assert any(c <= h.score < t for h in hits)
    pipe = get_pipeline("owl", db, PipelineConfig(device="cpu"))
    assert pipe.resolved()[1:] == (c, "calibrated")
    # --calibration-split none ignores the index's calibration, not the model's own threshold
    dataset = load_dataset(env["dataset"])
    results, _, report = evaluate_with_calibration(pipe, dataset, "none")
    assert (report["threshold"], report["source"]) == (t, "checkpoint")
    _present_matches([h for r in results for h in r.hits], t)
    # an explicit threshold wins over both
    x = 0.5 * (c + t)
    _present_matches(searcher.search("a red circle", threshold=x).hits, x)
    assert get_pipeline("owl", db, PipelineConfig(threshold=x)).resolved()[1:] == (x, "argument")
