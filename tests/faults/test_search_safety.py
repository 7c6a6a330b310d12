"""Never a wrong answer in silence: damaged rows never reach an answer (one warning names
verify and repair), JSON output is always valid, a lost table is damage, not "0 hits"."""

from __future__ import annotations

import json
import logging
import math

import lancedb
import numpy as np
import pyarrow as pa
import pytest

import faultkit
from resedis.cli import main
from resedis.search import Searcher

QUERIES = ["red circle", "blue square", "green triangle", "shape", "yellow star"]


def rewrite_regions(db, image_id, change):
    """Replace the region rows of ``image_id`` by ``change(rows)`` (an Arrow table)."""
    table = lancedb.connect(str(db)).open_table("regions")
    rows = table.search().where(f"image_id = '{image_id}'").limit(None).to_arrow()
    table.delete(f"image_id = '{image_id}'")
    table.add(change(rows))
    return rows.num_rows


def with_column(rows, name, values):
    return rows.set_column(rows.schema.get_field_index(name), name, pa.array(values, rows.schema.field(name).type))


def top_images(db, encoder) -> set:
    results = Searcher(db, encoder=encoder).search_many(QUERIES, top_k=200)
    for result in results:
        for hit in result.hits:
            assert math.isfinite(hit.score) and all(math.isfinite(v) for v in hit.box)
    return {hit.image_id for r in results for hit in r.hits}


def ids(db):
    return sorted(lancedb.connect(str(db)).open_table("images").to_arrow()["image_id"].to_pylist())


def poison(db, victim, damage) -> None:
    """Damage every region row of ``victim``: its vectors rot on disk (LanceDB refuses to
    write NaN vectors), or its boxes are rewritten impossible."""
    table = lancedb.connect(str(db)).open_table("regions")
    rows = table.search().where(f"image_id = '{victim}'").limit(None).to_arrow()
    if damage.endswith("vector") or damage == "nan-box":
        column, dtype = ("vector", np.float16) if damage.endswith("vector") else ("box", np.float32)
        value = np.inf if damage == "inf-vector" else np.nan
        for stored in rows[column].to_pylist():
            old = np.asarray(stored, dtype).tobytes()
            new = np.full(len(stored), value, dtype).tobytes()
            assert faultkit.overwrite_bytes(db, "regions", old, new) >= 1
        return
    box = {"huge-box": [1.5e16, 2e-23, 1.5e16, 3.0], "inverted-box": [9.0, 9.0, 1.0, 1.0]}[damage]
    rewrite_regions(db, victim, lambda r: with_column(r, "box", [box] * r.num_rows))


@pytest.mark.parametrize("damage", ["nan-vector", "inf-vector", "huge-box", "inverted-box", "nan-box"])
def test_damaged_regions_never_reach_an_answer(db, encoder, caplog, damage):
    victim = sorted(top_images(db, encoder))[0]  # found before the damage
    poison(db, victim, damage)
    with caplog.at_level(logging.WARNING):
        found = top_images(db, encoder)
    assert victim not in found and found  # the others still answer
    said = [r.getMessage() for r in caplog.records if "resedis verify" in r.getMessage()]
    assert len(said) == 1 and "resedis repair" in said[0]


def test_cli_json_is_valid_json(db, encoder, capsys):
    victim = sorted(top_images(db, encoder))[0]
    poison(db, victim, "nan-vector")
    assert main(["search", "red circle", "--db", str(db), "--json", "--top-k", "100"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines
    for line in lines:
        hit = json.loads(line, parse_constant=lambda c, line=line: pytest.fail(f"non-JSON constant {c} in {line}"))
        assert hit["image_id"] != victim and 0.0 <= hit["score"] <= 1.0


@pytest.mark.parametrize("table", ["regions", "images"])
def test_a_lost_table_is_damage_not_zero_hits(db, capsys, table):
    faultkit.delete_table(db, table)
    code = main(["search", "red circle", "--db", str(db)])
    err = capsys.readouterr().err
    assert code == 65, err
    assert "damaged" in err and "resedis repair" in err and "0 hits" not in err and "Traceback" not in err


def test_undecodable_rows_are_damage(db, capsys):
    (path,) = faultkit.data_files(db, "regions")
    faultkit.truncate(path, 0.5)
    code = main(["search", "red circle", "--db", str(db)])
    err = capsys.readouterr().err
    assert code == 65 and "resedis verify" in err and "Traceback" not in err
