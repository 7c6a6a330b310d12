"""resedis.thresholds on plain values, no index and no model (from the mutation run, issue
16; docs/testing.md): every record a choice makes — value, source and origin — compared
whole, the checkpoint field's accepted range at its edges (0 accepted, below 0, ±inf, NaN
and booleans refused), and ``manifest_calibrated``'s fallbacks (``owl`` entry, else the
top-level mirror) on a stand-in manifest."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from resedis.errors import ResedisError
from resedis.models.checkpoint import CHECKPOINT_META
from resedis.thresholds import (
    DEFAULT_THRESHOLD,
    ThresholdChoice,
    checkpoint_threshold,
    choose_threshold,
    index_threshold,
    manifest_calibrated,
)

NO_CHECKPOINT = "no calibration stored and no checkpoint threshold"


def model_with(tmp_path, meta) -> tuple[str, object]:
    """A local model spec whose directory holds checkpoint metadata ``meta`` (a dict, or raw text)."""
    path = tmp_path / CHECKPOINT_META
    path.write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return f"owlv2:{tmp_path}", path


def test_choice_records_are_exact_at_every_level(tmp_path):
    model, meta = model_with(tmp_path, {"presence_threshold": 0.25})
    assert choose_threshold(explicit=0.3, calibrated=0.5, model=model) == ThresholdChoice(0.3, "argument", "given explicitly")
    assert choose_threshold(explicit=None, calibrated=0.5, model=model) == ThresholdChoice(0.5, "calibrated", "index manifest calibration")
    assert choose_threshold(explicit=None, calibrated=0.5, model=model, calibrated_origin="calibration of owl+rerank") == (
        ThresholdChoice(0.5, "calibrated", "calibration of owl+rerank"))
    assert choose_threshold(explicit=None, calibrated=None, model=model) == ThresholdChoice(0.25, "checkpoint", f"presence_threshold of {meta}")
    assert choose_threshold(explicit=None, calibrated=None, model=None) == ThresholdChoice(DEFAULT_THRESHOLD, "default", NO_CHECKPOINT)
    assert choose_threshold(explicit=None, calibrated=None, model=None, default=0.3) == ThresholdChoice(0.3, "default", NO_CHECKPOINT)
    # integers become floats at every level
    for got in (choose_threshold(explicit=1, calibrated=None, model=None), choose_threshold(explicit=None, calibrated=1, model=None),
                choose_threshold(explicit=None, calibrated=None, model=None, default=1)):
        assert type(got.value) is float and got.value == 1.0


def test_describe_and_to_json_of_a_choice():
    choice = ThresholdChoice(0.123456, "calibrated", "index manifest calibration")
    assert choice.describe() == "0.1235 (calibrated: index manifest calibration)"
    assert choice.to_json() == {"threshold": 0.123456, "threshold_source": "calibrated",
                                "threshold_origin": "index manifest calibration"}


def test_checkpoint_threshold_reads_the_field_and_its_edges(tmp_path):
    assert checkpoint_threshold(None) is None and checkpoint_threshold("") is None
    assert checkpoint_threshold("owlv2:google/owlv2-base-patch16-ensemble") is None  # hub model: no file read
    assert checkpoint_threshold(f"owlv2:{tmp_path}") is None  # local directory without metadata
    model, meta = model_with(tmp_path, {"presence_threshold": 0.25, "threshold_source": "validation"})
    assert checkpoint_threshold(model) == (0.25, meta)
    for accepted, value in ((0, 0.0), (0.0, 0.0), (1, 1.0), (3.5, 3.5)):  # >= 0, not capped at 1
        model_with(tmp_path, {"presence_threshold": accepted})
        got = checkpoint_threshold(model)
        assert got == (value, meta) and type(got[0]) is float, accepted
    for refused in ("Infinity", "-Infinity", "NaN", "-0.001", "true", "false", '"0.3"', "[0.3]"):
        model_with(tmp_path, '{"presence_threshold": ' + refused + '}')
        with pytest.raises(ResedisError) as err:
            checkpoint_threshold(model)
        assert str(err.value).startswith(f"{meta}: field 'presence_threshold' must be a finite number >= 0, got "), refused


def test_unreadable_checkpoint_metadata_names_the_way_out(tmp_path):
    model, meta = model_with(tmp_path, "{not json")
    with pytest.raises(ResedisError) as err:
        choose_threshold(explicit=None, calibrated=None, model=model)
    assert str(meta) in str(err.value) and str(err.value).endswith(", or pass --threshold")
    model_with(tmp_path, "[0.3]")  # JSON, but not an object
    with pytest.raises(ResedisError, match=r"must be a JSON object, or pass --threshold$"):
        checkpoint_threshold(model)


def manifest(calibration, model=None):
    """A stand-in with what the thresholds module reads of a Manifest (``threshold`` as
    Manifest.threshold computes it: the top-level number, when there is one)."""
    top = calibration.get("threshold") if isinstance(calibration, dict) else None
    return SimpleNamespace(calibration=calibration, model=model,
                           threshold=float(top) if isinstance(top, (int, float)) else None)


def test_manifest_calibrated_prefers_the_owl_entry_then_the_top_level_value():
    rows = [  # calibration -> owl threshold
        (None, None),
        ("not a dict", None),
        ({}, None),
        ({"threshold": 0.7}, 0.7),  # only the mirror
        ({"owl": {"threshold": 0.3}, "threshold": 0.7}, 0.3),  # the owl entry wins
        ({"owl": {"threshold": 1}, "threshold": 0.7}, 1.0),
        ({"owl": {"threshold": True}, "threshold": 0.7}, 0.7),  # a boolean is not a threshold
        ({"owl": {"threshold": "0.3"}, "threshold": 0.7}, 0.7),
        ({"owl": {"metric": "F1"}, "threshold": 0.7}, 0.7),
        ({"owl": 0.3, "threshold": 0.7}, 0.7),
        ({"OWL": {"threshold": 0.3}, "threshold": 0.7}, 0.7),
    ]
    for calibration, expected in rows:
        got = manifest_calibrated(manifest(calibration))
        assert got == expected and (got is None or type(got) is float), calibration


def test_index_threshold_passes_all_three_levels(tmp_path):
    model, meta = model_with(tmp_path, {"presence_threshold": 0.25})
    calibrated = manifest({"owl": {"threshold": 0.3}, "threshold": 0.7}, model)
    plain = manifest(None, model)
    assert index_threshold(calibrated, explicit=0.4) == ThresholdChoice(0.4, "argument", "given explicitly")
    assert index_threshold(calibrated) == ThresholdChoice(0.3, "calibrated", "index manifest calibration")
    assert index_threshold(plain) == ThresholdChoice(0.25, "checkpoint", f"presence_threshold of {meta}")
    assert index_threshold(manifest(None)) == ThresholdChoice(DEFAULT_THRESHOLD, "default", NO_CHECKPOINT)
