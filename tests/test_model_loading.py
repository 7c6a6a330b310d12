"""One checkpoint loader for every model kind and for fine-tuning (same processor, pinned
the same way), the checkpoint metadata file (new name, old name still read), and the
index manifest's preprocessing record checked when an index is searched or extended."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from resedis.errors import IndexMismatchError, ResedisError
from resedis.index import IndexConfig, build_index, open_index
from resedis.index.store import MANIFEST_NAME
from resedis.models import load_model
from resedis.models import fingerprint as fp
from resedis.models.base import KIND_PROTOCOLS, PREPROCESS_SPLIT, require_kind
from resedis.models.checkpoint import (
    CHECKPOINT_META, LEGACY_CHECKPOINT_META, checkpoint_meta_path, load_checkpoint, read_checkpoint_meta,
)
from resedis.search import Searcher

FAMILIES = ("owlv2", "owlvit", "clip", "siglip", "gdino", "sam")


@pytest.fixture(scope="module")
def loaded(tiny_models) -> dict:
    return {fam: load_model(f"{fam}:{tiny_models[fam]}", "cpu") for fam in FAMILIES}


def test_every_backend_declares_its_kind_and_implements_its_protocols(loaded):
    for fam, backend in loaded.items():
        protocols = KIND_PROTOCOLS[backend.kind]
        assert all(isinstance(backend, p) for p in protocols), (fam, backend.kind)
        require_kind(backend, backend.kind, "test")
        assert isinstance(backend.preprocessing(), dict) and backend.preprocessing()
        json.dumps(backend.preprocessing())  # serialisable: it goes into the index manifest
        assert (PREPROCESS_SPLIT in backend.capabilities) == (fam in ("owlv2", "owlvit"))
    with pytest.raises(ResedisError, match="not a region\\+text backend; index needs"):
        require_kind(loaded["clip"], "region+text", "index needs an OWL-family model")


def test_every_processor_is_the_pil_one(loaded):
    """Pinned: the same pixels whether or not torchvision is installed."""
    for fam, backend in loaded.items():
        name = type(backend.processor.image_processor).__name__
        assert name.endswith("Pil"), (fam, name)


@pytest.mark.parametrize("family", ["owlv2", "owlvit"])
def test_finetune_loads_the_same_model_and_processor_as_inference(family, tiny_models, loaded):
    from resedis.finetune import load_detector

    for source in (f"{family}:{tiny_models[family]}", tiny_models[family], str(tiny_models[family])):
        model, processor = load_detector(source)
        backend = loaded[family]
        assert type(processor.image_processor) is type(backend.processor.image_processor)
        image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (37, 61, 3), dtype=np.uint8))
        a = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        b = backend.preprocess([image])[0]
        assert a.shape == b.shape and float((a - b).abs().max()) == 0.0
        sa, sb = model.state_dict(), backend.model.state_dict()
        assert sa.keys() == sb.keys() and all(bool((sa[k] == sb[k]).all()) for k in sa)


def test_loader_refuses_another_model_type_naming_the_prefix(tiny_models):
    with pytest.raises(ResedisError) as err:
        load_checkpoint(tiny_models["clip"], {"owlv2": "Owlv2ForObjectDetection"}, spec="owlv2:x")
    assert "'clip' checkpoint" in str(err.value) and f"clip:{tiny_models['clip']}" in str(err.value)
    with pytest.raises(ResedisError, match="not 'sam'"):
        load_model(f"sam:{tiny_models['owlv2']}", "cpu")
    with pytest.raises(ResedisError, match="trains OWL detectors"):
        from resedis.finetune import load_detector

        load_detector(f"clip:{tiny_models['clip']}")


# ---------------------------------------------------------------------------- checkpoint metadata
def test_checkpoint_metadata_new_name_and_old_name(tmp_path, tiny_models):
    from resedis.thresholds import checkpoint_threshold

    old = Path(shutil.copytree(tiny_models["owlv2"], tmp_path / "old"))
    assert checkpoint_meta_path(old) is None and read_checkpoint_meta(old) is None
    assert checkpoint_threshold(f"owlv2:{old}") is None
    (old / LEGACY_CHECKPOINT_META).write_text(json.dumps({"presence_threshold": 0.25}))
    assert checkpoint_meta_path(old) == old / "resedis.json"
    assert checkpoint_threshold(f"owlv2:{old}") == (0.25, old / "resedis.json")
    (old / CHECKPOINT_META).write_text(json.dumps({"presence_threshold": 0.5}))  # the new name wins
    assert CHECKPOINT_META == "resedis_checkpoint.json"
    assert read_checkpoint_meta(old) == {"presence_threshold": 0.5}
    assert checkpoint_threshold(f"owlv2:{old}") == (0.5, old / CHECKPOINT_META)
    (old / CHECKPOINT_META).write_text("[1]")
    with pytest.raises(ResedisError, match="must be a JSON object"):
        read_checkpoint_meta(old)


def test_bundled_demo_model_metadata_has_its_own_name():
    from resedis.demo import demo_threshold
    from resedis.models.spec import demo_model_dir

    assert (demo_model_dir() / CHECKPOINT_META).is_file()
    assert not (demo_model_dir() / LEGACY_CHECKPOINT_META).exists()
    assert demo_threshold() == json.loads((demo_model_dir() / CHECKPOINT_META).read_text())["presence_threshold"]


def test_finetune_writes_the_new_name(tmp_path, tiny_models):
    from resedis.finetune import checkpoint as ckpt

    ckpt.write_meta(tmp_path, {"presence_threshold": 0.3})
    assert (tmp_path / "resedis_checkpoint.json").is_file() and not (tmp_path / "resedis.json").exists()
    assert ckpt.read_meta(tmp_path) == {"presence_threshold": 0.3}


# ---------------------------------------------------------------------------- preprocessing check
def _draw(folder: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.new("RGB", (64, 48), tuple(int(v) for v in rng.integers(0, 255, 3)))
        ImageDraw.Draw(img).ellipse([10, 8, 40, 30], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        img.save(folder / f"img{seed}_{i}.png")


@pytest.fixture()
def built(tiny_models, tmp_path):
    ckpt = Path(shutil.copytree(tiny_models["owlv2"], tmp_path / "ckpt"))
    spec = f"owlv2:{ckpt}"
    images, db = tmp_path / "images", tmp_path / "db"
    _draw(images, 2, seed=1)
    build_index(images, db, config=IndexConfig(model=spec, max_regions=4, device="cpu"), progress=False)
    return ckpt, spec, images, db


def _edit_manifest(db: Path, change) -> None:
    data = json.loads((db / MANIFEST_NAME).read_text())
    change(data)
    (db / MANIFEST_NAME).write_text(json.dumps(data))


def test_preprocessing_is_recorded_and_checked(built):
    ckpt, spec, images, db = built
    encoder = load_model(spec, "cpu")
    assert open_index(db).manifest.preprocessing == json.loads(json.dumps(encoder.preprocessing()))
    # keys one side lacks (added by a later version) and informational keys do not matter
    _edit_manifest(db, lambda d: d["preprocessing"].update(future_key=1, dtype="float16", image_processor="Other"))
    _edit_manifest(db, lambda d: d["preprocessing"].pop("max_text_tokens"))
    assert len(Searcher(db, encoder=encoder).search("a circle", top_k=2).hits) > 0
    # a setting that decides the pixels does
    _edit_manifest(db, lambda d: d["preprocessing"].update(image_mean=[0.5, 0.5, 0.5]))
    for attempt in (lambda: Searcher(db, encoder=encoder), lambda: Searcher(db, device="cpu")):
        with pytest.raises(IndexMismatchError) as err:
            attempt()
        msg = str(err.value)
        assert "image_mean" in msg and "--db NEW_DB" in msg and "preprocessing" in msg
    _draw(images, 1, seed=2)
    with pytest.raises(IndexMismatchError, match="image_mean"):
        build_index(images, db, config=IndexConfig(device="cpu"), progress=False, encoder=encoder)
    with pytest.raises(IndexMismatchError, match="image_mean"):
        build_index(images, db, config=IndexConfig(device="cpu"), progress=False)  # loads the model itself
    assert open_index(db).stats()["images"] == 2  # nothing written


def test_old_index_with_a_v1_fingerprint_opens_and_its_processor_is_still_checked(built, caplog):
    """An index recorded before the fingerprint covered processor files keeps working; a
    changed processor config is then caught by the preprocessing record."""
    ckpt, spec, images, db = built
    legacy = fp.weights_fingerprint(ckpt, fp.LEGACY_VERSION)
    assert legacy != open_index(db).manifest.weights_fingerprint
    _edit_manifest(db, lambda d: d.update(weights_fingerprint=legacy))
    assert len(Searcher(db, device="cpu").search("a circle", top_k=2).hits) > 0
    _draw(images, 1, seed=3)
    assert build_index(images, db, config=IndexConfig(device="cpu"), progress=False).added == 1

    config = json.loads((ckpt / "processor_config.json").read_text())
    config["image_processor"]["image_std"] = [0.2, 0.2, 0.2]
    (ckpt / "processor_config.json").write_text(json.dumps(config))
    assert fp.fingerprint_matches(legacy, ckpt)[0]  # v1 cannot see it ...
    with pytest.raises(IndexMismatchError, match="image_std"):  # ... the preprocessing record does
        Searcher(db, device="cpu")


def test_a_changed_processor_changes_the_fingerprint_of_a_new_index(built):
    ckpt, spec, images, db = built
    config = json.loads((ckpt / "processor_config.json").read_text())
    config["image_processor"]["image_std"] = [0.2, 0.2, 0.2]
    (ckpt / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(IndexMismatchError, match="retrained or replaced"):
        Searcher(db, device="cpu")


def test_manifest_without_preprocessing_opens_and_warns_once(built, caplog):
    ckpt, spec, images, db = built
    _edit_manifest(db, lambda d: d.update(preprocessing={}))
    with caplog.at_level(logging.WARNING, logger="resedis.index.manifest"):
        a = Searcher(db, device="cpu")
        Searcher(db, encoder=a.encoder)
    warnings = [r for r in caplog.records if "records no preprocessing" in r.getMessage()]
    assert len(warnings) == 1 and str(db) in warnings[0].getMessage()
