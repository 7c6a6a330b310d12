"""Predictions JSONL: round trip, atomic writes, and file:line + field errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from resedis.io.predictions import read_predictions, write_predictions
from resedis.masks import encode_mask
from resedis.types import FormatError, Hit, QueryResult


def sample_results() -> list[QueryResult]:
    m = np.zeros((8, 6), bool)
    m[1:4, 2:5] = True
    return [
        QueryResult("q1", "a red cup", [
            Hit(image_id=3, box=(2.0, 1.0, 5.0, 4.0), score=0.9, present=True, mask=encode_mask(m)),
            Hit(image_id="img_b.jpg", box=(0.5, 0.25, 1.5, 2.0), score=0.1, present=False, path="/x/img_b.jpg"),
        ]),
        QueryResult("q2", "nothing here", [], timings={"search_s": 0.25}),
    ]


def test_round_trip(tmp_path):
    path = tmp_path / "out" / "preds.jsonl"
    results = sample_results()
    write_predictions(path, results)
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["detections"][0]["box"] == [2.0, 1.0, 5.0, 4.0]
    back = read_predictions(path)
    assert [r.to_json() for r in back] == [r.to_json() for r in results]
    assert back[0].hits[1].image_id == "img_b.jpg" and back[0].hits[1].present is False
    assert back[1].timings == {"search_s": 0.25}


def test_write_is_atomic_and_refuses_duplicates(tmp_path):
    path = tmp_path / "preds.jsonl"
    write_predictions(path, sample_results())
    before = path.read_bytes()

    def exploding():
        yield sample_results()[0]
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_predictions(path, exploding())
    assert path.read_bytes() == before
    with pytest.raises(ValueError, match="duplicate query id 'q1'"):
        write_predictions(path, [sample_results()[0], sample_results()[0]])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["preds.jsonl"]  # no temp files left


def test_written_file_has_the_usual_permissions(tmp_path):
    """Not mkstemp's private 0600: the mode open() would give under the current umask."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = write_predictions(tmp_path / "preds.jsonl", sample_results())
        plain2 = tmp_path / "plain2.txt"
        plain2.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain2.stat().st_mode) == 0o644


def test_blank_lines_and_defaults(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('\n{"query_id": "a", "detections": [{"image_id": 1, "box": [0, 0, 1, 1], "score": 1}]}\n\n')
    (r,) = read_predictions(path)
    assert r.expression == "" and r.hits[0].present is True and r.hits[0].mask is None


GOOD_LINE = '{"query_id": "ok", "expression": "x", "detections": []}'
DET = {"image_id": 1, "box": [0, 0, 2, 2], "score": 0.5, "present": True, "mask": None}

BAD = [
    ("bad_json", '{"query_id": "a", ', "<json>", 2),
    ("not_object", "[1, 2]", "<line>", 2),
    ("missing_query_id", json.dumps({"expression": "x", "detections": []}), "query_id", 2),
    ("query_id_int", json.dumps({"query_id": 5, "detections": []}), "query_id", 2),
    ("expression_type", json.dumps({"query_id": "a", "expression": 3, "detections": []}), "expression", 2),
    ("missing_detections", json.dumps({"query_id": "a"}), "detections", 2),
    ("detections_dict", json.dumps({"query_id": "a", "detections": {}}), "detections", 2),
    ("box_flipped", json.dumps({"query_id": "a", "detections": [dict(DET, box=[3, 0, 1, 2])]}), "box", 2),
    ("box_short", json.dumps({"query_id": "a", "detections": [dict(DET, box=[0, 0, 1])]}), "box", 2),
    ("box_missing", json.dumps({"query_id": "a", "detections": [{"image_id": 1, "score": 1}]}), "box", 2),
    ("score_nan", '{"query_id": "a", "detections": [{"image_id": 1, "box": [0,0,1,1], "score": NaN}]}', "score", 2),
    ("present_str", json.dumps({"query_id": "a", "detections": [dict(DET, present="yes")]}), "present", 2),
    ("mask_bad", json.dumps({"query_id": "a", "detections": [dict(DET, mask=[1, 2])]}), "mask", 2),
    ("image_id_float", json.dumps({"query_id": "a", "detections": [dict(DET, image_id=1.5)]}), "image_id", 2),
    ("timings_bad", json.dumps({"query_id": "a", "detections": [], "timings": {"t": "slow"}}), "timings", 2),
    ("duplicate", GOOD_LINE, "query_id", 2),
]


@pytest.mark.parametrize("name,line,field,lineno", BAD, ids=[b[0] for b in BAD])
def test_errors_name_file_line_and_field(tmp_path, name, line, field, lineno):
    path = tmp_path / "preds.jsonl"
    path.write_text(GOOD_LINE + "\n" + line + "\n")
    with pytest.raises(FormatError) as info:
        read_predictions(path)
    assert info.value.source.startswith(f"{path}:{lineno}")
    assert info.value.field_name == field
    assert f"preds.jsonl:{lineno}" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FormatError, match="not found"):
        read_predictions(tmp_path / "nope.jsonl")
