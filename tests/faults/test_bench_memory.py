"""The indexing-memory benchmark: tiny distinct images, one isolated process per size."""

from __future__ import annotations

import hashlib

import pytest
from PIL import Image

from resedis.bench.memory import index_memory, write_tiny_images


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
def test_index_memory_measures_each_size_in_its_own_process(tmp_path, owlv2_spec):
    result = index_memory([12, 6], owlv2_spec, tmp_path, batch_size=4)
    assert [r["images"] for r in result["runs"]] == [6, 12]
    assert [r["added"] for r in result["runs"]] == [6, 12]
    assert all(r["peak_rss_mb"] > 50 and r["disk_mb"] > 0 for r in result["runs"])
    assert result["growth"] == pytest.approx(result["runs"][1]["peak_rss_mb"] / result["runs"][0]["peak_rss_mb"], abs=1e-3)
