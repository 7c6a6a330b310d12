"""``verify_index`` finds each kind of damage, names it, and says what to run."""

from __future__ import annotations

import json

import lancedb
import pyarrow as pa
import pytest

import faultkit
from resedis.errors import ResedisError
from resedis.index.verify import verify_index


def kinds(report) -> set[str]:
    return {p.kind for p in report.problems if p.severity == "error"}


def regions(db):
    return lancedb.connect(str(db)).open_table("regions")


def indexed_ids(db) -> set[str]:
    return set(lancedb.connect(str(db)).open_table("images").to_arrow()["image_id"].to_pylist())


def test_a_pristine_index_passes(pristine):
    report = verify_index(pristine, deep=True)
    assert report.ok, report.text()
    assert report.counts["images"] == 12 and report.counts["regions"] > 12
    assert report.damaged_images == set()
    assert json.loads(json.dumps(report.to_json()))["ok"] is True


def test_a_deleted_data_file(db):
    (path,) = faultkit.data_files(db, "regions")
    path.unlink()
    report = verify_index(db)
    assert not report.ok
    assert {"undecodable-rows", "count-mismatch"} <= kinds(report)
    lost = next(p for p in report.problems if p.kind == "undecodable-rows")
    assert lost.table == "regions" and lost.path == str(path)
    assert "resedis repair --db" in lost.fix
    assert report.damaged_images == indexed_ids(db)


def test_a_truncated_data_file(db):
    (path,) = faultkit.data_files(db, "regions")
    faultkit.truncate(path, 0.6)
    report = verify_index(db)
    assert {"bad-data-file", "undecodable-rows"} <= kinds(report)
    assert next(p for p in report.problems if p.kind == "bad-data-file").path == str(path)


def test_a_truncated_images_file(db):
    (path,) = faultkit.data_files(db, "images")
    faultkit.truncate(path, 0.5)
    report = verify_index(db)
    assert "undecodable-rows" in kinds(report)
    assert "images" in report.damaged_tables


@pytest.mark.parametrize("table", ["regions", "images", "skipped"])
def test_a_deleted_table(db, table):
    faultkit.delete_table(db, table)
    report = verify_index(db)
    assert "table-missing" in kinds(report)
    assert report.lost_tables == {table}


@pytest.mark.parametrize("field,value", [("vector_dim", "abc"), ("root", 12345), ("model", 7), ("max_regions", -5)])
def test_a_wrong_manifest_field(db, field, value):
    faultkit.set_manifest_field(db, field, value)
    report = verify_index(db)
    problem = next(p for p in report.problems if p.kind == "manifest-field")
    assert f"'{field}'" in problem.message and problem.fix
    assert not report.ok and not report.manifest_ok


def test_a_deleted_manifest(db):
    (db / "resedis.json").unlink()
    report = verify_index(db)
    assert "manifest-missing" in kinds(report)
    assert "--model" in report.problems[0].fix


def test_not_an_index(tmp_path):
    with pytest.raises(ResedisError, match="not a resedis index"):
        verify_index(tmp_path)


def test_non_finite_values(db):
    victim = sorted(indexed_ids(db))[3]
    regions(db).update(where=f"image_id = '{victim}' AND region = 0", values={"objectness": float("nan")})
    report = verify_index(db)
    assert kinds(report) >= {"non-finite"}
    assert report.damaged_images == {victim}


def test_boxes_outside_the_image(db):
    victim = sorted(indexed_ids(db))[5]
    table = regions(db)
    rows = table.search().where(f"image_id = '{victim}'").limit(None).to_arrow()
    boxes = rows["box"].to_pylist()
    boxes[0] = [0.0, 0.0, 1e6, 5.0]
    rows = rows.set_column(rows.schema.get_field_index("box"), "box",
                           pa.array(boxes, rows.schema.field("box").type))
    table.delete(f"image_id = '{victim}'")
    table.add(rows)
    report = verify_index(db)
    assert "box-outside-image" in kinds(report)
    assert victim in report.damaged_images


def test_a_lost_region_row_and_orphans(db):
    ids = sorted(indexed_ids(db))
    table = regions(db)
    table.delete(f"image_id = '{ids[0]}' AND region = 0")
    orphan = table.search().where(f"image_id = '{ids[1]}'").limit(1).to_arrow()
    orphan = orphan.set_column(orphan.schema.get_field_index("batch"), "batch", pa.array([999], pa.int64()))
    table.add(orphan)
    report = verify_index(db)
    assert kinds(report) == {"count-mismatch"}
    assert report.damaged_images == {ids[0]}
    warning = next(p for p in report.problems if p.kind == "orphan-regions")
    assert warning.severity == "warning" and warning.image_ids == [ids[1]]


def test_deep_finds_changed_and_missing_sources(db, corpus, tmp_path):
    images = sorted(corpus.glob("*.jpg"))
    changed, gone = images[0], images[1]
    saved = {p: p.read_bytes() for p in (changed, gone)}
    try:
        changed.write_bytes(saved[changed] + b"\0")
        gone.unlink()
        assert verify_index(db).ok  # shallow: sources are not read
        report = verify_index(db, deep=True)
        assert kinds(report) == {"source-changed", "source-missing"}
        assert report.missing_sources == {gone.name}
        assert changed.name in report.damaged_images
    finally:
        for p, data in saved.items():
            p.write_bytes(data)


def test_the_json_report_names_each_problem_and_fix(db):
    faultkit.set_manifest_field(db, "vector_dim", "abc")
    faultkit.delete_table(db, "skipped")
    out = json.loads(json.dumps(verify_index(db).to_json(), allow_nan=False))
    assert out["ok"] is False and out["errors"] == 2
    assert all(p["fix"] and p["message"] and p["kind"] for p in out["problems"])
