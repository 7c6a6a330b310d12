"""The model spec ``demo``: resolves offline to the bundled checkpoint, is recorded as
``demo`` in an index manifest (so the index survives the package moving), and is
accepted wherever a spec is (index, search, finetune's loader, ``resedis models --where``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import resedis.models.spec
from resedis.cli import main as cli_main
from resedis.models.spec import demo_model_dir
from resedis.errors import IndexMismatchError, ResedisError, WeightsNotFoundError
from resedis.index.manifest import check_model, read_manifest
from resedis.models.spec import canonical_spec
from resedis.models import ModelSpec, list_aliases, load_model, parse_spec, resolve_weights


def test_parse_and_canonical():
    spec = parse_spec("demo")
    assert (spec.family, Path(spec.source)) == ("owlv2", demo_model_dir())
    assert str(spec) == "demo" and str(parse_spec("  DEMO ")) == "demo"
    assert list_aliases() == {"demo": f"owlv2:{demo_model_dir()}"}
    # every spelling of the bundled directory is one model: "demo"
    assert canonical_spec("demo") == "demo"
    assert canonical_spec(f"owlv2:{demo_model_dir()}") == "demo"
    assert canonical_spec(f"owlv2:{demo_model_dir()}/") == "demo"
    # ... but not the same directory read as another family, nor another directory
    assert canonical_spec(f"owlvit:{demo_model_dir()}") == f"owlvit:{demo_model_dir()}"
    assert parse_spec("owlv2:google/owlv2-base-patch16-ensemble") == ModelSpec("owlv2", "google/owlv2-base-patch16-ensemble")
    with pytest.raises(ResedisError, match="takes no ':source'"):
        parse_spec("demo:/some/dir")
    with pytest.raises(ResedisError, match="or demo"):
        parse_spec("nosuchfamily")


def test_resolves_offline_and_loads(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_weights("demo") == demo_model_dir()
    owl = load_model("demo", "cpu")
    assert owl.spec == "demo" and owl.family == "owlv2"
    q = owl.encode_texts(["the small red circle on the left"])
    assert q.shape == (1, owl.vector_dim) and np.isfinite(q).all()
    # finetune starts from `--model demo` too
    from resedis.finetune.run import load_detector

    model, _ = load_detector("demo")
    assert type(model).__name__ == "Owlv2ForObjectDetection"
    # `resedis models --where demo`
    assert cli_main(["models", "--where", "demo"]) == 0


def test_missing_bundle_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(resedis.models.spec, "demo_model_dir", lambda: tmp_path / "gone")
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights("demo")
    msg = str(err.value)
    assert "weights for model demo not found" in msg and str(tmp_path / "gone") in msg and "reinstall resedis" in msg


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory, synth_small):
    from resedis.index import IndexConfig, build_index

    base = tmp_path_factory.mktemp("demo_spec")
    images = base / "images"
    images.mkdir()
    for src in sorted((synth_small / "images").glob("*.jpg"))[:4]:
        shutil.copy(src, images / src.name)
    db = base / "db"
    # given as the explicit path: still recorded as "demo"
    build_index(images, db, config=IndexConfig(model=f"owlv2:{demo_model_dir()}", device="cpu", max_regions=20),
                progress=False)
    return images, db


def test_index_records_demo_and_search_accepts_it(demo_index, tiny_models, capsys):
    from resedis.search import Searcher

    images, db = demo_index
    manifest = read_manifest(db)
    assert manifest.model == "demo"
    assert json.loads((db / "resedis.json").read_text())["model"] == "demo"
    for requested in (None, "demo", f"owlv2:{demo_model_dir()}"):
        check_model(manifest, requested, db)  # no error
    with pytest.raises(IndexMismatchError, match="built with model 'demo'"):
        check_model(manifest, f"owlv2:{tiny_models['owlv2']}", db)
    hits = Searcher(db, device="cpu", model="demo").search("the red circle", top_k=5).hits
    assert len(hits) == 5 and all(h.path and Path(h.path).parent == images for h in hits)
    # the CLI: --model demo accepted, another model refused
    assert cli_main(["search", "the red circle", "--db", str(db), "--model", "demo", "--device", "cpu"]) == 0
    assert "hits for 'the red circle'" in capsys.readouterr().out
    assert cli_main(["search", "red", "--db", str(db), "--model", f"owlv2:{tiny_models['owlv2']}"]) != 0
    assert "the index was built with model 'demo'" in capsys.readouterr().err
    # adding images later with `--model demo` is the same model (incremental, not a mismatch)
    assert cli_main(["index", str(images), "--db", str(db), "--model", "demo", "--device", "cpu", "--quiet"]) == 0


def test_index_survives_the_package_moving(demo_index, tmp_path, monkeypatch):
    """The manifest says "demo", not a path: after the bundle moves (reinstall elsewhere),
    the index still loads its model from the new place and gives the same scores."""
    from resedis.search import Searcher

    _, db = demo_index
    before = Searcher(db, device="cpu").search("the red circle", top_k=5)
    moved = tmp_path / "site-packages" / "resedis" / "assets" / "demo_model"
    shutil.copytree(demo_model_dir(), moved)
    real = demo_model_dir()
    monkeypatch.setattr(resedis.models.spec, "demo_model_dir", lambda: moved)
    assert resolve_weights("demo") == moved != real
    searcher = Searcher(db, device="cpu")
    assert Path(parse_spec(searcher.index.manifest.model).source) == moved
    after = searcher.search("the red circle", top_k=5)
    assert [(h.image_id, h.box) for h in after.hits] == [(h.image_id, h.box) for h in before.hits]
    assert [h.score for h in after.hits] == pytest.approx([h.score for h in before.hits], abs=1e-6)


def test_models_command_lists_the_demo_alias(capsys):
    assert cli_main(["models"]) == 0
    assert f"alias demo: owlv2:{demo_model_dir()}" in capsys.readouterr().out
    assert cli_main(["models", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    demo = [r for r in records if r.get("alias") == "demo"]
    assert len(demo) == 1 and demo[0]["spec"] == f"owlv2:{demo_model_dir()}" and demo[0]["family"] == "owlv2"
    assert not demo[0]["default"]
