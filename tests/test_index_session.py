"""The indexing session (resedis.index.session) and its side-table interface.

A side table is kept in step with ``images`` by the session alone (repair, add per batch
before the commit point, delete for replaced and pruned files, backfill, save_stats); a
driver that encodes elsewhere (Ray) feeds the session regions and gets the same index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resedis.index import IndexConfig, build_index, open_index
from resedis.index.prefetch import prefetch
from resedis.index.session import IndexingSession
from resedis.index.store import IMAGES, REGIONS, column_matrix


def draw_images(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = int(rng.integers(40, 90)), int(rng.integers(30, 80))
        img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 255, 3)))
        img.paste(tuple(int(v) for v in rng.integers(0, 255, 3)), (5, 5, w // 2, h // 2))
        img.save(folder / f"img{i:02d}.png")


class RecordingSideTable:
    """A :class:`resedis.index.side.SideTable` that records what the session asks of it, and what the index holds then."""

    name = "recording"

    def __init__(self, index):
        self.index = index
        self.seconds = 0.0
        self.calls: list[tuple] = []

    def repair(self) -> int:
        self.calls.append(("repair",))
        return 0

    def add(self, ids, images, regions, batch) -> int:
        committed = set(self.index.read(IMAGES, ["image_id"])["image_id"].to_pylist())
        assert not committed & set(ids), "a side table is written before the batch's images rows (the commit point)"
        self.calls.append(("add", list(ids), [im.size for im in images], [len(r) for r in regions], batch))
        return len(ids)

    def delete(self, ids) -> None:
        self.calls.append(("delete", sorted(ids)))

    def backfill(self, *, progress: bool = True) -> int:
        self.calls.append(("backfill",))
        return 0

    def save_stats(self) -> None:
        self.calls.append(("save_stats",))


def run(images_dir, db, encoder, config, side=None):
    """build_index's loop, with a recording side table handed to the session."""
    with IndexingSession(images_dir, db, config, encoder=encoder, progress=False) as session:
        backend = session.region_encoder()
        tables = [] if side is None else [side(session.index)]
        session.start(backend, tables)
        for task, result, prepared in prefetch(session.tasks, config.max_pixels, 2, 4):
            session.add(task, result, prepared=prepared)
        session.end_encoding()
    return session.report, tables


def test_session_keeps_a_side_table_in_step(tmp_path, encoder):
    images_dir, db = tmp_path / "images", tmp_path / "db"
    draw_images(images_dir, 5)
    config = IndexConfig(batch_size=2)
    report, (side,) = run(images_dir, db, encoder, config, RecordingSideTable)
    assert report.added == 5
    kinds = [c[0] for c in side.calls]
    assert kinds == ["repair", "add", "add", "add", "backfill", "save_stats"]
    index = open_index(db)
    rows = index.read(IMAGES, ["image_id", "batch", "width", "height", "n_regions"]).to_pylist()
    by_id = {r["image_id"]: r for r in rows}
    added = [c for c in side.calls if c[0] == "add"]
    assert sorted(i for c in added for i in c[1]) == sorted(by_id) and [len(c[1]) for c in added] == [2, 2, 1]
    for _, ids, sizes, n_regions, batch in added:
        for image_id, size, n in zip(ids, sizes, n_regions):
            row = by_id[image_id]
            assert (row["batch"], size, n) == (batch, (row["width"], row["height"]), row["n_regions"])

    # a changed file: its old side rows go before its new ones come; a removed file is pruned
    Image.new("RGB", (33, 21), (1, 2, 3)).save(images_dir / "img01.png")
    (images_dir / "img03.png").unlink()
    report, (side,) = run(images_dir, db, encoder, IndexConfig(batch_size=2, prune=True), RecordingSideTable)
    assert (report.updated, report.removed, report.unchanged) == (1, 1, 3)
    row = {r["image_id"]: r for r in open_index(db).read(IMAGES, ["image_id", "batch", "n_regions"]).to_pylist()}["img01.png"]
    assert side.calls == [
        ("repair",),
        ("delete", ["img01.png"]),
        ("add", ["img01.png"], [(33, 21)], [row["n_regions"]], row["batch"]),
        ("backfill",),
        ("save_stats",),
        ("delete", ["img03.png"]),
    ]


def test_session_fed_precomputed_regions_writes_the_same_index(tmp_path, encoder):
    """What Ray does, without Ray: the regions come with each image, the session encodes nothing."""
    from resedis.io.images import load_image

    images_dir = tmp_path / "images"
    draw_images(images_dir, 5, seed=3)
    (images_dir / "broken.png").write_bytes(b"not an image")
    config = IndexConfig(batch_size=2, vector_dtype="float32")
    single = build_index(images_dir, tmp_path / "single.db", config=config, encoder=encoder, progress=False)

    with IndexingSession(images_dir, tmp_path / "pre.db", config, encoder=encoder, progress=False) as session:
        m = session.index.manifest
        session.start(None)
        for task in session.tasks:
            loaded = load_image(task.path, config.max_pixels)
            if hasattr(loaded, "reason"):
                session.add(task, loaded)
            else:
                (regions,) = encoder.encode_images([loaded.image], m.max_regions, m.nms_iou)
                session.add(task, loaded, regions=regions)
        session.end_encoding()
    pre = session.report
    assert (pre.added, pre.new_skipped, pre.encoded) == (single.added, single.new_skipped, single.encoded) == (5, 1, 5)

    a, b = open_index(tmp_path / "single.db"), open_index(tmp_path / "pre.db")
    ra = a.read(REGIONS, ["image_id", "region", "box", "vector"]).sort_by([("image_id", "ascending"), ("region", "ascending")])
    rb = b.read(REGIONS, ["image_id", "region", "box", "vector"]).sort_by([("image_id", "ascending"), ("region", "ascending")])
    assert ra["image_id"].to_pylist() == rb["image_id"].to_pylist() and ra.num_rows > 0
    np.testing.assert_allclose(column_matrix(rb["box"], 4, np.float32), column_matrix(ra["box"], 4, np.float32), atol=1e-4)
    dim = a.manifest.vector_dim
    np.testing.assert_allclose(column_matrix(rb["vector"], dim, np.float32), column_matrix(ra["vector"], dim, np.float32),
                               atol=1e-4)
    # the same cost record in both manifests
    for index in (a, b):
        assert index.manifest.extra["index_timed_images"] == 5
        assert index.manifest.extra["index_seconds_per_image"] > 0


def test_finishing_a_session_that_never_started_is_an_error(tmp_path, encoder):
    from resedis.errors import ResedisError

    draw_images(tmp_path / "images", 1)
    with pytest.raises(ResedisError, match="start"):
        with IndexingSession(tmp_path / "images", tmp_path / "db", IndexConfig(), encoder=encoder, progress=False):
            pass


def test_index_methods_replace_table_handles(tmp_path, encoder):
    draw_images(tmp_path / "images", 3)
    build_index(tmp_path / "images", tmp_path / "db", config=IndexConfig(), encoder=encoder, progress=False)
    index = open_index(tmp_path / "db")
    assert index.count(IMAGES) == 3 and index.count(REGIONS) == sum(index.read(IMAGES, ["n_regions"])["n_regions"].to_pylist())
    assert index.count("crops") == 0 and index.table_version("crops") is None and index.table("crops") is None
    assert index.table_bytes([IMAGES, REGIONS]) == index.table_bytes([IMAGES]) + index.table_bytes([REGIONS]) > 0
    version = index.table_version(IMAGES)
    index.images_table.update(where="image_id = 'img00.png'", values={"mtime_ns": 1})
    assert index.table_version(IMAGES) > version


def test_session_without_an_encoder_needs_every_images_regions(tmp_path, encoder):
    from resedis.errors import ResedisError
    from resedis.io.images import load_image

    draw_images(tmp_path / "images", 1)
    config = IndexConfig()
    with pytest.raises(ResedisError, match="precomputed regions"):
        with IndexingSession(tmp_path / "images", tmp_path / "db", config, encoder=encoder, progress=False) as session:
            session.start(None)
            (task,) = session.tasks
            session.add(task, load_image(task.path, config.max_pixels))  # no regions
            session.end_encoding()
    assert open_index(tmp_path / "db").stats()["images"] == 0
