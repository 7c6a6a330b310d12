"""`resedis eval --protocol`, COCO results in (--category-map) and out (--coco-out)."""

from __future__ import annotations

import json

import pytest

from resedis.cli import main
from resedis.io import load_dataset, write_predictions
from resedis.types import Hit, QueryResult


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    assert main(["synth", str(root / "b"), "--images", "6", "--queries", "5", "--absent", "2", "--no-progress"]) == 0
    ds = load_dataset(root / "b")
    # every target found except those of the last query; a false alarm on every absent query
    alarm = [Hit(next(iter(ds.images)), (0.0, 0.0, 9.0, 9.0), 0.8, True)]
    res = [QueryResult(q.query_id, q.expression, alarm if q.is_absent else
                       [Hit(i.image_id, i.box, 0.9, True) for i in q.instances]) for q in ds.queries[:-1]]
    write_predictions(root / "p.jsonl", res)
    return root, ds


@pytest.mark.parametrize("protocol, key", [("saco", "cgF1"), ("d3", "inter"), ("grec", "F1_score"), ("reir", "ir@1")])
def test_protocol_lands_in_metrics_json_and_stdout(bench, tmp_path, capsys, protocol, key):
    root, _ = bench
    out = tmp_path / "m.json"
    assert main(["eval", "--dataset", str(root / "b"), "--predictions", str(root / "p.jsonl"),
                 "--protocol", protocol, "--json", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["protocol"] == protocol and key in m[protocol]
    assert "IL_MCC" in m and "cgF1" in m  # the default suite carries the presence metrics too
    assert f"protocol {protocol}" in capsys.readouterr().out


def test_coco_out_then_in_gives_same_metrics(bench, tmp_path):
    root, _ = bench
    coco, m1, m2 = tmp_path / "r.json", tmp_path / "m1.json", tmp_path / "m2.json"
    assert main(["eval", "--dataset", str(root / "b"), "--predictions", str(root / "p.jsonl"),
                 "--coco-out", str(coco), "--json", str(m1)]) == 0
    assert isinstance(json.loads(coco.read_text()), list)
    assert main(["eval", "--dataset", str(root / "b"), "--predictions", str(coco), "--json", str(m2)]) == 0
    a, b = json.loads(m1.read_text()), json.loads(m2.read_text())
    skip = {"breakdown", "warnings", "excluded"}
    assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def test_category_map_only_for_coco(bench, tmp_path, capsys):
    root, _ = bench
    (tmp_path / "map.json").write_text("{}")
    assert main(["eval", "--dataset", str(root / "b"), "--predictions", str(root / "p.jsonl"),
                 "--category-map", str(tmp_path / "map.json")]) != 0
    assert "--category-map applies to COCO results" in capsys.readouterr().err
