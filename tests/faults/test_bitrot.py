"""Bit rot in a data file is found (checksums) and repaired (re-encoded from the source)."""

from __future__ import annotations

import lancedb
import numpy as np
import pytest

import faultkit
from resedis.index.repair import repair_index
from resedis.index.verify import verify_index


def regions_by_key(db) -> dict:
    rows = lancedb.connect(str(db)).open_table("regions").to_arrow().to_pylist()
    return {(r["image_id"], r["region"]): (r["box"], r["objectness"], r["vector"]) for r in rows}


def test_every_image_has_a_checksum(pristine):
    report = verify_index(pristine)
    assert report.counts["checksummed"] == report.counts["images"] == 12
    assert not [p for p in report.problems if p.kind == "no-checksums"]


@pytest.mark.parametrize("where", [0.3, 0.5, 0.7])
def test_flipped_bytes_are_found_and_repaired(db, pristine, encoder, where):
    (path,) = faultkit.data_files(db, "regions")
    faultkit.flip_bytes(path, offset=int(path.stat().st_size * where), count=64)
    before = verify_index(db)
    assert not before.ok
    assert {p.kind for p in before.errors} & {"checksum-mismatch", "non-finite", "box-outside-image", "undecodable-rows", "bad-data-file"}
    report = repair_index(db, encoder=encoder)
    assert report.ok, report.text()
    good, fixed = regions_by_key(pristine), regions_by_key(db)
    assert fixed.keys() == good.keys()
    for key, (box, _obj, vec) in good.items():
        assert np.allclose(fixed[key][0], box, atol=1e-3) and np.allclose(fixed[key][2], vec, atol=1e-2)


def test_a_flip_that_still_decodes_is_a_checksum_mismatch(db, encoder):
    """One vector value changed by its lowest bit: a valid float, only the checksum sees it."""
    table = lancedb.connect(str(db)).open_table("regions")
    rows = table.to_arrow()
    victim = rows["image_id"][0].as_py()
    mine = table.search().where(f"image_id = '{victim}' AND region = 0").limit(None).to_arrow()
    vector = np.asarray(mine["vector"][0].as_py(), np.float16)
    vector.view(np.uint16)[0] ^= 1
    table.update(where=f"image_id = '{victim}' AND region = 0", values={"vector": vector.tolist()})
    report = verify_index(db)
    assert {p.kind for p in report.errors} == {"checksum-mismatch"}
    assert report.damaged_images == {victim}
    assert repair_index(db, encoder=encoder).ok


def test_an_index_without_checksums_says_so_and_repair_adds_them(db, encoder):
    lancedb.connect(str(db)).open_table("images").drop_columns(["checksum"])
    report = verify_index(db)
    assert report.ok
    (warning,) = [p for p in report.problems if p.kind == "no-checksums"]
    assert "indexed before" in warning.message and "resedis repair" in warning.fix
    assert repair_index(db, encoder=encoder).ok
    assert verify_index(db).counts["checksummed"] == 12
