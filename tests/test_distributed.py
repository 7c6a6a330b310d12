"""Ray indexing (resedis.distributed) writes the same index as the single-process writer."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

import resedis.index.session as session_module  # noqa: E402
from resedis.distributed import index_with_ray  # noqa: E402
from resedis.index import IndexConfig, build_index, open_index  # noqa: E402
from resedis.index.commit import compact  # noqa: E402
from resedis.index.store import IMAGES, REGIONS, column_matrix  # noqa: E402

# Same model, same batch size, float32 storage: the two indexes must agree to float
# round-off (different batch composition changes BLAS blocking, not the maths).
ATOL = 1e-4


@pytest.fixture(scope="module")
def ray_cluster():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _by_region(index):
    images = index.read(IMAGES, ["image_id", "sha256", "width", "height", "n_regions", "size_bytes"]).to_pylist()
    regions = index.read(REGIONS, ["image_id", "region", "box", "objectness", "vector"])
    m = index.manifest
    vectors = column_matrix(regions["vector"], m.vector_dim, np.float32)
    boxes = column_matrix(regions["box"], 4, np.float32)
    keys = list(zip(regions["image_id"].to_pylist(), regions["region"].to_pylist()))
    rows = {k: (boxes[i], float(regions["objectness"][i].as_py()), vectors[i]) for i, k in enumerate(keys)}
    return {r["image_id"]: r for r in images}, rows


@pytest.mark.slow
def test_ray_index_equals_single_process_index(ray_cluster, synth_small, tiny_models, tmp_path, monkeypatch):
    images_dir = tmp_path / "images"
    shutil.copytree(synth_small / "images", images_dir)
    (images_dir / "broken.jpg").write_bytes(b"not an image")  # recorded as a skip both ways
    config = IndexConfig(model=f"owlv2:{tiny_models['owlv2']}", batch_size=4, vector_dtype="float32", max_regions=20)
    # Both drive one IndexingSession: the same periodic compaction (here every 2nd batch).
    compactions: list[str] = []
    monkeypatch.setattr(session_module, "COMPACT_EVERY", 2)
    monkeypatch.setattr(session_module, "compact", lambda index: compactions.append(str(index.path)) or compact(index))

    single = build_index(images_dir, tmp_path / "single.db", config=config, progress=False)
    report = index_with_ray(images_dir, tmp_path / "ray.db", config, num_workers=2, progress=False)
    assert report.added == single.added == 24
    # 6 batches of 4 images: after batches 1, 3 and 5 (batch ids 2, 4, 6 next), and once at the end
    assert compactions.count(str(tmp_path / "single.db")) == compactions.count(str(tmp_path / "ray.db")) == 4
    assert [s.reason for s in report.skipped] == [s.reason for s in single.skipped] and len(report.skipped) == 1

    a, b = open_index(tmp_path / "single.db"), open_index(tmp_path / "ray.db")
    assert a.manifest.model == b.manifest.model and a.manifest.vector_dim == b.manifest.vector_dim
    assert a.manifest.preprocessing == b.manifest.preprocessing
    images_a, regions_a = _by_region(a)
    images_b, regions_b = _by_region(b)
    assert images_a.keys() == images_b.keys() and len(images_a) == 24
    for image_id, row in images_a.items():
        other = images_b[image_id]
        for key in ("sha256", "width", "height", "n_regions", "size_bytes"):
            assert row[key] == other[key], (image_id, key)
    assert regions_a.keys() == regions_b.keys() and len(regions_a) == sum(r["n_regions"] for r in images_a.values())
    for key, (box, obj, vec) in regions_a.items():
        box_b, obj_b, vec_b = regions_b[key]
        np.testing.assert_allclose(box_b, box, atol=ATOL, rtol=0)
        assert abs(obj_b - obj) <= ATOL
        np.testing.assert_allclose(vec_b, vec, atol=ATOL, rtol=0)
    assert b.stats()["orphan_regions"] == 0
    # the same cost record: the running mean of indexing seconds per image, over 24 images
    for index in (a, b):
        assert index.manifest.extra["index_timed_images"] == 24
        assert index.manifest.extra["index_seconds_per_image"] > 0
    assert set(a.manifest.extra) == set(b.manifest.extra)

    # Incremental on Ray: nothing to do the second time; a new file is added alone.
    again = index_with_ray(images_dir, tmp_path / "ray.db", config, num_workers=2, progress=False)
    assert again.added == 0 and again.unchanged == 24
    shutil.copy(images_dir / sorted(images_a)[0], images_dir / "copy.jpg")
    more = index_with_ray(images_dir, tmp_path / "ray.db", config, num_workers=2, progress=False)
    assert more.added == 1 and open_index(tmp_path / "ray.db").stats()["images"] == 25


def test_bad_arguments(tmp_path, tiny_models):
    from resedis.errors import ResedisError

    with pytest.raises(ResedisError, match="num_workers"):
        index_with_ray(tmp_path, tmp_path / "db", IndexConfig(), num_workers=0)
    with pytest.raises(ResedisError, match="no such image folder"):
        index_with_ray(tmp_path / "missing", tmp_path / "db", IndexConfig(model=f"owlv2:{tiny_models['owlv2']}"))
    from resedis.index.crops import CropConfig

    with pytest.raises(ResedisError, match="not supported with --ray.*index without --ray"):
        index_with_ray(tmp_path, tmp_path / "db", IndexConfig(crops=CropConfig(model="clip:some/model")))


def test_index_with_crops_is_refused_before_ray_starts(tmp_path, encoder, monkeypatch):
    """An index that keeps a side table (crops) cannot be updated on Ray: refused, with the fix,
    before any Ray work and without touching the index."""
    from PIL import Image

    from resedis.errors import ResedisError
    from resedis.index.manifest import read_manifest, write_manifest

    images_dir = tmp_path / "images"
    images_dir.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(images_dir / "a.png")
    build_index(images_dir, tmp_path / "db", config=IndexConfig(batch_size=2), encoder=encoder, progress=False)
    m = read_manifest(tmp_path / "db")
    m.extra["crops"] = {"model": "clip:some/model", "embed_dim": 8, "proposals": "owl", "max_crops": 5}
    write_manifest(tmp_path / "db", m)
    Image.new("RGB", (40, 30), (30, 200, 30)).save(images_dir / "b.png")
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    with pytest.raises(ResedisError, match="stores crops.*update it without --ray"):
        index_with_ray(images_dir, tmp_path / "db", IndexConfig(), num_workers=1, progress=False)
    assert open_index(tmp_path / "db").stats()["images"] == 1


@pytest.mark.slow
def test_cli_index_with_ray(ray_cluster, synth_small, tiny_models, tmp_path):
    from resedis.cli import main

    db = tmp_path / "db"
    args = ["index", str(synth_small / "images"), "--db", str(db), "--model", f"owlv2:{tiny_models['owlv2']}"]
    assert main(args + ["--ray", "--ray-workers", "2", "--batch-size", "8", "--quiet", "--ann-min-rows", "1"]) == 0
    index = open_index(db)
    assert index.stats()["images"] == 24
    from resedis.index.ann import has_ann_index

    assert has_ann_index(index.regions_table)  # the ANN rule applies to Ray builds too
