"""The region store and writer: contents, incremental updates, errors, crash safety.

Uses tiny random OWLv2 checkpoints (``tiny_models`` fixture): real forward passes, so
the stored vectors are the model's, compared against ``encode_images`` directly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw

from resedis.errors import IndexMismatchError, ResedisError
from resedis.index import IndexConfig, build_index, open_index
from resedis.index.manifest import MANIFEST_NAME, SCHEMA_VERSION
from resedis.index.store import REGIONS, column_matrix, regions_schema
from resedis.io.images import load_image
from resedis.search import Searcher
from resedis.search_corpus import load_corpus

BOMB_LIMIT = 20_000  # max_pixels used with the planted over-large image (200 x 200 = 40000 px)


def draw_corpus(folder: Path, n: int, seed: int, *, prefix: str = "img") -> list[Path]:
    """n small JPEG/PNG scenes of varied sizes with a few coloured shapes each."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = int(rng.integers(48, 130)), int(rng.integers(40, 120))
        img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w - 12)), int(rng.integers(0, h - 12))
            x1, y1 = x0 + int(rng.integers(8, w - x0 + 1)), y0 + int(rng.integers(8, h - y0 + 1))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        sub = folder / ("nested" if i % 3 == 2 else "")
        sub.mkdir(exist_ok=True)
        path = sub / f"{prefix}{i:03d}.{'png' if i % 2 else 'jpg'}"
        img.save(path)
        paths.append(path)
    return paths


def plant_bad_files(folder: Path) -> dict[str, str]:
    """Bad files -> the word their skip reason must contain."""
    good = folder / "good_for_truncation.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(good, quality=95)
    data = good.read_bytes()
    good.unlink()
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.png").write_text("definitely not a PNG")
    Image.new("RGB", (200, 200), (0, 90, 0)).save(folder / "bomb.png")  # over BOMB_LIMIT
    return {"zero.jpg": "zero-byte", "truncated.jpg": "truncated", "text.png": "not an image", "bomb.png": "too large"}


def region_rows(index) -> dict:
    return index.read(REGIONS).to_pydict()


def check_consistent(index) -> None:
    """Every images row has exactly n_regions regions with its (image_id, batch); no others."""
    images = index.read("images", ["image_id", "batch", "n_regions"]).to_pylist()
    regions = index.read(REGIONS, ["image_id", "batch", "region"]).to_pylist()
    counts: dict[tuple, list[int]] = {}
    for r in regions:
        counts.setdefault((r["image_id"], r["batch"]), []).append(r["region"])
    ids = [row["image_id"] for row in images]
    assert len(ids) == len(set(ids)), "an image is indexed twice"
    for row in images:
        got = sorted(counts.pop((row["image_id"], row["batch"]), []))
        assert got == list(range(row["n_regions"])), row["image_id"]
    assert not counts, f"orphan regions: {sorted(counts)}"


def test_build_writes_model_outputs_manifest_and_skips(tmp_path, encoder, owlv2_spec):
    images = tmp_path / "images"
    paths = draw_corpus(images, 5, seed=1)
    bad = plant_bad_files(images)
    db = tmp_path / "db"
    config = IndexConfig(model=owlv2_spec, batch_size=2, max_regions=7, vector_dtype="float32", max_pixels=BOMB_LIMIT, workers=2)
    report = build_index(images, db, config=config, progress=False, encoder=encoder)

    assert (report.added, report.updated, report.unchanged, report.removed) == (5, 0, 0, 0)
    reasons = {Path(s.source).name: s.reason for s in report.skipped}
    assert set(reasons) == set(bad)
    for name, word in bad.items():
        assert word in reasons[name], (name, reasons[name])

    index = open_index(db)
    stats = index.stats()
    assert stats["images"] == 5 and stats["skipped"] == 4 and stats["model"] == owlv2_spec
    assert stats["schema_version"] == SCHEMA_VERSION and stats["bytes"] > 0
    assert {s.source for s in index.skipped()} == {str(images / n) for n in bad}

    manifest = json.loads((db / MANIFEST_NAME).read_text())
    assert manifest["model"] == owlv2_spec
    assert manifest["vector_dim"] == encoder.vector_dim and manifest["vector_dtype"] == "float32"
    assert manifest["preprocessing"] == encoder.preprocessing()
    assert manifest["root"] == str(images.resolve()) and manifest["package_version"]

    check_consistent(index)
    rows = {r["image_id"]: r for r in index.read("images").to_pylist()}
    regions = index.read(REGIONS)
    region_ids = regions["image_id"].to_pylist()
    boxes = column_matrix(regions["box"], 4, np.float32)
    vectors = column_matrix(regions["vector"], encoder.vector_dim, np.float32)
    objectness = regions["objectness"].to_numpy()
    assert stats["regions"] == len(region_ids) == sum(r["n_regions"] for r in rows.values())
    for path in paths:
        rel = path.relative_to(images).as_posix()
        loaded = load_image(path)
        row = rows[rel]
        assert (row["width"], row["height"], row["sha256"]) == (loaded.width, loaded.height, loaded.sha256)
        assert row["path"] == str(path.resolve())
        expected = encoder.encode_images([loaded.image], max_regions=7, nms_iou=0.5)[0]
        sel = np.array([i == rel for i in region_ids])
        order = np.argsort(regions["region"].to_numpy()[sel])
        assert row["n_regions"] == len(expected) <= 7
        np.testing.assert_allclose(boxes[sel][order], expected.boxes, atol=1e-4)
        np.testing.assert_allclose(objectness[sel][order], expected.objectness, rtol=1e-5, atol=1e-5)
        # float32 storage: the encoder's vectors, bit for bit up to batching noise.
        np.testing.assert_allclose(vectors[sel][order], expected.vectors, rtol=1e-5, atol=1e-5)
        assert len(row["image_vector"]) == len(expected.image_vector)


def test_incremental_update_prune_and_retry(tmp_path, encoder):
    images = tmp_path / "images"
    paths = draw_corpus(images, 4, seed=2)
    quoted = images / "it's ünïcode.jpg"  # quotes and non-ASCII in ids go through SQL deletes
    Image.new("RGB", (30, 30), (7, 7, 7)).save(quoted)
    plant_bad_files(images)
    db = tmp_path / "db"
    config = IndexConfig(batch_size=3, max_regions=4, max_pixels=BOMB_LIMIT)
    first = build_index(images, db, config=config, progress=False, encoder=encoder)
    assert first.added == 5 and len(first.skipped) == 4
    index = open_index(db)
    version = index.version()

    again = build_index(images, db, config=config, progress=False, encoder=encoder)
    assert (again.added, again.updated, again.unchanged, again.encoded, again.new_skipped) == (0, 0, 5, 0, 0)
    assert len(again.skipped) == 4  # known bad files stay reported without being retried
    assert index.version() == version  # nothing written

    # Changed content -> re-encoded, old rows replaced; same content touched -> kept.
    changed, touched = quoted, paths[1]
    Image.new("RGB", (77, 55), (9, 200, 9)).save(changed)
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    # A bad file fixed, a new file added, a good file deleted.
    Image.new("RGB", (50, 50), (1, 1, 250)).save(images / "text.png")
    Image.new("RGB", (60, 40), (250, 1, 1)).save(images / "new.jpg")
    paths[2].unlink()
    report = build_index(images, db, config=config, progress=False, encoder=encoder)
    assert (report.added, report.updated, report.unchanged, report.removed) == (2, 1, 3, 0)
    assert report.encoded == 3
    assert "text.png" not in {Path(s.source).name for s in report.skipped}
    index = open_index(db)
    check_consistent(index)
    rows = {r["image_id"]: r for r in index.read("images").to_pylist()}
    rel = lambda p: p.relative_to(images).as_posix()  # noqa: E731
    assert rows[rel(changed)]["width"] == 77 and rows[rel(changed)]["sha256"] == load_image(changed).sha256
    assert rows[rel(touched)]["mtime_ns"] == touched.stat().st_mtime_ns  # recorded, so no rehash next time
    assert rel(paths[2]) in rows  # without --prune a deleted file stays

    (images / "zero.jpg").unlink()
    pruned = build_index(images, db, config=IndexConfig(prune=True, max_pixels=BOMB_LIMIT), progress=False, encoder=encoder)
    assert pruned.removed == 1 and pruned.unchanged == 6
    index = open_index(db)
    assert rel(paths[2]) not in set(index.read("images", ["image_id"])["image_id"].to_pylist())
    assert "zero.jpg" not in {Path(s.source).name for s in index.skipped()}
    assert index.stats()["images"] == 6
    check_consistent(index)


def test_refusals(tmp_path, encoder, owlv2_spec, tiny_models):
    images = tmp_path / "images"
    draw_corpus(images, 2, seed=3)
    db = tmp_path / "db"
    build_index(images, db, config=IndexConfig(max_regions=3), progress=False, encoder=encoder)
    other = f"owlvit:{tiny_models['owlvit']}"

    with pytest.raises(IndexMismatchError) as err:
        build_index(images, db, config=IndexConfig(model=other), progress=False)
    assert owlv2_spec in str(err.value) and other in str(err.value)
    with pytest.raises(IndexMismatchError):
        open_index(db, model=other)
    with pytest.raises(IndexMismatchError):
        build_index(images, db, config=IndexConfig(vector_dtype="float32"), progress=False, encoder=encoder)
    with pytest.raises(IndexMismatchError, match="max_regions=3"):
        build_index(images, db, config=IndexConfig(max_regions=50), progress=False, encoder=encoder)
    other_root = tmp_path / "other"
    draw_corpus(other_root, 1, seed=4)
    with pytest.raises(ResedisError, match="separate --db"):
        build_index(other_root, db, progress=False, encoder=encoder)

    # A second writer while the lock is held is refused.
    import fcntl

    with open(db / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        with pytest.raises(ResedisError, match="another process"):
            build_index(images, db, progress=False, encoder=encoder)

    manifest = json.loads((db / MANIFEST_NAME).read_text())
    manifest["schema_version"] = SCHEMA_VERSION + 1
    (db / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ResedisError, match="newer resedis"):
        open_index(db)
    (db / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ResedisError, match="not valid JSON"):
        open_index(db)

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "file.txt").write_text("x")
    with pytest.raises(ResedisError, match="not a resedis index"):
        open_index(junk)
    with pytest.raises(ResedisError, match="refusing"):
        build_index(images, junk, progress=False, encoder=encoder)


def test_orphans_are_ignored_then_repaired(tmp_path, encoder):
    images = tmp_path / "images"
    draw_corpus(images, 3, seed=5)
    db = tmp_path / "db"
    build_index(images, db, config=IndexConfig(max_regions=4), progress=False, encoder=encoder)
    index = open_index(db)
    good = index.stats()["regions"]
    real_id = index.read("images", ["image_id"])["image_id"][0].as_py()
    dim = index.manifest.vector_dim
    # What a batch killed between "add regions" and "add images" leaves: regions of a new
    # batch id, for an already-indexed image (an update) and for a never-indexed one.
    fake = pa.table(
        {
            "image_id": [real_id, "ghost.jpg"],
            "region": pa.array([0, 0], pa.int32()),
            "box": pa.FixedSizeListArray.from_arrays(pa.array([0, 0, 5, 5, 1, 1, 6, 6], pa.float32()), 4),
            "objectness": pa.array([9.0, 9.0], pa.float32()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.full(2 * dim, 50.0), pa.float16()), dim),
            "batch": pa.array([999, 999], pa.int64()),
        },
        schema=regions_schema(dim, "float16"),
    )
    index.regions_table.add(fake)
    stats = index.stats()
    assert stats["orphan_regions"] == 2 and stats["regions"] == good
    corpus = load_corpus(index)
    assert len(corpus) == good  # searches never see them
    searcher = Searcher(index, encoder=encoder)
    hits = searcher.search("red circle", top_k=50).hits
    # every committed region with visible area (the tiny model's boxes in padding never come back)
    assert "ghost.jpg" not in {h.image_id for h in hits} and len(hits) == int((~corpus.hidden).sum())

    build_index(images, db, progress=False, encoder=encoder)  # resumes: repairs first
    assert index.regions_table.count_rows() == good
    check_consistent(index)


def test_lost_regions_table_is_reported_and_reencoded(tmp_path, encoder):
    """Regions lost outside resedis (regions.lance deleted): stats says so, a rerun re-encodes."""
    import shutil

    images = tmp_path / "images"
    draw_corpus(images, 4, seed=8)
    db = tmp_path / "db"
    build_index(images, db, config=IndexConfig(max_regions=3), progress=False, encoder=encoder)
    good = open_index(db).stats()
    assert good["incomplete_images"] == 0 and good["regions"] > 0
    shutil.rmtree(db / f"{REGIONS}.lance")

    damaged = open_index(db).stats()
    assert damaged["regions"] == 0 and damaged["incomplete_images"] == 4
    report = build_index(images, db, progress=False, encoder=encoder)
    assert report.unchanged == 0 and report.added + report.updated == 4
    index = open_index(db)
    assert index.stats()["regions"] == good["regions"] and index.stats()["incomplete_images"] == 0
    check_consistent(index)


def test_sigkill_mid_indexing_then_resume(tmp_path, owlv2_spec, encoder):
    """Kill -9 a real `python -m resedis index` twice mid-run; the rerun completes exactly."""
    images = tmp_path / "images"
    paths = draw_corpus(images, 40, seed=6)
    bad = plant_bad_files(images)
    db = tmp_path / "db"
    cmd = [
        sys.executable, "-m", "resedis", "index", str(images), "--db", str(db), "--model", owlv2_spec,
        "--batch-size", "2", "--max-regions", "5", "--device", "cpu", "--quiet", "--max-pixels", str(BOMB_LIMIT),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    kills = 0
    for target in (4, 14):  # kill once early, once later
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        index, count, deadline = None, 0, time.time() + 120
        try:
            while time.time() < deadline and proc.poll() is None:
                if index is None and (db / MANIFEST_NAME).exists():
                    try:
                        index = open_index(db)
                    except ResedisError:
                        pass
                if index is not None:
                    count = index.images_table.count_rows()
                    if count >= target:
                        break
                time.sleep(0.02)
            assert proc.poll() is None, f"indexer ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert target <= count < len(paths), f"killed at {count} indexed images, wanted {target}..{len(paths) - 1}"
        # Right after the kill, what is committed is consistent for readers: images rows
        # each have their regions; at most the in-flight batch's regions are orphans.
        index = open_index(db)
        orphans = index.orphan_keys()
        assert len(orphans) <= 2 and len({b for _, b in orphans}) <= 1
        assert len(load_corpus(index)) == index.stats()["regions"]

    assert kills == 2
    report = build_index(images, db, config=IndexConfig(batch_size=2, max_pixels=BOMB_LIMIT), progress=False, encoder=encoder)
    index = open_index(db)
    check_consistent(index)  # no duplicate, no orphan, regions == sum(n_regions)
    ids = sorted(index.read("images", ["image_id"])["image_id"].to_pylist())
    assert ids == sorted(p.relative_to(images).as_posix() for p in paths)
    assert report.added > 0 and report.updated == 0 and report.added + report.unchanged == len(paths)
    stats = index.stats()
    assert stats["images"] == 40 and stats["orphan_regions"] == 0
    reasons = {Path(s.source).name: s.reason for s in index.skipped()}
    assert set(reasons) == set(bad)
    for name, word in bad.items():
        assert word in reasons[name]


class _BreaksOnWidth13:
    """Test double: the real tiny encoder, except that it raises on 13-pixel-wide images
    (stands in for an image that crashes a model); no preprocess split, so the writer
    goes through encode_images."""

    capabilities = frozenset()  # no PREPROCESS_SPLIT: the writer calls encode_images

    def __init__(self, inner, always: bool = False):
        self.inner, self.always = inner, always
        self.spec, self.vector_dim, self.kind, self.model = inner.spec, inner.vector_dim, inner.kind, inner.model

    def preprocessing(self):
        return self.inner.preprocessing()

    def encode_images(self, images, max_regions=100, nms_iou=0.5):
        if self.always or any(im.width == 13 for im in images):
            raise RuntimeError("simulated model failure")
        return self.inner.encode_images(images, max_regions, nms_iou)


def test_image_that_breaks_the_model_is_skipped_not_fatal(tmp_path, encoder):
    images = tmp_path / "images"
    draw_corpus(images, 4, seed=8)
    Image.new("RGB", (13, 40), (5, 5, 5)).save(images / "img001b.png")  # lands inside a batch
    db = tmp_path / "db"
    report = build_index(images, db, config=IndexConfig(batch_size=3, max_regions=3), progress=False,
                         encoder=_BreaksOnWidth13(encoder))
    assert (report.added, report.new_skipped) == (4, 1)
    reasons = {Path(s.source).name: s.reason for s in report.skipped}
    assert list(reasons) == ["img001b.png"] and "model failed" in reasons["img001b.png"]
    index = open_index(db)
    assert index.stats()["images"] == 4
    check_consistent(index)

    with pytest.raises(ResedisError, match="3 images in a row"):
        build_index(images, tmp_path / "db2", config=IndexConfig(batch_size=2), progress=False,
                    encoder=_BreaksOnWidth13(encoder, always=True))
