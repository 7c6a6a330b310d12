"""``repair_index`` clears each damage ``verify`` finds and leaves an index verify passes."""

from __future__ import annotations

import json

import lancedb
import pytest

import faultkit
from resedis.errors import ResedisError
from resedis.index import open_index
from resedis.index.repair import REPAIR_LOG, repair_index
from resedis.index.verify import verify_index


def ids(db) -> set[str]:
    return set(lancedb.connect(str(db)).open_table("images").to_arrow()["image_id"].to_pylist())


def repaired(db, **kw):
    report = repair_index(db, **kw)
    assert report.ok, report.text()
    assert verify_index(db).ok
    return report


def test_a_deleted_regions_data_file(db, encoder, pristine):
    (path,) = faultkit.data_files(db, "regions")
    path.unlink()
    report = repaired(db, encoder=encoder)
    assert report.tables_rewritten == {"regions": open_index(pristine).regions_table.count_rows()}
    assert set(report.reencoded) == ids(pristine)
    assert ids(db) == ids(pristine)
    assert open_index(db).stats()["regions"] == open_index(pristine).stats()["regions"]


def test_a_truncated_images_file(db, encoder, pristine):
    (path,) = faultkit.data_files(db, "images")
    faultkit.truncate(path, 0.5)
    repaired(db, encoder=encoder)
    assert ids(db) == ids(pristine)


@pytest.mark.parametrize("table", ["regions", "images", "skipped"])
def test_a_deleted_table(db, encoder, pristine, table):
    faultkit.delete_table(db, table)
    report = repaired(db, encoder=encoder)
    assert report.tables_created == [table]
    assert ids(db) == ids(pristine)


def test_non_finite_values_are_reencoded(db, encoder, pristine):
    victim = sorted(ids(db))[2]
    lancedb.connect(str(db)).open_table("regions").update(where=f"image_id = '{victim}'", values={"objectness": float("inf")})
    report = repaired(db, encoder=encoder)
    assert report.reencoded == [victim]
    assert open_index(db).stats()["regions"] == open_index(pristine).stats()["regions"]


@pytest.mark.parametrize("field,value", [("vector_dim", "abc"), ("root", 12345), ("max_regions", -5), ("nms_iou", "x")])
def test_a_wrong_manifest_field(db, encoder, pristine, field, value):
    faultkit.set_manifest_field(db, field, value)
    report = repaired(db, encoder=encoder)
    assert report.manifest_rebuilt
    fixed, good = faultkit.manifest(db), faultkit.manifest(pristine)
    for key in ("model", "vector_dim", "vector_dtype", "root", "weights_fingerprint"):
        assert fixed[key] == good[key], key
    assert report.index_run.added == 0  # nothing to re-encode: the tables were fine


def test_a_lost_manifest_needs_the_model(db, encoder, pristine, owlv2_spec):
    (db / "resedis.json").unlink()
    with pytest.raises(ResedisError, match="--model SPEC"):
        repair_index(db)
    report = repaired(db, model=owlv2_spec, encoder=encoder)
    assert report.manifest_rebuilt and report.assumed == {"max_regions": 100, "nms_iou": 0.5}  # not in the tables
    fixed, good = faultkit.manifest(db), faultkit.manifest(pristine)
    assert {k: fixed[k] for k in ("model", "vector_dim", "root")} == {k: good[k] for k in ("model", "vector_dim", "root")}


def test_gone_sources_are_dropped_with_a_record(db, encoder, corpus, tmp_path):
    victim = sorted(corpus.glob("*.jpg"))[0]
    saved = victim.read_bytes()
    victim.unlink()
    try:
        report = repaired(db, encoder=encoder)
    finally:
        victim.write_bytes(saved)
    assert report.dropped == [victim.name]
    assert victim.name not in ids(db)
    (record,) = [json.loads(line) for line in (db / REPAIR_LOG).read_text().splitlines()]
    assert record["image_id"] == victim.name and record["action"] == "dropped"
