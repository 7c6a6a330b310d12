"""Oracle and random reference predictions (+ the ``resedis baseline`` CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from resedis.baselines import oracle_predictions, random_predictions
from resedis.cli import main
from resedis.io import read_predictions
from resedis.masks import encode_mask, rle_to_box
from resedis.metrics import evaluate
from resedis.types import Dataset, ImageInfo, Instance, Query


def _inst(image_id, h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    rle = encode_mask(m)
    return Instance(image_id=image_id, rle=rle, box=rle_to_box(rle))


def small_dataset() -> Dataset:
    images = {i: ImageInfo(id=i, file_name=f"{i}.jpg", width=40 + i, height=30 + 2 * i) for i in range(1, 6)}
    queries = [
        Query("single", "one thing", [_inst(1, 32, 41, 2, 10, 3, 20)]),
        Query("multi_image", "in two images", [_inst(2, 34, 42, 0, 5, 0, 5), _inst(4, 38, 44, 10, 30, 10, 40)]),
        Query("multi_instance", "two in one", [_inst(3, 36, 43, 0, 10, 0, 10), _inst(3, 36, 43, 20, 30, 20, 30)]),
        Query("absent", "nowhere", []),
    ]
    return Dataset(name="t", root=None, images=images, queries=queries)


def test_oracle_covers_every_target_exactly_once():
    ds = small_dataset()
    results = oracle_predictions(ds)
    assert [r.query_id for r in results] == [q.query_id for q in ds.queries]
    for q, r in zip(ds.queries, results):
        assert [(h.image_id, h.box, h.mask) for h in r.hits] == [(i.image_id, i.box, i.rle) for i in q.instances]
        assert all(h.present for h in r.hits)
        scores = [h.score for h in r.hits]
        assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    assert results[3].hits == []
    for mode in ("box", "mask"):
        m = evaluate(ds.queries, {r.query_id: r.hits for r in results}, iou=mode)
        for key in ("IR@1", "IR@5", "IR@10", "BR@1@0.9", "BR@10@0.5", "mAP50", "precision", "recall", "F1",
                    "N_acc", "Pr@50"):
            assert m[key] == pytest.approx(1.0), (mode, key)
        assert m["FA_per_query"] == 0.0


def test_random_is_deterministic_in_bounds_and_well_formed():
    ds = small_dataset()
    a = random_predictions(ds, seed=3, detections_per_query=7)
    b = random_predictions(ds, seed=3, detections_per_query=7)
    c = random_predictions(ds, seed=4, detections_per_query=7)
    assert [r.to_json() for r in a] == [r.to_json() for r in b]
    assert [r.to_json() for r in a] != [r.to_json() for r in c]
    for r in a:
        assert len(r.hits) == 7
        for h in r.hits:
            info = ds.images[h.image_id]
            x0, y0, x1, y1 = h.box
            assert 0 <= x0 <= x1 <= info.width and 0 <= y0 <= y1 <= info.height
            assert 0 <= h.score < 1 and h.present == (h.score > 0.5) and h.mask is None
    assert random_predictions(ds, seed=0, detections_per_query=0)[0].hits == []
    with pytest.raises(ValueError, match=r"^detections_per_query must be >= 0, got -1$"):
        random_predictions(ds, seed=0, detections_per_query=-1)


def test_random_scores_near_chance():
    """M images, single-target queries, 10 uniform picks with replacement per query:
    P(target image in the top 10) = 1 - (1 - 1/M)^10, so IR@10 must be close to it
    (4 standard errors), and random boxes almost never localise (BR@10@0.5 <= IR@10)."""
    rng = np.random.default_rng(0)
    m_images, n_queries = 50, 400
    images = {i: ImageInfo(id=i, file_name=f"{i}.jpg", width=64, height=48) for i in range(m_images)}
    queries = []
    for k in range(n_queries):
        img = int(rng.integers(m_images))
        y0, x0 = int(rng.integers(0, 30)), int(rng.integers(0, 40))
        queries.append(Query(f"q{k}", "x", [_inst(img, 48, 64, y0, y0 + 12, x0, x0 + 16)]))
    ds = Dataset(name="chance", root=None, images=images, queries=queries)
    m = evaluate(queries, {r.query_id: r.hits for r in random_predictions(ds, seed=7)})
    p = 1 - (1 - 1 / m_images) ** 10
    assert abs(m["IR@10"] - p) < 4 * np.sqrt(p * (1 - p) / n_queries)
    assert abs(m["IR@1"] - 1 / m_images) < 4 * np.sqrt((1 / m_images) / n_queries) + 0.01
    assert m["BR@10@0.5"] <= m["IR@10"] and m["BR@10@0.5"] < 0.05
    assert m["mAP50"] < 0.05


def _write_tiny_resedis(root):
    (root / "expressions").mkdir(parents=True)
    (root / "instances.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 10}]}))
    m = np.zeros((10, 20), bool)
    m[2:5, 3:9] = True
    (root / "expressions" / "a.json").write_text(json.dumps(
        {"image_id": 1, "expression": "box", "target_annotation": {"0": encode_mask(m)}}))
    (root / "expressions" / "b.json").write_text(json.dumps(
        {"image_id": None, "expression": "ghost", "target_annotation": {}}))


def test_cli_writes_oracle_and_random(tmp_path, capsys):
    root = tmp_path / "ds"
    _write_tiny_resedis(root)
    out = tmp_path / "oracle.jsonl"
    assert main(["baseline", "oracle", "--dataset", str(root), "--out", str(out)]) == 0
    preds = read_predictions(out)
    assert [len(r.hits) for r in preds] == [1, 0] and preds[0].hits[0].box == (3.0, 2.0, 9.0, 5.0)
    out2 = tmp_path / "random.jsonl"
    assert main(["baseline", "random", "--dataset", str(root), "--out", str(out2), "--seed", "5",
                 "--detections", "3"]) == 0
    assert [len(r.hits) for r in read_predictions(out2)] == [3, 3]
    assert "wrote 2 queries" in capsys.readouterr().out
    # malformed dataset: clean error, exit code 2, message names file and field
    (root / "expressions" / "c.json").write_text("{}")
    assert main(["baseline", "oracle", "--dataset", str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "c.json" in err and "'expression'" in err
    assert main(["baseline", "oracle", "--dataset", str(root), "--out", str(out), "--lenient"]) == 0
    assert "skipped" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["baseline", "random", "--dataset", str(root), "--out", str(out), "--detections", "-2"])
    capsys.readouterr()
    # bad numbers are argparse errors (exit 2, one line naming the option), not tracebacks
    for opt, value, says in (("--seed", "-1", "must be >= 0"), ("--detections", "abc", "expected an integer")):
        with pytest.raises(SystemExit) as exc:
            main(["baseline", "random", "--dataset", str(root), "--out", str(out2), opt, value])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {opt}: {says}" in err and "Traceback" not in err
    # an output path that cannot be created (a file where a folder is needed): one-line error, exit 2
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["baseline", "oracle", "--dataset", str(root), "--lenient", "--out", str(blocker / "p.jsonl")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("skipped")]
    assert len(err) == 1 and err[0].startswith("error: ") and "a_file" in err[0]
