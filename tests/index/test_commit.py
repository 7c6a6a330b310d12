"""The commit step (``resedis.index.commit``) on its own, row by row, without a model: the
regions arrive precomputed (as from Ray workers), so every stored value is known. The
writer's retry of a batch that breaks the model uses a region encoder that fails on
chosen images; the whole pipeline with a real (tiny) model is ``test_index.py``."""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from resedis.errors import ResedisError
from resedis.index.checksum import batch_checksums
from resedis.index.commit import (
    KEEP_VERSIONS_FOR,
    MAX_MODEL_FAILURES_IN_A_ROW,
    BatchWriter,
    Lock,
    compact,
    delete_ids,
    existing_entries,
    next_batch,
    region_rows,
    repair,
)
from resedis.index.fs import as_location
from resedis.index.manifest import Manifest, write_manifest
from resedis.index.plan import FileTask
from resedis.index.store import CHECKSUM, IMAGES, REGIONS, SKIPPED, Index, skipped_schema
from resedis.io.images import load_image, sha256_file
from resedis.types import ImageRegions, Skipped

DIM = 4


def regions_of(n: int, seed: int, *, image_vector: bool = False) -> ImageRegions:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 20, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 10, (n, 2))], axis=1).astype(np.float32)
    return ImageRegions(boxes, rng.normal(size=n).astype(np.float32), rng.normal(size=(n, DIM)).astype(np.float32),
                        rng.normal(size=3).astype(np.float32) if image_vector else None)


def new_index(tmp_path: Path, root: Path, dtype: str = "float32") -> Index:
    loc = as_location(tmp_path / "db")
    loc.ensure_dir()
    manifest = Manifest(model="owlv2:/not/loaded", vector_dim=DIM, vector_dtype=dtype, preprocessing={},
                        root=str(root), max_regions=7, nms_iou=0.4)
    write_manifest(loc, manifest)
    return Index(loc, manifest, create=True)


def draw(root: Path, name: str, size: tuple[int, int], color=(200, 10, 10)) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def task_of(root: Path, path: Path, known_sha: str | None = None) -> FileTask:
    st = path.stat()
    return FileTask(path.relative_to(root).as_posix(), path, st.st_size, st.st_mtime_ns, known_sha)


@pytest.fixture()
def corpus(tmp_path):
    root = tmp_path / "images"
    paths = [draw(root, "a.png", (30, 20)), draw(root, "sub/b.png", (16, 40), (0, 90, 0)), draw(root, "c.png", (25, 25))]
    return root, paths, new_index(tmp_path, root)


def table(index: Index, name: str, sort: str = "image_id") -> list[dict]:
    return sorted(index.read(name).to_pylist(), key=lambda r: (r[sort], r.get("region", 0)))


# ---- region_rows -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, np_dtype", [("float32", np.float32), ("float16", np.float16)])
def test_region_rows_lay_out_every_region(dtype, np_dtype):
    regions = [regions_of(2, 0), regions_of(0, 1), regions_of(3, 2)]
    t = region_rows(["a", "empty", "c"], regions, 7, DIM, dtype)
    assert t.column_names == ["image_id", "region", "box", "objectness", "vector", "batch"]
    assert t["image_id"].to_pylist() == ["a", "a", "c", "c", "c"]
    assert t["region"].to_pylist() == [0, 1, 0, 1, 2]
    assert t["batch"].to_pylist() == [7] * 5
    assert t.schema.field("batch").type == pa.int64() and t.schema.field("region").type == pa.int32()
    boxes = np.array(t["box"].to_pylist(), np.float32)
    np.testing.assert_array_equal(boxes, np.concatenate([regions[0].boxes, regions[2].boxes]))
    np.testing.assert_array_equal(np.array(t["objectness"].to_pylist(), np.float32),
                                  np.concatenate([regions[0].objectness, regions[2].objectness]))
    vectors = np.array(t["vector"].to_pylist())
    expected = np.concatenate([regions[0].vectors, regions[2].vectors]).astype(np_dtype)
    np.testing.assert_array_equal(vectors, expected.astype(np.float64))
    if dtype == "float16":  # the rounding happened: float32 values are not all float16-exact
        assert not np.array_equal(vectors, np.concatenate([regions[0].vectors, regions[2].vectors]).astype(np.float64))


def test_region_rows_of_images_without_regions():
    t = region_rows(["a", "b"], [regions_of(0, 0), regions_of(0, 1)], 3, DIM, "float32")
    assert t.num_rows == 0 and t.column_names == ["image_id", "region", "box", "objectness", "vector", "batch"]
    assert t.schema.field("vector").type.list_size == DIM
    t = region_rows([], [], 3, DIM, "float16")
    assert t.num_rows == 0


def test_region_rows_refuse_vectors_of_another_dimension():
    bad = ImageRegions(np.zeros((1, 4), np.float32), np.zeros(1, np.float32), np.zeros((1, DIM + 1), np.float32))
    with pytest.raises(ResedisError) as err:
        region_rows(["a"], [bad], 1, DIM, "float32")
    assert str(err.value) == f"model returned vectors of dimension {DIM + 1}, the index stores {DIM}"


# ---- BatchWriter with precomputed regions -------------------------------------------------
def loaded(path: Path):
    result = load_image(path)
    assert not isinstance(result, Skipped), result
    return result


def test_commit_writes_the_images_rows_last_with_their_facts(corpus):
    root, paths, index = corpus
    writer = BatchWriter(index, None, root, 5)
    regions = [regions_of(2, 0, image_vector=True), regions_of(0, 1), regions_of(1, 2)]
    for path, r in zip(paths, regions):
        writer.images.append((task_of(root, path), loaded(path)))
        writer.prepared.append(None)
        writer.regions.append(r)
    assert writer.pending() == 3
    assert writer.commit() == []
    assert (writer.batch, writer.pending(), writer.prepared, writer.regions, writer.skips, writer.replaced) == (6, 0, [], [], [], [])
    rows = table(index, IMAGES)
    assert [r["image_id"] for r in rows] == ["a.png", "c.png", "sub/b.png"]
    by_id = dict(zip(["a.png", "sub/b.png", "c.png"], zip(paths, regions)))
    for row in rows:
        path, r = by_id[row["image_id"]]
        st = path.stat()
        assert row["root"] == str(root) and row["path"] == str(path.resolve())
        assert row["sha256"] == sha256_file(path)
        assert (row["width"], row["height"]) == Image.open(path).size
        assert (row["mtime_ns"], row["size_bytes"], row["n_regions"], row["batch"]) == (st.st_mtime_ns, st.st_size, len(r), 5)
        if r.image_vector is None:
            assert row["image_vector"] is None
        else:
            np.testing.assert_array_equal(np.array(row["image_vector"], np.float32), r.image_vector)
    stored = index.read(REGIONS)
    assert sorted(zip(stored["image_id"].to_pylist(), stored["region"].to_pylist())) == [
        ("a.png", 0), ("a.png", 1), ("c.png", 0)]
    assert set(stored["batch"].to_pylist()) == {5}
    # the checksums are those of the rows as written, in commit order
    expected = batch_checksums(
        [(task_of(root, p).rel, sha256_file(p), *Image.open(p).size, len(r)) for p, r in zip(paths, regions)],
        region_rows(["a.png", "sub/b.png", "c.png"], regions, 5, DIM, "float32"), 5)
    assert {r["image_id"]: r[CHECKSUM] for r in rows} == dict(zip(["a.png", "sub/b.png", "c.png"], expected))
    assert writer.commit() == [] and writer.batch == 6  # nothing pending: no empty batch


def test_commit_records_skips_and_replaces_old_rows(corpus):
    root, paths, index = corpus
    first = BatchWriter(index, None, root, 1)
    for path, seed in zip(paths[:2], (0, 1)):
        first.images.append((task_of(root, path), loaded(path)))
        first.prepared.append(None)
        first.regions.append(regions_of(2, seed))
    first.commit()
    old_sha = sha256_file(paths[0])
    # a.png changed, sub/b.png became unreadable, c.png is new
    draw(root, "a.png", (12, 14), (1, 2, 3))
    paths[1].write_bytes(b"garbage")
    writer = BatchWriter(index, None, root, first.batch)
    writer.replaced += ["a.png", "sub/b.png"]
    for path, r in ((paths[0], regions_of(1, 5)), (paths[2], regions_of(3, 6))):
        writer.images.append((task_of(root, path, old_sha if path == paths[0] else None), loaded(path)))
        writer.prepared.append(None)
        writer.regions.append(r)
    bad = task_of(root, paths[1], "whatever")
    writer.skips.append((bad, Skipped(str(paths[1]), "not an image")))
    assert writer.commit() == []
    images = {r["image_id"]: r for r in table(index, IMAGES)}
    assert sorted(images) == ["a.png", "c.png"]
    assert (images["a.png"]["batch"], images["a.png"]["n_regions"], images["a.png"]["width"]) == (2, 1, 12)
    regions = index.read(REGIONS)
    assert sorted(zip(regions["image_id"].to_pylist(), regions["batch"].to_pylist())) == [
        ("a.png", 2), ("c.png", 2), ("c.png", 2), ("c.png", 2)]
    assert table(index, SKIPPED) == [{"image_id": "sub/b.png", "path": str(paths[1]), "reason": "not an image",
                                      "size_bytes": bad.size, "mtime_ns": bad.mtime_ns, "batch": 2}]
    # a later run decodes it again: its old skip record goes with the commit that indexes it
    draw(root, "sub/b.png", (16, 40))
    again = BatchWriter(index, None, root, writer.batch)
    again.images.append((task_of(root, paths[1]), loaded(paths[1])))
    again.prepared.append(None)
    again.regions.append(regions_of(1, 7))
    again.commit()
    assert table(index, SKIPPED) == [] and sorted(r["image_id"] for r in table(index, IMAGES)) == ["a.png", "c.png", "sub/b.png"]


def test_a_commit_of_only_replacements_deletes_them(corpus):
    root, paths, index = corpus
    writer = BatchWriter(index, None, root, 1)
    for path in paths:
        writer.images.append((task_of(root, path), loaded(path)))
        writer.prepared.append(None)
        writer.regions.append(regions_of(1, 0))
    writer.commit()
    index.skipped_table.add(pa.table({"image_id": ["c.png"], "path": ["x"], "reason": ["r"], "size_bytes": pa.array([1], pa.int64()),
                                      "mtime_ns": pa.array([1], pa.int64()), "batch": pa.array([1], pa.int64())},
                                     schema=skipped_schema()))
    drop = BatchWriter(index, None, root, writer.batch)
    drop.replaced.append("sub/b.png")
    assert drop.commit() == [] and drop.batch == 3
    assert sorted(r["image_id"] for r in table(index, IMAGES)) == ["a.png", "c.png"]
    assert sorted(index.read(REGIONS)["image_id"].to_pylist()) == ["a.png", "c.png"]
    assert [r["image_id"] for r in table(index, SKIPPED)] == ["c.png"]  # a replacement keeps other skips


def test_precomputed_regions_must_match_the_images(corpus):
    root, paths, index = corpus
    writer = BatchWriter(index, None, root, 1)
    for path in paths[:2]:
        writer.images.append((task_of(root, path), loaded(path)))
        writer.prepared.append(None)
    writer.regions.append(regions_of(1, 0))
    with pytest.raises(ResedisError) as err:
        writer.commit()
    assert str(err.value) == ("2 images to commit but 1 precomputed regions; "
                              "with no region encoder, every image needs its regions")
    assert index.count(IMAGES) == 0 and index.count(REGIONS) == 0


class FlakyEncoder:
    """A region encoder (``encode_images``) that raises on images of a chosen width, and
    records how it was called."""

    def __init__(self, bad_widths=(), wrong_count=False):
        self.bad_widths = set(bad_widths)
        self.wrong_count = wrong_count
        self.calls = []

    def encode_images(self, images, max_regions, nms_iou):
        self.calls.append(([im.width for im in images], max_regions, nms_iou))
        if self.wrong_count:
            return [regions_of(1, 0)]
        if any(im.width in self.bad_widths for im in images):
            raise RuntimeError("boom")
        return [regions_of(im.width % 3, im.width) for im in images]


def writer_with(index, root, backend, sizes, batch=1):
    writer = BatchWriter(index, backend, root, batch)
    for k, size in enumerate(sizes):
        path = draw(root, f"w{k}_{size[0]}.png", size)
        writer.images.append((task_of(root, path), loaded(path)))
        writer.prepared.append(None)
    return writer


def test_the_encoder_gets_the_index_settings(corpus):
    root, _, index = corpus
    backend = FlakyEncoder()
    writer = writer_with(index, root, backend, [(10, 10), (11, 10)])
    assert writer.commit() == []
    assert backend.calls == [([10, 11], 7, 0.4)]
    assert {r["image_id"]: r["n_regions"] for r in table(index, IMAGES)} == {"w0_10.png": 1, "w1_11.png": 2}


def test_an_image_that_breaks_the_model_becomes_a_skip(corpus, caplog):
    root, _, index = corpus
    backend = FlakyEncoder(bad_widths={13})
    writer = writer_with(index, root, backend, [(10, 10), (13, 10), (11, 10)])
    writer.failures_in_a_row = 2  # two failures earlier, then a success resets the count
    with caplog.at_level(logging.WARNING, logger="resedis.index.commit"):
        failed = writer.commit()
    assert [r.getMessage() for r in caplog.records] == ["model failed on a batch (RuntimeError: boom); retrying image by image"]
    assert [(t.rel, s.source, s.reason) for t, s in failed] == [
        ("w1_13.png", str(root / "w1_13.png"), "model failed on this image (RuntimeError: boom)")]
    assert backend.calls == [([10, 13, 11], 7, 0.4), ([10], 7, 0.4), ([13], 7, 0.4), ([11], 7, 0.4)]
    assert writer.failures_in_a_row == 0
    assert sorted(r["image_id"] for r in table(index, IMAGES)) == ["w0_10.png", "w2_11.png"]
    assert [(r["image_id"], r["reason"], r["batch"]) for r in table(index, SKIPPED)] == [
        ("w1_13.png", "model failed on this image (RuntimeError: boom)", 1)]
    assert {r["image_id"]: r["n_regions"] for r in table(index, IMAGES)} == {"w0_10.png": 1, "w2_11.png": 2}


def test_failures_in_a_row_stop_the_run(corpus):
    root, _, index = corpus
    backend = FlakyEncoder(bad_widths={13, 14, 15})
    writer = writer_with(index, root, backend, [(13, 10), (10, 10), (14, 10), (15, 10)])
    assert [t.rel for t, _ in writer.commit()] == ["w0_13.png", "w2_14.png", "w3_15.png"]
    assert writer.failures_in_a_row == 2  # the success in between reset the count; the count outlives the batch
    path = draw(root, "next.png", (15, 9))
    writer.images.append((task_of(root, path), loaded(path)))
    writer.prepared.append(None)
    with pytest.raises(ResedisError) as err:
        writer.commit()
    assert MAX_MODEL_FAILURES_IN_A_ROW == 3
    assert str(err.value) == (f"the model failed on 3 images in a row (last: {path}: RuntimeError: boom); "
                              "stopping — this looks like a model/device problem")
    assert isinstance(err.value.__cause__, RuntimeError)


def test_two_failures_in_a_row_are_not_yet_fatal(corpus):
    root, _, index = corpus
    writer = writer_with(index, root, FlakyEncoder(bad_widths={13, 14}), [(13, 10), (14, 10)])
    assert [t.rel for t, _ in writer.commit()] == ["w0_13.png", "w1_14.png"]
    assert writer.failures_in_a_row == 2 and index.count(IMAGES) == 0 and index.count(SKIPPED) == 2


def test_a_batch_success_resets_the_failure_count(corpus):
    root, _, index = corpus
    writer = writer_with(index, root, FlakyEncoder(), [(10, 10)])
    writer.failures_in_a_row = 2
    writer.commit()
    assert writer.failures_in_a_row == 0


def test_a_wrong_result_count_is_an_error_not_a_retry(corpus):
    root, _, index = corpus
    backend = FlakyEncoder(wrong_count=True)
    writer = writer_with(index, root, backend, [(10, 10), (11, 10)])
    with pytest.raises(ResedisError) as err:
        writer.commit()
    assert str(err.value) == "model returned 1 results for 2 images"
    assert len(backend.calls) == 1


# ---- repair, entries, batches ---------------------------------------------------------------
def commit_images(index, root, paths, counts, batch):
    writer = BatchWriter(index, None, root, batch)
    for path, n in zip(paths, counts):
        writer.images.append((task_of(root, path), loaded(path)))
        writer.prepared.append(None)
        writer.regions.append(regions_of(n, n))
    writer.commit()
    return writer


def test_repair_deletes_orphan_regions_only(corpus):
    root, paths, index = corpus
    assert repair(index) == 0
    commit_images(index, root, paths[:2], [2, 1], 1)
    # an interrupted batch 2 (regions, no images rows) for a new id and for an indexed one
    index.regions_table.add(region_rows(["c.png", "a.png"], [regions_of(3, 0), regions_of(1, 1)], 2, DIM, "float32"))
    assert index.count(REGIONS) == 7
    assert repair(index) == 4
    regions = index.read(REGIONS)
    assert sorted(zip(regions["image_id"].to_pylist(), regions["batch"].to_pylist())) == [
        ("a.png", 1), ("a.png", 1), ("sub/b.png", 1)]
    assert index.count(IMAGES) == 2 and repair(index) == 0


def test_repair_deletes_orphans_of_many_ids_and_batches(corpus):
    root, paths, index = corpus
    commit_images(index, root, paths[:1], [1], 1)
    ids = [f"gone{i:04d}.png" for i in range(1203)]
    index.regions_table.add(region_rows(ids[:1100], [regions_of(1, 0)] * 1100, 2, DIM, "float32"))
    index.regions_table.add(region_rows(ids[1100:], [regions_of(2, 0)] * 103, 3, DIM, "float32"))
    assert repair(index) == 1100 + 206
    assert index.read(REGIONS)["image_id"].to_pylist() == ["a.png"]


def test_repair_forgets_images_whose_regions_are_incomplete(corpus, caplog):
    root, paths, index = corpus
    commit_images(index, root, paths, [2, 1, 3], 1)
    index.regions_table.delete("image_id = 'c.png' AND region = 1")
    with caplog.at_level(logging.INFO, logger="resedis.index.commit"):
        assert repair(index) == 2  # c.png's two remaining regions, now orphans
    assert [r.getMessage() for r in caplog.records] == [
        "1 indexed images have missing or extra regions (damaged regions table?); re-encoding them",
        "removed 2 orphan regions left by an interrupted batch"]
    assert sorted(r["image_id"] for r in table(index, IMAGES)) == ["a.png", "sub/b.png"]
    assert sorted(index.read(REGIONS)["image_id"].to_pylist()) == ["a.png", "a.png", "sub/b.png"]


def test_existing_entries_and_next_batch(corpus):
    root, paths, index = corpus
    assert existing_entries(index) == ({}, {})
    assert next_batch(index) == 1
    commit_images(index, root, paths[:2], [1, 0], 4)
    index.skipped_table.add(pa.table({"image_id": ["bad.jpg"], "path": ["/x/bad.jpg"], "reason": ["truncated"],
                                      "size_bytes": pa.array([12], pa.int64()), "mtime_ns": pa.array([34], pa.int64()),
                                      "batch": pa.array([9], pa.int64())}, schema=skipped_schema()))
    indexed, skipped = existing_entries(index)
    assert indexed == {task_of(root, p).rel: (sha256_file(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths[:2]}
    assert skipped == {"bad.jpg": (12, 34, "truncated")}
    assert next_batch(index) == 10  # the skipped table's batch 9 counts
    index.regions_table.add(region_rows(["x"], [regions_of(1, 0)], 12, DIM, "float32"))
    assert next_batch(index) == 13  # and an orphan region's batch


def test_delete_ids_in_chunks(corpus):
    _, _, index = corpus
    ids = [f"id{i:04d}" for i in range(1203)]
    n = len(ids)
    index.skipped_table.add(pa.table({"image_id": ids, "path": ids, "reason": ["r"] * n, "size_bytes": pa.array([1] * n, pa.int64()),
                                      "mtime_ns": pa.array([1] * n, pa.int64()), "batch": pa.array([1] * n, pa.int64())},
                                     schema=skipped_schema()))
    delete_ids(index.skipped_table, "image_id", ids[1:])
    assert index.read(SKIPPED)["image_id"].to_pylist() == ["id0000"]


# ---- lock and compaction ----------------------------------------------------------------------
def test_lock_is_exclusive_and_released(tmp_path):
    db = tmp_path / "db"
    db.mkdir()
    with Lock(db) as held:
        assert held.path == db / ".lock" and held.fh is not None
        with pytest.raises(ResedisError) as err:
            Lock(as_location(db)).__enter__()
        assert str(err.value) == f"{db}: another process is writing this index; wait for it to finish"
        with open(db / ".lock") as fh:  # the kernel holds it for the writer
            with pytest.raises(BlockingIOError):
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert held.fh is None
    with Lock(db):  # released on exit: another writer may take it
        pass
    held.__exit__(None, None, None)  # a second exit is harmless


def test_lock_on_an_object_store_is_a_no_op():
    lock = Lock(as_location("s3://bucket/prefix/db", {"region": "us-east-1"}))
    assert lock.path is None
    with lock as held:
        assert held is lock and held.fh is None


class RecordingTable:
    def __init__(self, name, fail=False):
        self.name, self.fail, self.calls = name, fail, []

    def optimize(self, **kwargs):
        self.calls.append(kwargs)
        if self.fail:
            raise OSError("disk full")


class Tables:
    def __init__(self, fail=()):
        self.images_table = RecordingTable("images", "images" in fail)
        self.regions_table = RecordingTable("regions", "regions" in fail)
        self.skipped_table = RecordingTable("skipped", "skipped" in fail)


@pytest.mark.parametrize("end_of_run", [False, True])
def test_compact_optimizes_every_table(end_of_run):
    assert KEEP_VERSIONS_FOR == dt.timedelta(minutes=1)
    tables = Tables()
    compact(tables, end_of_run=end_of_run)
    for t in (tables.images_table, tables.regions_table, tables.skipped_table):
        assert t.calls == [{"cleanup_older_than": dt.timedelta(minutes=1), "delete_unverified": end_of_run}]


def test_compact_default_keeps_unverified_files():
    tables = Tables()
    compact(tables)
    assert tables.regions_table.calls == [{"cleanup_older_than": dt.timedelta(minutes=1), "delete_unverified": False}]


def test_a_failed_compaction_is_a_warning(caplog):
    tables = Tables(fail={"regions"})
    with caplog.at_level(logging.WARNING, logger="resedis.index.commit"):
        compact(tables, end_of_run=True)
    assert [r.getMessage() for r in caplog.records] == ["could not compact table regions: disk full"]
    assert len(tables.skipped_table.calls) == 1  # the next table is still compacted


def test_compact_a_real_index(corpus):
    root, paths, index = corpus
    for k, path in enumerate(paths):
        commit_images(index, root, [path], [2], k + 1)
    before = index.table_version(IMAGES)
    compact(index, end_of_run=True)
    assert index.table_version(IMAGES) > before
    assert sorted(r["image_id"] for r in table(index, IMAGES)) == ["a.png", "c.png", "sub/b.png"]
    assert index.count(REGIONS) == 6


class RecordingSideTable:
    """A side table (:class:`resedis.index.side.SideTable`) that records what the writer asks of it."""

    name = "recording"

    def __init__(self):
        self.calls = []

    def add(self, ids, images, regions, batch):
        self.calls.append(("add", list(ids), [im.size for im in images], [len(r) for r in regions], batch))

    def delete(self, ids):
        self.calls.append(("delete", list(ids)))


def test_side_tables_follow_the_commit(corpus):
    root, paths, index = corpus
    side = RecordingSideTable()
    writer = BatchWriter(index, None, root, 3, [side])
    writer.replaced.append("old.png")
    for path, n in zip(paths[:2], (2, 1)):
        writer.images.append((task_of(root, path), loaded(path)))
        writer.prepared.append(None)
        writer.regions.append(regions_of(n, n))
    writer.commit()
    assert side.calls == [("delete", ["old.png"]), ("add", ["a.png", "sub/b.png"], [(30, 20), (16, 40)], [2, 1], 3)]


def test_a_commit_without_images_keeps_the_failure_count(corpus):
    root, paths, index = corpus
    writer = BatchWriter(index, FlakyEncoder(), root, 1)
    writer.failures_in_a_row = 2
    writer.skips.append((task_of(root, paths[0]), Skipped(str(paths[0]), "not an image")))
    assert writer.commit() == [] and writer.batch == 2
    assert writer.failures_in_a_row == 2  # no image reached the model: no success to reset it


def test_repair_logs_what_it_removed(corpus, caplog):
    root, paths, index = corpus
    commit_images(index, root, paths[:1], [1], 1)
    index.regions_table.add(region_rows(["c.png"], [regions_of(3, 0)], 2, DIM, "float32"))
    with caplog.at_level(logging.INFO, logger="resedis.index.commit"):
        assert repair(index) == 3
    assert [r.getMessage() for r in caplog.records] == ["removed 3 orphan regions left by an interrupted batch"]


# ---- compact storage, preprocessed inputs ------------------------------------------------------
def test_a_compact_index_fits_its_projection_on_the_first_batch_and_quantizes_with_it(tmp_path):
    from resedis.index.columns import index_projection
    from resedis.ann_projection import PROJECTION_KEY, fit_projection, proj_dims, projection_to_json

    root = tmp_path / "images"
    paths = [draw(root, "a.png", (30, 20)), draw(root, "c.png", (25, 25))]
    index = new_index(tmp_path, root, dtype="int8")
    regions = [regions_of(3, 0), regions_of(2, 1)]
    writer = BatchWriter(index, None, root, 1)
    for path, r in zip(paths, regions):
        writer.images.append((task_of(root, path), loaded(path)))
        writer.prepared.append(None)
        writer.regions.append(r)
    assert writer.commit() == []
    projection = fit_projection(np.concatenate([r.vectors for r in regions]), proj_dims(DIM))
    assert index.manifest.extra[PROJECTION_KEY] == projection_to_json(projection, 5)
    recorded = index_projection(index)
    np.testing.assert_array_equal(recorded.basis, projection.basis)
    assert recorded.norm == projection.norm and not recorded.legacy
    expected = region_rows(["a.png", "c.png"], regions, 1, DIM, "int8", projection)
    stored = index.read(REGIONS)
    assert stored.column_names == expected.column_names and stored.equals(expected)


class PreprocessedEncoder:
    """A region encoder fed preprocessed tensors (``encode_preprocessed``); it fails on a batch
    of more than ``max_batch`` images, and never accepts raw images."""

    def __init__(self, max_batch=8):
        self.max_batch = max_batch
        self.calls = []

    def encode_preprocessed(self, pixel_values, sizes):
        self.calls.append((tuple(pixel_values.shape), list(sizes)))
        if pixel_values.shape[0] > self.max_batch:
            raise RuntimeError("out of memory")
        # nine disjoint boxes per image, best first: the index keeps its max_regions (7) of them
        boxes = np.array([[10.0 * k, 0, 10.0 * k + 5, 5] for k in range(9)], np.float32)
        return [ImageRegions(boxes, np.linspace(1, 0, 9).astype(np.float32), np.ones((9, DIM), np.float32))
                for _ in sizes]

    def encode_images(self, images, max_regions, nms_iou):
        raise AssertionError("the preprocessed tensors were not used")


def writer_with_prepared(index, root, backend):
    import torch

    writer = BatchWriter(index, backend, root, 1)
    for k, size in enumerate([(10, 10), (11, 10)]):
        path = draw(root, f"p{k}.png", size)
        writer.images.append((task_of(root, path), loaded(path)))
        writer.prepared.append((torch.full((1, 3, 4, 4), float(k)), [size[::-1]]))
    return writer


def test_preprocessed_inputs_are_encoded_in_one_batch(corpus, caplog):
    root, _, index = corpus
    backend = PreprocessedEncoder()
    writer = writer_with_prepared(index, root, backend)
    with caplog.at_level(logging.WARNING, logger="resedis.index.commit"):
        assert writer.commit() == []
    assert caplog.records == []
    assert backend.calls == [((2, 3, 4, 4), [(10, 10), (10, 11)])]
    assert {r["image_id"]: r["n_regions"] for r in table(index, IMAGES)} == {"p0.png": 7, "p1.png": 7}


def test_preprocessed_inputs_are_retried_image_by_image(corpus):
    root, _, index = corpus
    backend = PreprocessedEncoder(max_batch=1)
    writer = writer_with_prepared(index, root, backend)
    assert writer.commit() == []
    assert backend.calls == [((2, 3, 4, 4), [(10, 10), (10, 11)]), ((1, 3, 4, 4), [(10, 10)]), ((1, 3, 4, 4), [(10, 11)])]
    assert sorted(r["image_id"] for r in table(index, IMAGES)) == ["p0.png", "p1.png"]
