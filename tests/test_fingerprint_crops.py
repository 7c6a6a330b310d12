"""Crop-encoder weights fingerprint: an index with clip-crops records which crop-encoder
weights its crop vectors came from, and refuses to search them or add crops with other
weights behind the same ``clip:`` spec; older indexes (no fingerprint) open with one warning."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from test_fingerprint import _bump_one_weight, _draw_images

from resedis.errors import IndexMismatchError
from resedis.index import IndexConfig, build_index
from resedis.models.spec import canonical_spec
from resedis.index.manifest import MANIFEST_NAME
from resedis.models import fingerprint as fp
from resedis.pipelines import PipelineConfig
from resedis.query import QueryEngine, QueryRequest
from resedis.index.crops import CropConfig, add_crops


def _crop_rows(db: Path) -> int:
    import lancedb

    return lancedb.connect(str(db)).open_table("crops").count_rows()


def _entry(db: Path) -> dict:
    return json.loads((db / MANIFEST_NAME).read_text())["crops"]


@pytest.fixture()
def built(tiny_models, tmp_path):
    """(crop spec, crop checkpoint copy, images dir, db): 3 images, OWL regions + clip crops."""
    clip = Path(shutil.copytree(tiny_models["clip"], tmp_path / "clip_ckpt"))
    spec = f"clip:{clip}"
    images = tmp_path / "images"
    _draw_images(images, 3, seed=2)
    db = tmp_path / "index.db"
    config = IndexConfig(model=f"owlv2:{tiny_models['owlv2']}", max_regions=4, device="cpu",
                         crops=CropConfig(model=spec, max_crops=3))
    build_index(images, db, config=config, progress=False)
    return spec, clip, images, db


def _search(db: Path):
    return [QueryEngine(db, PipelineConfig(top_k=3, device="cpu")).run(QueryRequest("a red circle", pipeline="clip-crops")).result]


def test_crop_fingerprint_recorded_and_other_weights_refused(built, tiny_models):
    spec, clip, images, db = built
    entry = _entry(db)
    assert entry["model"] == canonical_spec(spec)
    assert entry["weights_fingerprint"] == fp.weights_fingerprint(clip)
    assert len(_search(db)[0].hits) > 0
    rows = _crop_rows(db)
    assert rows > 0

    stored = fp.short_fingerprint(entry["weights_fingerprint"])
    _bump_one_weight(clip)
    now = fp.short_fingerprint(fp.weights_fingerprint(clip))
    assert now != stored
    with pytest.raises(IndexMismatchError) as search_err:
        _search(db)
    msg = str(search_err.value)
    assert canonical_spec(spec) in msg and stored in msg and now in msg and "--db NEW_DB" in msg
    assert "--crop-model" in msg
    # adding crops (backfill of an existing index, or new images in an incremental run) refuses too
    with pytest.raises(IndexMismatchError, match=stored):
        add_crops(db, CropConfig(model=spec, max_crops=3), device="cpu", progress=False)
    _draw_images(images, 1, seed=3)
    config = IndexConfig(model=f"owlv2:{tiny_models['owlv2']}", max_regions=4, device="cpu")
    with pytest.raises(IndexMismatchError, match=now):
        build_index(images, db, config=config, progress=False)
    assert _crop_rows(db) == rows and _entry(db)["weights_fingerprint"] == entry["weights_fingerprint"]


def test_unknown_crop_fingerprint_opens_with_one_warning(built, tiny_models, caplog):
    spec, clip, images, db = built
    manifest = json.loads((db / MANIFEST_NAME).read_text())
    del manifest["crops"]["weights_fingerprint"]  # as written before crop fingerprints existed
    (db / MANIFEST_NAME).write_text(json.dumps(manifest))
    _bump_one_weight(clip)  # would be refused if a fingerprint were recorded
    rows = _crop_rows(db)
    with caplog.at_level(logging.WARNING, logger="resedis.index.crops"):
        assert len(_search(db)[0].hits) > 0
        assert len(_search(db)[0].hits) > 0
        _draw_images(images, 1, seed=4)  # more crops: allowed, and the index stays "unknown"
        build_index(images, db, config=IndexConfig(model=f"owlv2:{tiny_models['owlv2']}", max_regions=4, device="cpu"),
                    progress=False)
    warnings = [r for r in caplog.records if "no weights fingerprint for its crop model" in r.getMessage()]
    assert len(warnings) == 1 and canonical_spec(spec) in warnings[0].getMessage()
    assert "weights_fingerprint" not in _entry(db)
    assert _crop_rows(db) > rows


def test_stats_shows_the_crop_model_and_its_fingerprint(built, capsys):
    from resedis.cli import main

    spec, clip, _images, db = built
    assert main(["stats", "--db", str(db)]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("crop model")]
    assert line == [f"crop model     {canonical_spec(spec)} (weights {fp.weights_fingerprint(clip)})"]
    assert main(["stats", "--db", str(db), "--json"]) == 0
    crops = json.loads(capsys.readouterr().out)["crops"]
    assert crops["model"] == canonical_spec(spec) and crops["weights_fingerprint"] == fp.weights_fingerprint(clip)
