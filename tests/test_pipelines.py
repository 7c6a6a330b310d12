"""Named pipelines end to end through the CLI on a synthetic corpus with tiny checkpoints:
each writes a valid predictions file, `--pipeline all` puts every pipeline in one report,
`search --pipeline ... --masks` returns hits with RLE masks, `index --crop-model` stores
crops in the same run."""

from __future__ import annotations

import json

import pytest

import pipekit
from resedis.cli import main
from resedis.io import read_predictions
from resedis.masks import decode_rle


@pytest.fixture(scope="module")
def env():
    return pipekit.env()


def test_pipelines_command_lists_every_pipeline_with_its_cost(capsys):
    from resedis.pipelines import PIPELINES

    assert main(["pipelines"]) == 0
    out = capsys.readouterr().out
    for name in ("owl", "owl+rerank", "clip-crops"):
        assert name in out
    assert out.count("cost:") == len(PIPELINES) == 3
    assert main(["pipelines", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == ["owl", "owl+rerank", "clip-crops"]
    assert [r["default"] for r in rows] == [True, False, False] and all(r["cost"] for r in rows)


@pytest.mark.parametrize(
    "name, extra",
    [
        ("owl", []),
        ("owl+rerank", ["--rerank-k", "2"]),
        ("clip-crops", []),
        ("clip-crops", ["--proposals", "gt"]),
    ],
)
def test_each_pipeline_end_to_end_writes_valid_predictions(env, tmp_path, name, extra, capsys):
    preds, metrics_json = tmp_path / "p.jsonl", tmp_path / "m.json"
    argv = ["eval", "--dataset", str(env.synth), "--db", str(env.db), "--pipeline", name, "--top-k", "6",
            "--grounder", env.spec("gdino"), "--out-predictions", str(preds), "--json", str(metrics_json), *extra]
    assert main(argv) == 0
    results = read_predictions(preds)  # validates every line
    ds = env.dataset
    assert [r.query_id for r in results] == [q.query_id for q in ds.queries]
    assert any(r.hits for r in results)
    for r in results:
        assert len(r.hits) <= 6
        for h in r.hits:
            info = ds.images[h.image_id]
            assert 0 <= h.box[0] <= h.box[2] <= info.width and 0 <= h.box[1] <= h.box[3] <= info.height
    m = json.loads(metrics_json.read_text())
    assert m["pipeline"] == name and m["calibration"]["mode"] == "stored"
    assert {"IR@1", "BR@1@0.5", "mAP50", "F1", "N_acc"} <= set(m)
    assert f"pipeline {name}" in capsys.readouterr().out


def test_eval_holdout_reports_the_split_it_held_out(env, tmp_path, capsys):
    from resedis.calibrate import split_queries

    mj = tmp_path / "m.json"
    assert main(["eval", "--dataset", str(env.synth), "--db", str(env.db), "--calibration-split", "0.5",
                 "--json", str(mj)]) == 0
    m = json.loads(mj.read_text())
    calib, rest = split_queries(env.dataset, 0.5)
    cal = m["calibration"]
    assert cal["mode"] == "holdout" and cal["calibration_query_ids"] == calib
    assert cal["evaluated_queries"] == len(rest) == m["queries"]
    preds = read_predictions(tmp_path / "m.predictions.jsonl")
    assert {r.query_id for r in preds} == set(rest)  # the fitted queries are not reported
    err = capsys.readouterr().err
    assert f"calibration queries (fitted on, not reported): {', '.join(calib)}" in err
    assert main(["eval", "--dataset", str(env.synth), "--predictions", str(tmp_path / "m.predictions.jsonl"),
                 "--calibration-split", "0.5"]) == 2
    assert "apply with --db" in capsys.readouterr().err
    assert main(["eval", "--dataset", str(env.synth), "--db", str(env.db), "--calibration-split", "1.5",
                 "--json", str(mj)]) == 2
    assert "fraction must be in (0, 1)" in capsys.readouterr().err


def test_ablation_report_lists_every_pipeline(env, tmp_path, capsys):
    report, mj = tmp_path / "ablation.html", tmp_path / "ablation.json"
    assert main(["eval", "--dataset", str(env.synth), "--db", str(env.db), "--pipeline", "all", "--top-k", "5",
                 "--rerank-k", "2", "--grounder", env.spec("gdino"), "--calibration-split", "kfold:2",
                 "--report", str(report), "--json", str(mj)]) == 0
    out = capsys.readouterr().out
    page = report.read_text()
    data = json.loads(mj.read_text())
    names = ["owl", "owl+rerank", "clip-crops"]
    assert [p["pipeline"] for p in data["pipelines"]] == names
    for p in data["pipelines"]:
        assert p["status"] == "ok", p
        assert p["query_ms"] > 0 and p["index_bytes_per_image"] > 0
        assert p["split"]["mode"] == "kfold" and p["split"]["evaluated_queries"] == len(env.dataset.queries)
        assert set(p["metrics"]) >= {"IR@1", "mAP50", "F1"}
        assert p["pipeline"] in out
        assert f">{p['pipeline']}</a>" in page  # table row linking the pipeline's own report
        assert (tmp_path / f"ablation.{p['pipeline'].replace('+', '-')}.html").is_file()
        assert read_predictions(tmp_path / f"ablation.predictions.{p['pipeline'].replace('+', '-')}.jsonl")
    clip = next(p for p in data["pipelines"] if p["pipeline"] == "clip-crops")
    owl = next(p for p in data["pipelines"] if p["pipeline"] == "owl")
    assert clip["index_bytes_per_image"] > owl["index_bytes_per_image"]  # crops cost disk
    assert owl["index_seconds_per_image"] > 0  # recorded by the writer
    assert clip["index_seconds_per_image"] > owl["index_seconds_per_image"]  # + the recorded crop time


def test_ablation_lists_a_pipeline_that_cannot_run_with_its_reason(env, tmp_path):
    from resedis.ablation import run_ablation
    from resedis.pipelines import PipelineConfig

    from resedis.query import QueryEngine

    engine = QueryEngine(env.db, PipelineConfig(top_k=3, grounder="gdino:/nonexistent/dir"), pipekit.models(env))
    rows = run_ablation(env.dataset, engine, pipelines=["owl", "owl+rerank"])
    assert rows[0].status == "ok"
    assert rows[1].status.startswith("not run:") and "/nonexistent/dir" in rows[1].status


def test_search_cli_pipeline_with_masks(env, tmp_path, capsys):
    db = pipekit.copy_db(env, tmp_path)
    assert main(["search", "the red circle on the left", "--db", str(db), "--pipeline", "owl+rerank", "--rerank-k", "2",
                 "--grounder", env.spec("gdino"), "--top-k", "4", "--masks", "--segmenter", env.spec("sam"),
                 "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert 0 < len(hits) <= 4
    from resedis.index.store import open_index

    sizes = {r["image_id"]: (r["height"], r["width"]) for r in open_index(db).read("images", ["image_id", "width", "height"]).to_pylist()}
    for h in hits:
        assert decode_rle(h["mask"]).shape == sizes[h["image_id"]]
        assert h["mask"]["size"] == list(sizes[h["image_id"]])
    assert main(["search", "a red circle", "--db", str(db), "--pipeline", "clip-crops", "--top-k", "3"]) == 0
    assert "hits for 'a red circle'" in capsys.readouterr().out


def test_index_cli_crop_model_writes_crops_in_the_same_run(env, tmp_path, capsys):
    import shutil

    from resedis.index.store import open_index
    from resedis.index.crops import load_crops

    images = tmp_path / "imgs"
    images.mkdir()
    for p in sorted((env.synth / "images").iterdir())[:3]:
        shutil.copy(p, images / p.name)
    db = tmp_path / "db"
    assert main(["index", str(images), "--db", str(db), "--model", env.spec("owlv2"), "--max-regions", "6",
                 "--crop-model", env.spec("siglip"), "--max-crops", "2", "--quiet"]) == 0
    crops = load_crops(open_index(db))
    assert len(crops.image_ids) == 3 and len(crops) == 6
    assert open_index(db).manifest.extra["crops"]["model"] == env.spec("siglip")


@pytest.mark.parametrize("name", ["owl", "owl+rerank", "clip-crops"])
def test_ablation_latency_excludes_model_loading(env, monkeypatch, name):
    """A fresh model pool loads every model BEFORE the timed part (``prepare``) starts: the
    loads show in ``seconds.warm_up``, never in the per-query latency."""
    import time

    import resedis.models
    from resedis.ablation import run_ablation
    from resedis.models.spec import canonical_spec
    from resedis.pipelines import PIPELINES, Models, PipelineConfig

    shared = pipekit.models(env)
    loaded = {canonical_spec(s): shared.get(s) for s in (env.spec("owlv2"), env.spec("gdino"), env.spec("clip"))}
    loads, prepares = [], []

    def slow_load(spec, device=None):
        time.sleep(0.3)
        loads.append(time.perf_counter())
        return loaded[canonical_spec(spec)]  # the already loaded tiny backend

    cls = PIPELINES[name].cls
    original = cls.prepare

    def timed_prepare(self, queries, dataset=None):
        prepares.append(time.perf_counter())
        return original(self, queries, dataset)

    monkeypatch.setattr(resedis.models, "load_model", slow_load)
    monkeypatch.setattr(cls, "prepare", timed_prepare)
    config = PipelineConfig(top_k=3, rerank_k=1, grounder=env.spec("gdino"))
    from resedis.query import QueryEngine

    [row] = run_ablation(env.dataset, QueryEngine(env.db, config, Models("cpu")), pipelines=[name], split="none")
    assert row.status == "ok", row.status
    assert loads and prepares, "nothing loaded / prepared through the pool: the check would be blind"
    assert max(loads) < min(prepares), "a model was loaded inside the timed part"
    assert row.split["seconds"]["warm_up"] >= 0.3 * len(loads)


def _ablation_rows():
    from resedis.ablation import TABLE_KEYS, AblationRow

    metrics = {k: 0.123456 for k in TABLE_KEYS}
    split = {"mode": "holdout", "seed": 0, "threshold": 0.25, "calibration_queries": 3, "evaluated_queries": 7,
             "calibration_query_ids": ["q-calib-1", "q-calib-2", "q-calib-3"],
             "params": {"weight": 0.3, "match_iou": 0.5, "grounder_boxes": 5, "nms_iou": 0.5}}
    rows = [AblationRow(name, "ok", dict(metrics), 1234.5678, 98765.4321, 1.2345, dict(split))
            for name in ("owl", "owl+rerank", "clip-crops")]
    rows.append(AblationRow("extra", "not run: weights for model gdino:/somewhere not found."))
    return rows


def test_ablation_page_shows_the_held_out_split_and_fits_a_1300px_window(env, tmp_path):
    """The page names the queries presence was fitted on and every pipeline's operating point,
    and its tables fit a 1300 px wide window (a long parameters column pushed the latency and
    index-cost columns off screen)."""
    import os
    import re

    from resedis.ablation import write_ablation

    path = write_ablation(tmp_path / "a.html", env.dataset, _ablation_rows())
    page = path.read_text()
    assert "q-calib-1, q-calib-2, q-calib-3" in page and "3 calibration queries" in page
    presence = page[page.index("Presence decision"):]
    for name in ("owl", "owl+rerank", "clip-crops"):
        assert re.search(rf"<td>{re.escape(name)}</td><td>hold-out \(3 fitted, 7 reported\)</td><td>0\.250</td>", presence)
    assert "not run: weights for model gdino:/somewhere" in page
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = os.environ.get("RESEDIS_CHROMIUM", "/usr/bin/chromium")
    if not os.path.exists(chromium):
        pytest.skip(f"{chromium} not found (apt-get install chromium)")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=args)
        try:
            page_ = browser.new_page(viewport={"width": 1300, "height": 900})
            page_.goto(path.as_uri())
            width = page_.evaluate("document.documentElement.scrollWidth")
            cells = page_.locator("table").first.locator("th").all_inner_texts()
        finally:
            browser.close()
    assert width <= 1300, f"the ablation page is {width} px wide: columns are cut off in a 1300 px window"
    assert [c.replace("\n", " ") for c in cells[-3:]] == ["mean query ms", "index KiB / image", "index s / image"]
