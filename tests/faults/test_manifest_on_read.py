"""A manifest field of the wrong type or range is refused on read, in one line naming the
field and the fix, by every command that reads it; a lost manifest points to repair."""

from __future__ import annotations

import pytest

import faultkit
from resedis.cli import main
from resedis.errors import ResedisError
from resedis.index import open_index


@pytest.mark.parametrize("field,value", [("vector_dim", "abc"), ("root", 12345), ("model", 7), ("max_regions", -5),
                                         ("nms_iou", 2.0), ("vector_dtype", "int2"), ("calibration", "high")])
def test_open_index_names_the_field(db, field, value):
    faultkit.set_manifest_field(db, field, value)
    with pytest.raises(ResedisError) as err:
        open_index(db)
    assert f"'{field}'" in str(err.value) and "Fix:" in str(err.value)


@pytest.mark.parametrize("argv", [["stats"], ["search", "red circle"], ["verify"]])
def test_commands_print_one_line_not_a_traceback(db, capsys, argv):
    faultkit.set_manifest_field(db, "vector_dim", "abc")
    code = main([*argv, "--db", str(db)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if argv == ["verify"]:
        assert code == 65
    else:
        assert code == 2 and "'vector_dim'" in err and "resedis repair" in err


def test_index_refuses_a_bad_manifest(db, corpus, capsys):
    faultkit.set_manifest_field(db, "max_regions", -5)
    assert main(["index", str(corpus), "--db", str(db), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'max_regions'" in err and "Traceback" not in err


def test_a_lost_manifest_points_to_repair(db, capsys):
    (db / "resedis.json").unlink()
    assert main(["stats", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert "resedis repair --db" in err and "--model" in err
