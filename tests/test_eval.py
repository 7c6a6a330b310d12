"""resedis.eval (checking, slicing) and the `resedis eval` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from evalkit import make_dataset, oracle

from resedis import metrics
from resedis.eval import evaluate_predictions, format_metrics_table
from resedis.metrics import METRIC_KEYS
from resedis.masks import decode_rle, encode_mask
from resedis.types import FormatError, Hit, QueryResult


@pytest.fixture
def tiny(tmp_path):
    return make_dataset(tmp_path)


def test_oracle_scores_perfectly_on_hand_built_dataset(tiny):
    ev = evaluate_predictions(tiny, oracle(tiny))
    m = ev.metrics
    for key in ("IR@1", "IR@5", "BR@1@0.5", "BR@1@0.9", "mAP50", "precision", "recall", "F1", "N_acc", "Pr@50"):
        assert m[key] == pytest.approx(1.0), key
    assert m["FA_per_query"] == 0.0
    assert m["queries"] == 5 and m["absent_queries"] == 1
    assert ev.warnings == []
    assert set(METRIC_KEYS) <= set(m)


def test_unknown_query_and_image_ids_are_reported_and_excluded(tiny):
    preds = oracle(tiny)
    clean = evaluate_predictions(tiny, preds).metrics
    # An extra line for an unknown query, and a high-scoring detection on an unknown image
    # for q_attr: if it were scored it would take rank 1 and make IR@1 < 1.
    bad = [QueryResult(p.query_id, p.expression, list(p.hits)) for p in preds]
    bad.append(QueryResult("nope", "a query nobody asked", [Hit(1, (0, 0, 10, 10), 0.9, True)]))
    bad[0].hits.insert(0, Hit(999, (0, 0, 10, 10), 5.0, True))
    bad[0].hits.insert(0, Hit("1", (0, 0, 10, 10), 6.0, True))  # str id for an int-id dataset
    ev = evaluate_predictions(tiny, bad)
    assert ev.metrics == clean
    assert ev.excluded["unknown_queries"] == ["nope"]
    assert ev.excluded["unknown_images"] == ["1", 999]
    assert ev.excluded["unknown_image_detections"] == 2
    text = "\n".join(ev.warnings)
    assert "'nope'" in text and "999" in text and "integer ids" in text
    assert len(ev.warnings) == 2


def test_missing_and_duplicate_query_lines(tiny):
    preds = oracle(tiny)
    first = preds[0]
    dup = QueryResult(first.query_id, first.expression, [])  # an empty repeat: must be ignored
    ev = evaluate_predictions(tiny, preds[1:] + [first, dup])
    assert ev.metrics["IR@1"] == pytest.approx(1.0)
    assert ev.excluded["duplicate_queries"] == [first.query_id]

    ev = evaluate_predictions(tiny, preds[1:])  # q_attr has no line: scored as empty
    assert ev.excluded["missing_queries"] == ["q_attr"]
    row = next(r for r in ev.per_query if r["query_id"] == "q_attr")
    assert row["IR@1"] == 0.0 and row["AP50"] == 0.0
    assert ev.metrics["IR@1"] == pytest.approx(3 / 4)
    assert any("no prediction line" in w for w in ev.warnings)


def test_out_of_bounds_boxes_warn_but_are_kept(tiny):
    preds = oracle(tiny)
    preds[0].hits.append(Hit(1, (0, 0, 500, 10), 0.1, False))
    ev = evaluate_predictions(tiny, preds)
    assert ev.excluded["out_of_bounds_detections"] == 1
    assert sum(len(h) for h in ev.results.values()) == 7
    assert any("beyond their image" in w for w in ev.warnings)


def _uncompressed(mask):
    """(H, W) bool -> uncompressed COCO RLE (column-major runs, starting with zeros)."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat[0]:
        runs = [0] + runs
    return {"size": list(mask.shape), "counts": runs}


def test_prediction_masks_are_checked_against_their_image(tiny):
    gt = tiny.query("q_attr").instances[0]
    gt_mask = decode_rle(gt.rle)

    def with_mask(mask):
        return [QueryResult("q_attr", "", [Hit(1, (20, 20, 80, 40), 0.9, True, mask)])]

    # Uncompressed (list counts) masks are valid RLE: accepted, converted, and used in
    # mask mode (box IoU 1/3 misses, the mask itself is exact).
    ev = evaluate_predictions(tiny, with_mask(_uncompressed(gt_mask)), iou="mask")
    assert ev.results["q_attr"][0].mask == gt.rle
    row = next(r for r in ev.per_query if r["query_id"] == "q_attr")
    assert row["AP50"] == 1.0 and row["tp"] == 1
    assert evaluate_predictions(tiny, with_mask(_uncompressed(gt_mask)), iou="box").per_query[0]["tp"] == 0

    small = encode_mask(np.zeros((10, 10), dtype=bool))
    with pytest.raises(FormatError, match=r"q_attr.*detections\[0\].*mask\.size.*\[160, 200\]"):
        evaluate_predictions(tiny, with_mask(small), iou="box")
    truncated = {"size": gt.rle["size"], "counts": gt.rle["counts"][:3]}
    with pytest.raises(FormatError, match=r"mask\.counts.*runs cover"):
        evaluate_predictions(tiny, with_mask(truncated), iou="mask")
    with pytest.raises(FormatError, match=r"mask\.counts"):
        evaluate_predictions(tiny, with_mask({"size": gt.rle["size"], "counts": [5, 5]}), iou="mask")


def _perturbed(tiny):
    """Half-right predictions: q_attr right, q_pos finds one of two images, q_rel a wrong
    box, q_rel2 nothing, q_none a false alarm."""
    q = {x.query_id: x for x in tiny.queries}
    return [
        QueryResult("q_attr", "", [Hit(1, q["q_attr"].instances[0].box, 0.9, True)]),
        QueryResult("q_pos", "", [Hit(3, (0, 0, 30, 30), 0.8, True), Hit(2, q["q_pos"].instances[1].box, 0.7, True)]),
        QueryResult("q_rel", "", [Hit(3, (100, 0, 150, 40), 0.6, True)]),
        QueryResult("q_none", "", [Hit(2, (0, 0, 50, 50), 0.95, True)]),
    ]


def test_breakdowns_partition_queries_and_match_subset_evaluation(tiny):
    preds = _perturbed(tiny)
    ev = evaluate_predictions(tiny, preds)
    assert set(ev.breakdown) == {"type", "category", "targets"}
    for slice_name, groups in ev.breakdown.items():
        assert sum(g["queries"] for g in groups.values()) == ev.metrics["queries"], slice_name
        assert sum(g["absent_queries"] for g in groups.values()) == ev.metrics["absent_queries"]
    assert list(ev.breakdown["type"]) == ["attribute", "position", "relation", "absent"]
    assert set(ev.breakdown["category"]) == {"circle", "square", "(none)"}
    assert ev.breakdown["targets"]["several images"]["queries"] == 1
    # Each slice equals an independent evaluation restricted to its queries.
    by_id = {p.query_id: p.hits for p in preds}
    rel = [q for q in tiny.queries if q.type == "relation"]
    assert ev.breakdown["type"]["relation"] == metrics.evaluate(rel, by_id, n_images=len(tiny.images))
    square = [q for q in tiny.queries if q.category == "square"]
    assert ev.breakdown["category"]["square"] == metrics.evaluate(square, by_id, n_images=len(tiny.images))
    # Hand-computed: q_attr hit, q_pos top-1 image wrong (IR@1 = 0), q_rel wrong box, q_rel2 empty.
    assert ev.metrics["IR@1"] == pytest.approx(2 / 4)  # q_attr, q_rel (image right, box wrong)
    assert ev.metrics["BR@1@0.5"] == pytest.approx(1 / 4)
    assert ev.breakdown["type"]["absent"]["N_acc"] == 0.0
    assert ev.breakdown["type"]["absent"]["FA_per_query"] == 1.0


def test_evaluate_rejects_unknown_iou_mode(tiny):
    with pytest.raises(ValueError, match="iou"):
        evaluate_predictions(tiny, [], iou="polygon")


def test_format_metrics_table_shows_values(tiny):
    ev = evaluate_predictions(tiny, _perturbed(tiny))
    text = format_metrics_table(ev.metrics)
    assert f"IR@1 {ev.metrics['IR@1']:.4f}" in text
    assert f"mAP50 {ev.metrics['mAP50']:.4f}" in text
    assert "N_acc 0.0000" in text


def test_to_json_keeps_required_keys_top_level(tiny):
    ev = evaluate_predictions(tiny, _perturbed(tiny))
    data = json.loads(json.dumps(ev.to_json()))
    for key in METRIC_KEYS:
        assert data[key] == ev.metrics[key], key
    assert data["breakdown"]["type"]["attribute"]["queries"] == 1


# --- on the synthetic benchmark (resedis.synth, loaders, baselines) ------------------


def test_oracle_and_random_on_synth(synth_small):
    from resedis.baselines import oracle_predictions, random_predictions
    from resedis.io import load_dataset

    ds = load_dataset(synth_small)
    ev = evaluate_predictions(ds, oracle_predictions(ds))
    m = ev.metrics
    assert m["IR@1"] == 1.0 and m["BR@1@0.5"] == 1.0 and m["mAP50"] == pytest.approx(1.0)
    assert m["N_acc"] == 1.0 and m["FA_per_query"] == 0.0
    assert ev.warnings == []
    assert set(ev.breakdown["type"]) >= {"attribute", "position", "relation", "absent"}
    assert sum(g["queries"] for g in ev.breakdown["category"].values()) == m["queries"]
    assert ev.breakdown["type"]["absent"]["queries"] == m["absent_queries"] > 0

    mask_ev = evaluate_predictions(ds, oracle_predictions(ds), iou="mask")
    assert mask_ev.metrics["BR@1@0.9"] == 1.0

    rnd = evaluate_predictions(ds, random_predictions(ds, seed=7)).metrics
    assert rnd["mAP50"] < 0.2 and rnd["BR@1@0.5"] < 0.3 and rnd["F1"] < 0.2
    assert rnd["FA_per_query"] > 1.0


def test_cli_end_to_end(synth_small, tmp_path, capsys):
    from resedis.baselines import random_predictions
    from resedis.cli import main
    from resedis.io import load_dataset, write_predictions

    ds = load_dataset(synth_small)
    preds = random_predictions(ds, seed=3)
    preds[0].hits.append(Hit("no-such-image", (0, 0, 5, 5), 0.5, True))
    write_predictions(tmp_path / "p.jsonl", preds)
    out_json, out_html = tmp_path / "out" / "metrics.json", tmp_path / "out" / "report.html"
    rc = main(["eval", "--dataset", str(synth_small), "--predictions", str(tmp_path / "p.jsonl"),
               "--json", str(out_json), "--report", str(out_html)])
    assert rc == 0
    captured = capsys.readouterr()
    data = json.loads(out_json.read_text())
    expected = evaluate_predictions(ds, preds).metrics
    for key in METRIC_KEYS:
        assert key in data, key
        assert data[key] == pytest.approx(expected[key]) if expected[key] is not None else data[key] is None
    assert f"IR@1 {expected['IR@1']:.4f}" in captured.out
    assert "no-such-image" in captured.err and "warning:" in captured.err
    assert data["excluded"]["unknown_image_detections"] == 1
    assert out_html.read_text().startswith("<!DOCTYPE html>")


def test_cli_validation_errors(synth_small, tmp_path, capsys):
    from resedis.cli import main

    preds = tmp_path / "p.jsonl"
    preds.write_text('{"query_id": "a", "detections": [{"image_id": 1, "box": [5, 5, 1, 1], "score": 1}]}\n')
    rc = main(["eval", "--dataset", str(synth_small), "--predictions", str(preds)])
    err = capsys.readouterr().err
    assert rc == 2 and "p.jsonl:1" in err and "box" in err

    rc = main(["eval", "--dataset", str(synth_small), "--predictions", str(preds), "--top-k", "5"])
    assert rc == 2 and "--top-k only applies with --db" in capsys.readouterr().err

    rc = main(["eval", "--dataset", str(synth_small), "--predictions", str(tmp_path / "missing.jsonl")])
    assert rc == 2 and "file not found" in capsys.readouterr().err

    rc = main(["eval", "--dataset", str(synth_small), "--db", str(tmp_path / "db")])
    assert rc == 2 and "--out-predictions" in capsys.readouterr().err

    with pytest.raises(SystemExit):  # argparse: exactly one of --predictions / --db
        main(["eval", "--dataset", str(synth_small)])


def test_cli_lenient_reports_skipped_dataset_records(synth_small, tmp_path, capsys):
    import shutil

    from resedis.cli import main

    bench = tmp_path / "bench"
    shutil.copytree(synth_small, bench)
    (bench / "expressions" / "zz_broken.json").write_text('{"image_id": 1, "expression": "x"}')
    preds = tmp_path / "p.jsonl"
    preds.write_text("")
    rc = main(["eval", "--dataset", str(bench), "--predictions", str(preds)])
    assert rc == 2 and "zz_broken.json" in capsys.readouterr().err
    rc = main(["eval", "--dataset", str(bench), "--predictions", str(preds), "--lenient",
               "--report", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert rc == 0 and "skipped:" in err and "zz_broken.json" in err
    assert "zz_broken.json" in (tmp_path / "r.html").read_text()  # listed in the report's warnings


def test_cli_db_mode_searches_scores_and_writes_predictions(synth_small, tiny_models, tmp_path, capsys):
    """--db: every query is searched in an index of the benchmark's images (tiny random
    OWLv2, so scores are meaningless) and exactly the written predictions are scored."""
    from resedis.cli import main
    from resedis.index import IndexConfig, build_index
    from resedis.io import load_dataset, read_predictions

    db = tmp_path / "db"
    build_index(synth_small / "images", db, config=IndexConfig(model=f"owlv2:{tiny_models['owlv2']}",
                                                              max_regions=8, workers=1), progress=False)
    out_json = tmp_path / "m.json"
    rc = main(["eval", "--dataset", str(synth_small), "--db", str(db), "--json", str(out_json), "--top-k", "5"])
    assert rc == 0, capsys.readouterr().err
    preds_path = tmp_path / "m.predictions.jsonl"
    preds = read_predictions(preds_path)
    ds = load_dataset(synth_small)
    assert [p.query_id for p in preds] == [q.query_id for q in ds.queries]
    assert all(1 <= len(p.hits) <= 5 for p in preds)
    assert all(h.image_id in ds.images for p in preds for h in p.hits)  # dataset ids, not index paths
    data = json.loads(out_json.read_text())
    assert data["warnings"] == []
    expected = evaluate_predictions(ds, preds).metrics
    for key in METRIC_KEYS:
        assert data[key] == pytest.approx(expected[key]) if expected[key] is not None else data[key] is None
