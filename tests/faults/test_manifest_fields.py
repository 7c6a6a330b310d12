"""Every manifest field is checked for type and range, and the error names the field and the fix."""

from __future__ import annotations

import pytest

from resedis.errors import ResedisError
from resedis.index.manifest_fields import check_manifest_fields, manifest_problems

GOOD = {
    "schema_version": 1, "model": "owlv2:/models/tiny", "vector_dim": 33, "vector_dtype": "float16",
    "root": "/data/photos", "preprocessing": {"size": 64}, "max_regions": 100, "nms_iou": 0.5,
    "package_version": "0.1.0", "created": "2026-01-01T00:00:00+00:00", "updated": "2026-01-02T00:00:00+00:00",
    "calibration": {"threshold": 0.3}, "weights_fingerprint": "sha256:abc", "crops": {"anything": 1},
}


def test_a_valid_manifest_has_no_problems():
    assert manifest_problems(GOOD) == []
    check_manifest_fields(GOOD, "x/resedis.json")
    assert manifest_problems({**GOOD, "calibration": None, "weights_fingerprint": None}) == []


@pytest.mark.parametrize(
    "field,value",
    [
        ("vector_dim", "abc"), ("vector_dim", 0), ("vector_dim", True), ("vector_dim", 3.0),
        ("model", 7), ("model", ""), ("model", "owlv2:"), ("model", None),
        ("root", 12345), ("root", "relative/dir"),
        ("vector_dtype", "int2"),
        ("max_regions", -5), ("max_regions", 0), ("max_regions", "100"),
        ("nms_iou", 0), ("nms_iou", 1.5), ("nms_iou", float("nan")), ("nms_iou", "0.5"),
        ("preprocessing", []), ("package_version", 1), ("created", "yesterday"), ("updated", 5),
        ("calibration", {"threshold": "high"}), ("calibration", 0.5), ("calibration", {"threshold": float("inf")}),
        ("weights_fingerprint", 12), ("weights_fingerprint", "md5:00"),
        ("schema_version", 0), ("schema_version", "1"),
    ],
)
def test_each_wrong_field_is_named_with_its_fix(field, value):
    problems = manifest_problems({**GOOD, field: value})
    assert [p.field for p in problems] == [field]
    with pytest.raises(ResedisError) as err:
        check_manifest_fields({**GOOD, field: value}, "idx/resedis.json", db="idx")
    text = str(err.value)
    assert f"'{field}'" in text and repr(value) in text and "Fix:" in text and "idx" in text


@pytest.mark.parametrize("field", ["model", "vector_dim", "vector_dtype", "root", "schema_version"])
def test_a_missing_required_field_is_named(field):
    data = {k: v for k, v in GOOD.items() if k != field}
    problems = manifest_problems(data)
    assert [(p.field, p.missing) for p in problems] == [(field, True)]
    assert "is missing" in problems[0].message()


def test_all_problems_are_reported_together():
    with pytest.raises(ResedisError) as err:
        check_manifest_fields({**GOOD, "vector_dim": "abc", "root": 12345, "model": 7}, "m.json")
    text = str(err.value)
    assert "3 manifest fields are invalid" in text
    assert all(f"'{f}'" in text for f in ("vector_dim", "root", "model"))


def test_not_an_object():
    assert [p.field for p in manifest_problems([1, 2])] == ["(manifest)"]


def test_unknown_keys_are_not_checked():
    assert manifest_problems({**GOOD, "future_field": object()}) == []
