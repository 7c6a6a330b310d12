"""The indexing session (``resedis.index.session``) without a model: an index whose manifest
is written here, fed precomputed regions (as Ray's workers do) or encoded by a region
encoder that fails on chosen images, so every count of the report and every stored row is
known. The session with a real (tiny) model: ``test_index_session.py``, ``test_index.py``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resedis.errors import IndexMismatchError, ResedisError
from resedis.index import IndexConfig
from resedis.index import session as session_module
from resedis.index.commit import Lock
from resedis.index.fs import as_location
from resedis.index.manifest import Manifest, read_manifest, write_manifest
from resedis.index.session import COMPACT_EVERY, IndexingSession, locate, stored_side_tables
from resedis.index.store import IMAGES, REGIONS, SKIPPED, open_index
from resedis.io.images import load_image
from resedis.index.config import REGION_NMS_IOU
from resedis.quant import DEFAULT_STORAGE
from resedis.types import ImageRegions, Skipped
from resedis.version import __version__

DIM = 4
MODEL = "owlv2:/not/loaded"
LONG_AGO = "2000-01-01T00:00:00+00:00"


def regions_of(n: int, seed: int) -> ImageRegions:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 20, (n, 2))
    boxes = np.concatenate([xy, xy + 5], axis=1).astype(np.float32)
    return ImageRegions(boxes, rng.normal(size=n).astype(np.float32), rng.normal(size=(n, DIM)).astype(np.float32))


def draw(root: Path, name: str, size=(20, 16), color=(200, 10, 10)) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def make_db(db: Path, root: Path, **overrides) -> Manifest:
    """An empty index (manifest only) for ``root``, as a first run writes it."""
    loc = as_location(db)
    loc.ensure_dir()
    fields = dict(model=MODEL, vector_dim=DIM, vector_dtype="float32", preprocessing={}, root=str(root.resolve()),
                  max_regions=7, nms_iou=0.4)
    fields.update(overrides)
    manifest = Manifest(**fields)
    write_manifest(loc, manifest)
    return manifest


def run(root: Path, db: Path, config: IndexConfig, backend=None) -> tuple:
    """One run: precomputed regions (n regions = image width % 3) unless ``backend`` encodes."""
    with IndexingSession(root, db, config, progress=False) as session:
        if not session.tasks:
            assert session.region_encoder() is None  # nothing to encode: no model is loaded
        session.start(backend)
        for task in session.tasks:
            result = load_image(task.path, config.max_pixels)
            if isinstance(result, Skipped) or backend is not None:
                session.add(task, result)
            else:
                session.add(task, result, regions=regions_of(result.width % 3, result.width))
        session.end_encoding()
    return session.report, session


def counts(report) -> tuple:
    return (report.added, report.updated, report.unchanged, report.removed, report.new_skipped, report.encoded)


def rows(db: Path, name: str) -> dict:
    return {r["image_id"]: r for r in open_index(db).read(name).to_pylist()}


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "images"
    for name, width in (("a.png", 20), ("b.png", 21), ("sub/c.png", 22)):
        draw(root, name, (width, 16))
    make_db(tmp_path / "db", root, updated=LONG_AGO)
    return root, tmp_path / "db"


def test_a_first_run_commits_in_batches_and_records_its_cost(folder):
    root, db = folder
    report, session = run(root, db, IndexConfig(batch_size=2))
    assert counts(report) == (3, 0, 0, 0, 0, 3)
    assert (report.db, report.root, report.model) == (str(as_location(db)), str(root.resolve()), MODEL)
    assert report.skipped == [] and report.seconds > 0
    images = rows(db, IMAGES)
    assert {i: (r["batch"], r["n_regions"]) for i, r in images.items()} == {
        "a.png": (1, 2), "b.png": (1, 0), "sub/c.png": (2, 1)}  # batch_size 2: two commits
    assert {r["root"] for r in images.values()} == {str(root.resolve())}
    assert open_index(db).count(REGIONS) == 3
    manifest = read_manifest(as_location(db))
    assert manifest.extra["index_timed_images"] == 3
    assert manifest.extra["index_seconds_per_image"] == pytest.approx(session.encode_seconds / 3)
    assert manifest.updated != LONG_AGO and manifest.model == MODEL
    assert session.writer.batch == 3


def test_a_batch_is_committed_when_batch_size_images_wait(folder):
    root, db = folder
    run(root, db, IndexConfig(batch_size=1))
    assert sorted(r["batch"] for r in rows(db, IMAGES).values()) == [1, 2, 3]


def test_a_second_run_updates_touches_prunes_and_skips(folder):
    root, db = folder
    run(root, db, IndexConfig(batch_size=2))
    before = rows(db, IMAGES)
    draw(root, "a.png", (24, 16), (1, 2, 3))  # changed content
    os.utime(root / "b.png", ns=(10**18, 10**18))  # touched, same bytes
    (root / "sub" / "c.png").unlink()  # gone
    (root / "d.png").write_bytes(b"not an image")  # new and unreadable
    draw(root, "e.png", (25, 16))  # new
    report, _ = run(root, db, IndexConfig(batch_size=8, prune=True))
    assert counts(report) == (1, 1, 1, 1, 1, 2)
    images = rows(db, IMAGES)
    assert sorted(images) == ["a.png", "b.png", "e.png"]
    assert (images["a.png"]["width"], images["a.png"]["n_regions"], images["a.png"]["batch"]) == (24, 0, 3)
    assert images["b.png"]["mtime_ns"] == 10**18 and images["b.png"]["batch"] == before["b.png"]["batch"]
    assert images["e.png"]["batch"] == 3  # the first run committed batches 1 and 2
    assert sorted(rows(db, SKIPPED)) == ["d.png"] and [s.source for s in report.skipped] == [str(root / "d.png")]
    assert open_index(db).read(REGIONS)["image_id"].to_pylist() == ["e.png"]  # 25 % 3 = 1 region; a.png: 24 % 3 = 0
    assert read_manifest(as_location(db)).extra["index_timed_images"] == 3 + 2


def test_without_prune_gone_files_stay(folder):
    root, db = folder
    run(root, db, IndexConfig())
    (root / "b.png").unlink()
    report, _ = run(root, db, IndexConfig(prune=False))
    assert counts(report) == (0, 0, 2, 0, 0, 0)
    assert sorted(rows(db, IMAGES)) == ["a.png", "b.png", "sub/c.png"]


def test_prune_drops_the_skip_records_of_gone_files(folder):
    root, db = folder
    (root / "bad.png").write_bytes(b"not an image")
    run(root, db, IndexConfig())
    assert sorted(rows(db, SKIPPED)) == ["bad.png"]
    (root / "bad.png").unlink()
    report, _ = run(root, db, IndexConfig(prune=True))
    assert counts(report) == (0, 0, 3, 0, 0, 0) and rows(db, SKIPPED) == {}
    updated = read_manifest(as_location(db)).updated
    report, _ = run(root, db, IndexConfig(prune=True))  # nothing to do: the manifest is left alone
    assert counts(report) == (0, 0, 3, 0, 0, 0) and read_manifest(as_location(db)).updated == updated


def test_an_indexed_file_that_no_longer_decodes_is_removed_and_skipped(folder):
    root, db = folder
    run(root, db, IndexConfig())
    (root / "b.png").write_bytes(b"now garbage")
    (root / "sub" / "c.png").write_bytes(b"also garbage")
    report, _ = run(root, db, IndexConfig())
    assert counts(report) == (0, 0, 1, 2, 2, 0)
    assert sorted(rows(db, IMAGES)) == ["a.png"] and sorted(rows(db, SKIPPED)) == ["b.png", "sub/c.png"]
    assert "index_timed_images" in read_manifest(as_location(db)).extra
    assert read_manifest(as_location(db)).extra["index_timed_images"] == 3  # nothing encoded: no cost recorded
    draw(root, "z.png", (20, 16))
    run(root, db, IndexConfig())
    (root / "a.png").write_bytes(b"garbage too")  # removed as it is read
    (root / "z.png").unlink()  # removed by the prune, at the end
    report, _ = run(root, db, IndexConfig(prune=True))
    assert counts(report) == (0, 0, 0, 2, 1, 0) and rows(db, IMAGES) == {}


class FlakyEncoder:
    """A region encoder that fails on images of a chosen width."""

    device = "cpu"

    def __init__(self, bad_widths):
        self.bad_widths = set(bad_widths)

    def encode_images(self, images, max_regions, nms_iou):
        if any(im.width in self.bad_widths for im in images):
            raise RuntimeError("boom")
        return [regions_of(im.width % 3, im.width) for im in images]


def test_images_the_model_fails_on_are_counted_as_skips(folder):
    root, db = folder
    run(root, db, IndexConfig())
    draw(root, "b.png", (31, 16), (9, 9, 9))  # changed, and the model fails on it
    draw(root, "sub/c.png", (31, 18), (9, 9, 9))  # changed, and the model fails on it
    for name, width in (("m1.png", 26), ("n1.png", 31), ("n2.png", 31), ("o1.png", 27), ("p1.png", 31)):
        draw(root, name, (width, 17))  # new: the model fails on the 31 px wide ones (never 3 in a row)
    report, _ = run(root, db, IndexConfig(batch_size=8), backend=FlakyEncoder({31}))
    assert counts(report) == (2, 0, 1, 2, 5, 2)
    assert sorted(rows(db, IMAGES)) == ["a.png", "m1.png", "o1.png"]
    assert sorted(rows(db, SKIPPED)) == ["b.png", "n1.png", "n2.png", "p1.png", "sub/c.png"]


def test_two_changed_files_are_two_updates(folder):
    root, db = folder
    run(root, db, IndexConfig())
    draw(root, "a.png", (20, 16), (1, 2, 3))
    draw(root, "b.png", (21, 16), (4, 5, 6))
    report, _ = run(root, db, IndexConfig())
    assert counts(report) == (0, 2, 1, 0, 0, 2)


def test_refused_entries_and_drops_are_committed_at_start(tmp_path):
    root = tmp_path / "images"
    draw(root, "a.png")
    outside = draw(tmp_path / "outside", "x.png")
    (root / "link.png").symlink_to(outside)
    make_db(tmp_path / "db", root)
    report, _ = run(root, tmp_path / "db", IndexConfig())
    assert counts(report) == (1, 0, 0, 0, 1, 1)
    assert sorted(rows(tmp_path / "db", SKIPPED)) == ["link.png"]
    assert read_manifest(as_location(tmp_path / "db")).extra["index_timed_images"] == 1  # one image encoded: timed
    # the refused entry in a commit of its own (batch 1), before the images (batch 2)
    assert rows(tmp_path / "db", SKIPPED)["link.png"]["batch"] == 1 and rows(tmp_path / "db", IMAGES)["a.png"]["batch"] == 2


def test_compaction_every_compact_every_batches(folder, monkeypatch):
    root, db = folder
    calls = []
    monkeypatch.setattr(session_module, "compact",
                        lambda index, end_of_run=False: calls.append(end_of_run if type(index).__name__ == "Index" else index))
    assert COMPACT_EVERY == 200
    monkeypatch.setattr(session_module, "COMPACT_EVERY", 2)
    run(root, db, IndexConfig(batch_size=1))
    # three commits leave the writer at batch 2, 3, 4: compaction after the 1st and 3rd, then the run's own
    assert calls == [False, False, True]


def test_finishing_without_start_is_an_error(folder):
    root, db = folder
    with pytest.raises(ResedisError) as err:
        with IndexingSession(root, db, IndexConfig(), progress=False):
            pass
    assert str(err.value) == "IndexingSession: start() was never called; nothing was indexed"
    with Lock(as_location(db)):  # released all the same
        pass


def test_an_exception_in_the_block_leaves_the_index_unfinished_and_unlocked(folder):
    root, db = folder
    with pytest.raises(KeyError):
        with IndexingSession(root, db, IndexConfig(), progress=False) as session:
            session.start(None)
            raise KeyError("driver failed")
    assert read_manifest(as_location(db)).extra == {}  # no cost recorded, no finish
    with Lock(as_location(db)):
        pass


@pytest.mark.parametrize("config, message", [
    (IndexConfig(vector_dtype="float16"),
     "the index was built with vector_dtype='float32', but vector_dtype='float16' was asked for; "
     "omit it to keep the index's setting, or build a new index with --db NEW_DIR"),
    (IndexConfig(max_regions=8),
     "the index was built with max_regions=7, but max_regions=8 was asked for; "
     "omit it to keep the index's setting, or build a new index with --db NEW_DIR"),
    (IndexConfig(nms_iou=0.5),
     "the index was built with nms_iou=0.4, but nms_iou=0.5 was asked for; "
     "omit it to keep the index's setting, or build a new index with --db NEW_DIR"),
])
def test_settings_that_differ_from_the_index_are_refused(folder, config, message):
    root, db = folder
    with pytest.raises(IndexMismatchError) as err:
        IndexingSession(root, db, config, progress=False).__enter__()
    assert str(err.value) == f"{as_location(db)}: {message}"
    with Lock(as_location(db)):  # the failed entry released the lock
        pass


def test_the_same_settings_are_accepted(folder):
    root, db = folder
    report, _ = run(root, db, IndexConfig(vector_dtype="float32", max_regions=7, nms_iou=0.4))
    assert report.added == 3


def test_another_folder_is_refused(folder, tmp_path):
    _, db = folder
    other = tmp_path / "other"
    draw(other, "a.png")
    with pytest.raises(ResedisError) as err:
        IndexingSession(other, db, IndexConfig(), progress=False).__enter__()
    assert str(err.value) == (f"{as_location(db)}: this index holds images of {(tmp_path / 'images').resolve()}, "
                              f"not {other.resolve()}; use a separate --db for another folder")


def test_a_non_empty_folder_without_a_manifest_is_refused(tmp_path):
    root = tmp_path / "images"
    draw(root, "a.png")
    db = tmp_path / "db"
    db.mkdir()
    (db / "notes.txt").write_text("mine")
    with pytest.raises(ResedisError) as err:
        IndexingSession(root, db, IndexConfig(), progress=False).__enter__()
    assert str(err.value) == (f"{as_location(db)}: exists, is not empty, and has no resedis.json; "
                              "refusing to write an index into it")


def test_locate_excludes_an_index_inside_the_image_folder(tmp_path):
    root = tmp_path / "images"
    draw(root, "a.png")
    draw(root, "db/stray.png")
    found_root, loc, walk = locate(root, root / "db", None)
    assert found_root == root.resolve() and loc.local_path == (root / "db").resolve()
    assert [p.name for p in walk.files] == ["a.png"]
    _, _, walk = locate(root, tmp_path / "elsewhere", None)
    assert sorted(p.name for p in walk.files) == ["a.png", "stray.png"]
    assert (tmp_path / "elsewhere").is_dir()  # created


def test_stored_side_tables_of_an_index_without_crops(folder):
    root, db = folder
    run(root, db, IndexConfig())
    assert stored_side_tables(open_index(db)) == []


class SpecEncoder:
    """A region encoder that only names its model and preprocessing (opening an index checks
    both before anything is encoded); its weights are a folder with a config.json."""

    device = "cpu"
    vector_dim = DIM

    def __init__(self, spec: str, preprocessing: dict, weights: Path | None = None):
        self.spec = spec
        self._pre = preprocessing
        self.model = type("Model", (), {"name_or_path": str(weights) if weights else ""})()

    def preprocessing(self) -> dict:
        return dict(self._pre)


def test_another_model_asked_for_is_refused(folder):
    root, db = folder
    with pytest.raises(IndexMismatchError) as err:
        IndexingSession(root, db, IndexConfig(model="owlv2:/other/model"), progress=False).__enter__()
    assert str(err.value).startswith(
        f"{as_location(db)}: the index was built with model 'owlv2:/not/loaded', but 'owlv2:/other/model' was asked for.")


def test_an_encoder_of_another_model_is_refused(folder):
    root, db = folder
    with pytest.raises(IndexMismatchError) as err:
        IndexingSession(root, db, IndexConfig(), encoder=SpecEncoder("owlv2:/other/model", {}), progress=False).__enter__()
    assert str(err.value).startswith(
        f"{as_location(db)}: the index was built with model 'owlv2:/not/loaded', but 'owlv2:/other/model' was asked for.")


def test_an_encoder_that_preprocesses_otherwise_is_refused(tmp_path):
    root = tmp_path / "images"
    draw(root, "a.png")
    db = tmp_path / "db"
    make_db(db, root, preprocessing={"input_size": [192, 192]})
    same = SpecEncoder(MODEL, {"input_size": [192, 192]})
    with IndexingSession(root, db, IndexConfig(), encoder=same, progress=False) as session:
        session.start(None)
        session.end_encoding()
    other = SpecEncoder(MODEL, {"input_size": [224, 224]})
    with pytest.raises(IndexMismatchError) as err:
        IndexingSession(root, db, IndexConfig(), encoder=other, progress=False).__enter__()
    message = str(err.value)
    assert message.startswith(f"{as_location(db)}: the index was built with model 'owlv2:/not/loaded' preprocessing")
    assert "input_size: index [192, 192], model now [224, 224]" in message


def test_a_new_index_in_a_folder_holding_only_the_lock_records_the_encoder(tmp_path):
    root = tmp_path / "images"
    draw(root, "a.png")
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    (weights / "model.safetensors").write_bytes(b"0123")
    db = tmp_path / "db"  # created by the session, then holding only its .lock when the index is opened
    encoder = SpecEncoder("owlv2:" + str(weights), {"input_size": [32, 32]}, weights)
    with IndexingSession(root, db, IndexConfig(max_regions=5), encoder=encoder, progress=False) as session:
        assert session.region_encoder() is encoder
        session.start(None)
        for task in session.tasks:
            session.add(task, load_image(task.path, None), regions=regions_of(2, 1))
        session.end_encoding()
    manifest = read_manifest(as_location(db))
    assert (manifest.model, manifest.vector_dim, manifest.max_regions) == (f"owlv2:{weights}", DIM, 5)
    assert manifest.preprocessing == {"input_size": [32, 32]}
    assert manifest.weights_fingerprint.startswith("sha256:")
    # what the config left unset takes the library's defaults; the root is the resolved folder
    assert (manifest.vector_dtype, manifest.nms_iou) == (DEFAULT_STORAGE, REGION_NMS_IOU)
    assert (manifest.root, manifest.package_version) == (str(root.resolve()), __version__)
    assert sorted(rows(db, IMAGES)) == ["a.png"]


def test_a_new_index_loads_the_model_it_names(tmp_path):
    root = tmp_path / "images"
    draw(root, "a.png")
    with pytest.raises(ResedisError) as err:
        IndexingSession(root, tmp_path / "db", IndexConfig(model="owlv2:/nonexistent/x"), progress=False).__enter__()
    assert str(err.value).startswith("weights for model owlv2:/nonexistent/x not found.")


def test_locate_does_not_follow_symlinks_unless_asked(tmp_path):
    root = tmp_path / "images"
    draw(root, "a.png")
    outside = draw(tmp_path / "outside", "x.png")
    (root / "link.png").symlink_to(outside)
    _, _, walk = locate(root, tmp_path / "db", None)
    assert [p.name for p in walk.files] == ["a.png"]
    _, _, walk = locate(root, tmp_path / "db", None, follow_symlinks=True)
    assert sorted(p.name for p in walk.files) == ["a.png", "link.png"]


def test_the_region_encoder_is_loaded_on_the_device_asked_and_must_be_owl(monkeypatch):
    calls = []

    def fake_load(spec, device):
        calls.append((spec, device))
        return type("Backend", (), {"kind": "segmenter" if spec.startswith("sam:") else "region+text", "spec": spec})()

    monkeypatch.setattr(session_module, "load_model", fake_load)
    backend = session_module.load_region_encoder("owlv2:/w", "cuda:1")
    assert backend.spec == "owlv2:/w" and calls == [("owlv2:/w", "cuda:1")]
    with pytest.raises(ResedisError) as err:
        session_module.load_region_encoder("sam:/s", "cpu")
    assert str(err.value) == ("model 'sam:/s' is a segmenter backend, not a region+text backend; "
                              "index needs an OWL-family model (owlv2:, owlvit:)")


def test_a_new_index_refuses_a_model_other_than_the_encoder_given(tmp_path):
    root = tmp_path / "images"
    draw(root, "a.png")
    with pytest.raises(IndexMismatchError) as err:
        IndexingSession(root, tmp_path / "db", IndexConfig(model="owlv2:/asked"),
                        encoder=SpecEncoder("owlv2:/given", {}), progress=False).__enter__()
    assert str(err.value) == "config.model 'owlv2:/asked' differs from the given encoder's spec 'owlv2:/given'"


# --- constructor, lock, object-store options --------------------------------------------------------


def test_locate_passes_storage_options_to_an_object_store_and_refuses_them_for_a_folder(tmp_path):
    root = tmp_path / "images"
    draw(root, "a.png")
    with pytest.raises(ResedisError) as err:
        locate(root, tmp_path / "db", {"aws_region": "eu-west-1"})
    assert str(err.value) == (f"{tmp_path / 'db'}: storage options apply to object-store URIs (s3://, gs://, az://), "
                              "not a local path")
    found_root, loc, walk = locate(root, "s3://bucket/prefix", {"aws_region": "eu-west-1"})
    assert (str(loc), loc.is_local, loc.options["aws_region"]) == ("s3://bucket/prefix", False, "eu-west-1")
    assert found_root == root.resolve() and [p.name for p in walk.files] == ["a.png"]  # nothing excluded


def test_a_new_session_holds_its_settings_and_nothing_else_yet(folder):
    root, db = folder
    config = IndexConfig(batch_size=3)
    session = IndexingSession(root, db, config)
    assert session.config is config and session.progress is True
    assert (session.root, session.location, [p.name for p in session.walk.files]) == (
        root.resolve(), as_location(db), ["a.png", "b.png", "c.png"])
    assert (session.writer, session.encode_seconds) == (None, 0.0)
    assert IndexingSession(root, db, config, progress=False).progress is False


def test_a_session_holds_the_writer_lock_until_it_is_left(folder):
    root, db = folder
    with IndexingSession(root, db, IndexConfig(), progress=False) as session:
        with pytest.raises(ResedisError) as err:
            Lock(as_location(db)).__enter__()
        assert str(err.value) == f"{as_location(db)}: another process is writing this index; wait for it to finish"
        session.start(None)
        for task in session.tasks:
            session.add(task, load_image(task.path, None), regions=regions_of(1, 0))
    with Lock(as_location(db)):
        pass


def test_a_session_storage_options_reach_the_location(folder):
    root, db = folder
    with pytest.raises(ResedisError) as err:
        IndexingSession(root, db, IndexConfig(), storage_options={"aws_region": "eu-west-1"})
    assert str(err.value).endswith("storage options apply to object-store URIs (s3://, gs://, az://), not a local path")


def test_leaving_the_block_without_end_encoding_commits_the_last_batch(folder):
    root, db = folder
    with IndexingSession(root, db, IndexConfig(batch_size=8), progress=False) as session:
        session.start(None)
        for task in session.tasks:
            session.add(task, load_image(task.path, None), regions=regions_of(1, 0))
        assert session.writer.pending() == 3  # nothing committed yet
    assert sorted(rows(db, IMAGES)) == ["a.png", "b.png", "sub/c.png"]
    assert counts(session.report) == (3, 0, 0, 0, 0, 3)


def test_an_index_that_lost_a_table_is_rebuilt_by_the_next_run(folder):
    root, db = folder
    run(root, db, IndexConfig())
    shutil.rmtree(db / f"{REGIONS}.lance")  # the index is damaged: a reader refuses it
    report, _ = run(root, db, IndexConfig())
    # a.png and sub/c.png lost their regions and are encoded again; b.png has none to lose
    assert counts(report) == (2, 0, 1, 0, 0, 2)
    assert open_index(db).count(REGIONS) == 3 and sorted(rows(db, IMAGES)) == ["a.png", "b.png", "sub/c.png"]


# --- the clock, the estimate, the finish ------------------------------------------------------------


class Clock:
    """``time`` for the session module: perf_counter() reads ``now``, set by the test."""

    def __init__(self, now: float):
        self.now = now

    def perf_counter(self) -> float:
        return self.now


class RecordingSideTable:
    """A side table that records the writer's calls (and claims ``seconds`` of work)."""

    name = "recorded"

    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds
        self.calls: list[tuple] = []

    def repair(self) -> int:
        self.calls.append(("repair",))
        return 0

    def add(self, ids, images, regions, batch) -> int:
        self.calls.append(("add", list(ids), [im.size for im in images], [len(r) for r in regions], batch))
        return len(ids)

    def delete(self, ids) -> None:
        self.calls.append(("delete", list(ids)))

    def backfill(self, *, progress: bool = True) -> int:
        self.calls.append(("backfill", progress))
        return 0

    def save_stats(self) -> None:
        self.calls.append(("save_stats",))


def test_the_region_index_cost_excludes_side_tables_and_the_report_times_the_run(folder, monkeypatch, caplog):
    root, db = folder
    clock = Clock(100.0)
    monkeypatch.setattr(session_module, "time", clock)
    side = RecordingSideTable(seconds=4.0)
    caplog.set_level("DEBUG", logger="resedis.index.session")
    session = IndexingSession(root, db, IndexConfig(batch_size=8), progress=False)
    with session:
        clock.now = 110.0
        session.start(None, [side])
        for task in session.tasks:
            session.add(task, load_image(task.path, None), regions=regions_of(2, 0))
        clock.now = 125.0
        session.end_encoding()
        clock.now = 130.0
    assert session.encode_seconds == 125.0 - 110.0 - 4.0
    assert session.report.seconds == 130.0 - 100.0
    extra = read_manifest(as_location(db)).extra
    assert (extra["index_timed_images"], extra["index_seconds_per_image"]) == (3, pytest.approx(11.0 / 3))
    assert [r.getMessage() for r in caplog.records if r.levelname == "DEBUG"
            and r.name == "resedis.index.session"] == ["encoded 3 images in 11.0 s"]


def test_side_tables_are_repaired_fed_each_batch_then_backfilled(folder):
    root, db = folder
    run(root, db, IndexConfig())
    draw(root, "a.png", (24, 16), (1, 2, 3))  # changed
    (root / "sub" / "c.png").unlink()  # gone, pruned
    draw(root, "e.png", (25, 16))
    side = RecordingSideTable()
    with IndexingSession(root, db, IndexConfig(batch_size=8, prune=True), progress=True) as session:
        session.start(None, [side])
        assert side.calls == [("repair",)]
        for task in session.tasks:
            session.add(task, load_image(task.path, None), regions=regions_of(2, 0))
        session.end_encoding()
    assert side.calls == [
        ("repair",),
        ("delete", ["a.png"]),  # replaced
        ("add", ["a.png", "e.png"], [(24, 16), (25, 16)], [2, 2], 2),
        ("backfill", True),
        ("save_stats",),
        ("delete", ["sub/c.png"]),  # pruned
    ]
    assert session.writer.side_tables == [side]


def test_the_estimate_knows_the_run_and_is_logged_once(folder, monkeypatch, caplog):
    root, db = folder
    caplog.set_level("INFO", logger="resedis.index.session")
    with IndexingSession(root, db, IndexConfig(batch_size=1, device="cuda:5"), progress=False) as session:
        session.start(None)
        estimate = session.estimate
        assert (estimate.total, estimate.spec, estimate.device, estimate.gflops, estimate.warmup_images) == (
            3, MODEL, "ray workers", None, 1)
        assert estimate.started is not None
        for task in session.tasks:
            session.add(task, load_image(task.path, None), regions=regions_of(1, 0))
        session.end_encoding()
    lines = [r.getMessage() for r in caplog.records if r.name == "resedis.index.session"]
    assert len(lines) == 1 and lines[0].startswith(f"estimate: 3 images with {MODEL} on ray workers: ≈ ")
    assert lines[0].endswith("measured on the first 1 images, warm-up included)")


class DevicelessEncoder(FlakyEncoder):
    device = None


class UnplacedEncoder:
    """A region encoder with no ``device`` attribute at all."""

    def encode_images(self, images, max_regions, nms_iou):
        return [regions_of(1, 0) for _ in images]


@pytest.mark.parametrize("backend, device, expected", [
    (FlakyEncoder(()), None, "cpu"),  # the backend's own device
    (DevicelessEncoder(()), "cuda:5", "cuda:5"),  # else the device asked for
    (DevicelessEncoder(()), None, "?"),
    (UnplacedEncoder(), "cuda:6", "cuda:6"),
    (UnplacedEncoder(), None, "?"),
])
def test_the_estimate_names_the_device_and_the_model_cost(folder, monkeypatch, backend, device, expected):
    root, db = folder
    asked = []
    monkeypatch.setattr(session_module, "backend_gflops", lambda b: asked.append(b) or 12.5)
    with IndexingSession(root, db, IndexConfig(batch_size=16, device=device), progress=False) as session:
        session.start(backend)
        assert (session.estimate.device, session.estimate.gflops, session.estimate.warmup_images) == (expected, 12.5, 4)
        assert asked == [backend]
        session.end_encoding()


def test_the_estimate_of_a_run_with_nothing_to_encode_has_no_cost(folder, monkeypatch):
    root, db = folder
    run(root, db, IndexConfig())
    monkeypatch.setattr(session_module, "backend_gflops", lambda b: pytest.fail("no cost is asked for"))
    with IndexingSession(root, db, IndexConfig(), progress=False) as session:
        session.start(FlakyEncoder(()))
        assert (session.estimate.total, session.estimate.gflops) == (0, None)


def test_the_finish_folds_in_the_ann_index_and_keeps_others_manifest_keys(folder, monkeypatch):
    root, db = folder
    calls = []
    monkeypatch.setattr(session_module, "optimize_ann",
                        lambda table, config, fold_new_rows=True: calls.append((table.name, config.min_rows, fold_new_rows)))
    with IndexingSession(root, db, IndexConfig(ann_min_rows=5), progress=False) as session:
        session.start(None)
        for task in session.tasks:
            session.add(task, load_image(task.path, None), regions=regions_of(1, 0))
        session.end_encoding()
        manifest = read_manifest(as_location(db))
        manifest.calibration = {"threshold": 0.25}  # written meanwhile by calibration
        write_manifest(as_location(db), manifest)
    assert calls == [(REGIONS, 5, False)]
    stored = read_manifest(as_location(db))
    assert stored.calibration == {"threshold": 0.25} and stored.updated != LONG_AGO
    assert session.index.manifest.updated == stored.updated
    assert session.index.manifest.extra["index_timed_images"] == 3


# --- the region encoder the session loads -----------------------------------------------------------


class LoadedEncoder(SpecEncoder):
    kind = "region+text"


def test_the_index_model_is_loaded_on_the_device_asked_and_checked(folder, monkeypatch):
    root, db = folder
    calls = []
    loaded = LoadedEncoder(MODEL, {})
    monkeypatch.setattr(session_module, "load_model", lambda spec, device: calls.append((spec, device)) or loaded)
    with IndexingSession(root, db, IndexConfig(device="cuda:2"), progress=False) as session:
        assert session.region_encoder() is loaded and session.region_encoder() is loaded
        assert calls == [(MODEL, "cuda:2")]  # once
        session.start(None)
        session.end_encoding()


def test_the_index_model_loaded_with_another_dimension_or_preprocessing_is_refused(tmp_path, monkeypatch):
    root = tmp_path / "images"
    draw(root, "a.png")
    db = tmp_path / "db"
    make_db(db, root, preprocessing={"input_size": [192, 192]})
    wide = LoadedEncoder(MODEL, {"input_size": [192, 192]})
    wide.vector_dim = 8
    monkeypatch.setattr(session_module, "load_model", lambda spec, device: wide)
    with IndexingSession(root, db, IndexConfig(), progress=False) as session:
        with pytest.raises(IndexMismatchError) as err:
            session.region_encoder()
        session.start(None)
    assert str(err.value) == f"{as_location(db)}: index vectors have dimension {DIM}, model {MODEL} gives 8"
    other = LoadedEncoder(MODEL, {"input_size": [224, 224]})
    monkeypatch.setattr(session_module, "load_model", lambda spec, device: other)
    with IndexingSession(root, db, IndexConfig(), progress=False) as session:
        with pytest.raises(IndexMismatchError) as err:
            session.region_encoder()
        session.start(None)
    assert str(err.value).startswith(f"{as_location(db)}: the index was built with model '{MODEL}' preprocessing")
    assert "input_size: index [192, 192], model now [224, 224]" in str(err.value)


def weights_dir(path: Path, payload: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(payload)
    return path


def test_the_encoder_given_must_have_the_weights_the_index_was_built_with(tmp_path):
    from resedis.models.fingerprint import weights_fingerprint

    root = tmp_path / "images"
    draw(root, "a.png")
    built = weights_dir(tmp_path / "built", b"0123")
    db = tmp_path / "db"
    make_db(db, root, weights_fingerprint=weights_fingerprint(built))
    same = SpecEncoder(MODEL, {}, built)
    with IndexingSession(root, db, IndexConfig(), encoder=same, progress=False) as session:
        assert session.region_encoder() is same
        session.start(None)
        session.end_encoding()
    retrained = SpecEncoder(MODEL, {}, weights_dir(tmp_path / "retrained", b"4567"))
    with pytest.raises(IndexMismatchError) as err:
        with IndexingSession(root, db, IndexConfig(), encoder=retrained, progress=False) as session:
            session.region_encoder()
    assert str(err.value).startswith(f"{as_location(db)}: the index was built with model '{MODEL}' weights ")


def test_a_new_index_loads_its_model_on_the_device_asked(tmp_path, monkeypatch):
    root = tmp_path / "images"
    draw(root, "a.png")
    calls = []

    def fake_load(spec, device):
        calls.append((spec, device))
        raise ResedisError("no weights here")

    monkeypatch.setattr(session_module, "load_model", fake_load)
    with pytest.raises(ResedisError, match="no weights here"):
        IndexingSession(root, tmp_path / "db", IndexConfig(model="owlv2:/w", device="cuda:3"), progress=False).__enter__()
    with pytest.raises(ResedisError, match="no weights here"):
        IndexingSession(root, tmp_path / "db2", IndexConfig(), progress=False).__enter__()
    assert calls == [("owlv2:/w", "cuda:3"), ("owlv2:google/owlv2-base-patch16-ensemble", None)]


# --- crop side tables (a fake CLIP encoder) ---------------------------------------------------------


class FakeCropEncoder:
    """An image-text encoder whose crop vectors are the boxes themselves."""

    kind = "image-text"
    embed_dim = 4

    def __init__(self, spec: str, weights: Path):
        self.spec = spec
        self.model = type("Model", (), {"name_or_path": str(weights)})()

    def encode_crops(self, image, boxes):
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        return boxes / np.linalg.norm(boxes, axis=1, keepdims=True)


@pytest.fixture()
def crop_model(tmp_path, monkeypatch):
    """-> (spec, calls): load_model of the crops module returns a FakeCropEncoder, recording (spec, device)."""
    from resedis.index import crops as crops_module

    weights = weights_dir(tmp_path / "clip", b"clip")
    spec = f"clip:{weights}"
    calls = []
    monkeypatch.setattr(crops_module, "load_model",
                        lambda s, device=None: calls.append((s, device)) or FakeCropEncoder(s, weights))
    return spec, calls


def test_open_side_tables_opens_the_crops_asked_for_then_those_the_index_has(folder, crop_model):
    from resedis.index.crops import CropConfig, CropWriter
    from resedis.index.session import open_side_tables

    root, db = folder
    spec, calls = crop_model
    run(root, db, IndexConfig())
    index = open_index(db)
    assert open_side_tables(index, IndexConfig()) == [] and stored_side_tables(index) == []
    asked = CropConfig(model=spec, max_crops=3)
    [writer] = open_side_tables(index, IndexConfig(crops=asked), device="cuda:4")
    assert isinstance(writer, CropWriter) and writer.index is index and writer.config is asked
    assert calls == [(spec, "cuda:4")]
    reopened = open_index(db)
    assert stored_side_tables(reopened) == ["crops"]
    [writer] = open_side_tables(reopened, IndexConfig())  # kept in step without being asked
    assert (writer.config.model, writer.config.proposals, writer.config.max_crops) == (spec, "owl", 3)
    assert calls == [(spec, "cuda:4"), (spec, None)]


def test_a_run_with_crops_writes_them_with_each_batch_and_backfills_older_images(folder, crop_model):
    from resedis.index.crops import CROPS, CropConfig
    from resedis.index.session import open_side_tables

    root, db = folder
    spec, _ = crop_model
    run(root, db, IndexConfig())  # a.png, b.png, sub/c.png indexed before the crops existed
    draw(root, "e.png", (25, 16))
    config = IndexConfig(crops=CropConfig(model=spec, max_crops=3))
    with IndexingSession(root, db, config, progress=False) as session:
        session.start(None, open_side_tables(session.index, config))
        for task in session.tasks:
            session.add(task, load_image(task.path, None), regions=regions_of(2, 0))
        session.end_encoding()
    crops = open_index(db).table(CROPS).to_arrow()
    per_image = {}
    for image_id, batch in zip(crops["image_id"].to_pylist(), crops["batch"].to_pylist()):
        per_image[image_id] = (per_image.get(image_id, (0, batch))[0] + 1, batch)
    # regions per image: width % 3 in the first run's batch (a: 2, b: 0, c: 1), 2 for e.png (batch 2)
    assert per_image == {"a.png": (2, 1), "sub/c.png": (1, 1), "e.png": (2, 2)}
    entry = read_manifest(as_location(db)).extra["crops"]
    # timed: e.png in its batch, a.png and sub/c.png backfilled (b.png has no region to crop)
    assert (entry["model"], entry["max_crops"], entry["timed_images"]) == (spec, 3, 3)


def test_refused_entries_replace_forget_and_drop_what_the_index_holds(tmp_path):
    root, outside = tmp_path / "images", tmp_path / "outside"
    draw(root, "a.png", (20, 16))
    draw(root, "b.png", (21, 16))
    draw(outside / "pics", "e.png", (22, 16))
    (root / "ext").symlink_to(outside / "pics", target_is_directory=True)  # a folder leaving the root
    db = tmp_path / "db"
    make_db(db, root)
    report, _ = run(root, db, IndexConfig())
    assert counts(report) == (2, 0, 0, 0, 1, 2) and sorted(rows(db, SKIPPED)) == ["ext"]
    # followed: the folder's skip record is forgotten, its image indexed
    report, _ = run(root, db, IndexConfig(follow_symlinks=True))
    assert counts(report) == (1, 0, 2, 0, 0, 1)
    assert rows(db, SKIPPED) == {} and sorted(rows(db, IMAGES)) == ["a.png", "b.png", "ext/e.png"]
    # not followed again, and a.png, b.png now links leaving the root: all refused; ext/e.png dropped,
    # a.png and b.png replaced by skips
    for name in ("a.png", "b.png"):
        (root / name).unlink()
        (root / name).symlink_to(outside / "pics" / "e.png")
    report, _ = run(root, db, IndexConfig())
    assert counts(report) == (0, 0, 0, 3, 3, 0)
    assert sorted(rows(db, SKIPPED)) == ["a.png", "b.png", "ext"] and rows(db, IMAGES) == {}
    assert open_index(db).count(REGIONS) == 0


def test_rehash_and_retry_skipped_reach_the_plan(folder):
    root, db = folder
    (root / "bad.png").write_bytes(b"not an image")
    run(root, db, IndexConfig())
    with IndexingSession(root, db, IndexConfig(), progress=False) as session:
        assert session.tasks == []  # unchanged files, and a skip whose cause is the file itself
        session.start(None)
    with IndexingSession(root, db, IndexConfig(rehash=True), progress=False) as session:
        assert sorted(t.rel for t in session.tasks) == ["a.png", "b.png", "bad.png", "sub/c.png"]
        session.start(None)
    with IndexingSession(root, db, IndexConfig(retry_skipped=True), progress=False) as session:
        assert [t.rel for t in session.tasks] == ["bad.png"]
        session.start(None)


def test_a_touched_identical_file_updates_its_own_mtime_only(folder):
    root, db = folder
    run(root, db, IndexConfig())
    before = rows(db, IMAGES)
    os.utime(root / "b.png", ns=(10**18, 10**18))
    report, session = run(root, db, IndexConfig())
    assert counts(report) == (0, 0, 3, 0, 0, 0) and [t.rel for t in session.tasks] == ["b.png"]
    after = rows(db, IMAGES)
    assert after["b.png"]["mtime_ns"] == 10**18
    assert {i: r["mtime_ns"] for i, r in after.items() if i != "b.png"} == {
        i: r["mtime_ns"] for i, r in before.items() if i != "b.png"}
    assert {i: r["batch"] for i, r in after.items()} == {i: r["batch"] for i, r in before.items()}


class PreparedEncoder:
    """A region encoder fed the preprocessed tensors ``add`` was given (``encode_preprocessed``)."""

    device = "cpu"

    def __init__(self):
        self.calls = []

    def encode_preprocessed(self, pixel_values, sizes):
        self.calls.append((pixel_values[:, 0, 0, 0].tolist(), list(sizes)))
        return [regions_of(1, 0) for _ in sizes]

    def encode_images(self, images, max_regions, nms_iou):
        raise AssertionError("the preprocessed tensors were not used")


def test_the_preprocessed_input_of_each_image_reaches_the_encoder(folder):
    import torch

    root, db = folder
    backend = PreparedEncoder()
    with IndexingSession(root, db, IndexConfig(batch_size=8), progress=False) as session:
        session.start(backend)
        for k, task in enumerate(session.tasks):
            loaded = load_image(task.path, None)
            session.add(task, loaded, prepared=(torch.full((1, 3, 2, 2), float(k)), [(loaded.height, loaded.width)]))
        session.end_encoding()
    assert backend.calls == [([0.0, 1.0, 2.0], [(16, 20), (16, 21), (16, 22)])]
    assert counts(session.report) == (3, 0, 0, 0, 0, 3)
