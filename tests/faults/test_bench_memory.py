"""The indexing-memory benchmark: tiny distinct images, one isolated process per size."""

from __future__ import annotations

import hashlib
import json

import pytest
from PIL import Image

from resedis.bench.memory import write_tiny_images
from resedis.cli import main


def test_tiny_images_are_distinct_and_reused(tmp_path):
    folder = write_tiny_images(tmp_path / "imgs", 5, per_folder=2)
    files = sorted(folder.rglob("*.png"))
    assert len(files) == 5 and len({f.parent for f in files}) == 3
    assert len({hashlib.sha256(f.read_bytes()).hexdigest() for f in files}) == 5
    with Image.open(files[0]) as im:
        assert im.size == (1, 1)
    stamp = files[0].stat().st_mtime_ns
    write_tiny_images(folder, 8, per_folder=2)
    assert len(list(folder.rglob("*.png"))) == 8 and files[0].stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_bench_index_memory_measures_each_size_in_its_own_process(tmp_path, capsys):
    out = tmp_path / "memory.json"
    assert main(["bench", "--index-memory", "12,6", "--out", str(out), "--workdir", str(tmp_path / "work")]) == 0
    result = json.loads(out.read_text())
    assert [r["images"] for r in result["runs"]] == [6, 12]
    assert [r["added"] for r in result["runs"]] == [6, 12]
    assert all(r["peak_rss_mb"] > 50 and r["disk_mb"] > 0 for r in result["runs"])
    assert result["growth"] == pytest.approx(result["runs"][1]["peak_rss_mb"] / result["runs"][0]["peak_rss_mb"], abs=1e-3)
    assert "growth (peak at 12 / at 6)" in capsys.readouterr().out


def test_bad_sizes_are_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--index-memory", "5000,x"])
    assert "comma-separated image counts" in capsys.readouterr().err
