"""The fast one-off search: query cache, region sidecar, and their staleness rules.

Reference for every answer: :class:`QueryEngine` (the ``owl`` pipeline, full transformers
backend, LanceDB) over the same index (hits: same images, boxes and presence in the same
order; scores within 1e-5, the light encoder's float32 tolerance, see
tests/models/test_text_light.py; the same threshold choice).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from resedis.cli import main as cli_main
from resedis.errors import IndexMismatchError
from resedis.index import IndexConfig, build_index
from resedis.index.manifest import read_manifest, write_manifest
from resedis.index.sidecar import SIDECAR_NAME, read_sidecar, tables_stamp, write_sidecar
from resedis.models import load_model
from resedis.models.fingerprint import clear_cache
from resedis.models.fingerprint import spec_weights_dir, weights_fingerprint
from resedis.pipelines.base import PipelineConfig
from resedis.pipelines import DEFAULT_PIPELINE
from resedis.query import QueryEngine, QueryRequest
from resedis.search_cache import CACHE_NAME, QueryCache, cache_key
from resedis.search_oneoff import OneOffInfo, refresh_sidecar, search_once

QUERIES = ["red circle", "the largest yellow star", "a small blue square on the left"]


@pytest.fixture(scope="module")
def model_dir(tiny_models, tmp_path_factory) -> Path:
    """A private copy of the tiny OWLv2 checkpoint (tests below retrain it in place)."""
    dst = tmp_path_factory.mktemp("ckpt") / "owlv2"
    shutil.copytree(tiny_models["owlv2"], dst)
    return dst


@pytest.fixture(scope="module")
def images(synth_small, tmp_path_factory) -> Path:
    """8 of the synthetic images in one folder (4 more are added by the staleness test)."""
    out = tmp_path_factory.mktemp("imgs")
    for p in sorted((synth_small / "images").iterdir())[:8]:
        shutil.copy(p, out / p.name)
    return out


@pytest.fixture(scope="module")
def base_index(images, model_dir, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("db") / "index.db"
    build_index(images, db, config=IndexConfig(max_regions=20, batch_size=4), progress=False,
                encoder=load_model(f"owlv2:{model_dir}", "cpu"))
    return db


@pytest.fixture
def db(base_index, tmp_path) -> Path:
    out = tmp_path / "index.db"
    shutil.copytree(base_index, out)
    return out


def reference(db: Path, text: str, top_k: int = 20, threshold: float | None = None):
    answer = QueryEngine(db, PipelineConfig(device="cpu", matrix_dtype="stored")).run(
        QueryRequest(text, pipeline="owl", top_k=top_k, threshold=threshold))
    return answer.result


def oneoff_search(db, text, *, top_k=20, threshold=None, info=None, use_cache=True):
    answer = search_once(db, QueryRequest(text, pipeline="owl", top_k=top_k, threshold=threshold), PipelineConfig(device="cpu"),
                         info=info, use_cache=use_cache)
    assert answer.pipeline == "owl"
    return answer.result


def test_a_plain_query_of_the_default_pipeline_takes_the_fast_path(db):
    """owl+compose (the default) answers an expression without cues exactly as owl does, so
    the one-off path serves it; one with a cue goes through the engine."""
    assert DEFAULT_PIPELINE == "owl+compose"
    info = OneOffInfo()
    fast = search_once(db, QueryRequest("red circle", top_k=10), PipelineConfig(device="cpu"), info=info)
    assert info.path == "fast" and fast.pipeline == DEFAULT_PIPELINE
    assert_same_hits(fast.result, reference(db, "red circle", top_k=10))
    cued = OneOffInfo()
    search_once(db, QueryRequest("the red circle on the left", top_k=10), PipelineConfig(device="cpu"), info=cued)
    assert cued.path == "engine" and "owl+compose" in cued.reason


def assert_same_hits(got, expected):
    assert [(h.image_id, h.box, h.present) for h in got.hits] == [(h.image_id, h.box, h.present) for h in expected.hits]
    np.testing.assert_allclose([h.score for h in got.hits], [h.score for h in expected.hits], rtol=0, atol=1e-5)
    assert len(got.hits) > 0


def test_first_search_reads_lance_then_sidecar_and_cache(db):
    expected = reference(db, QUERIES[0], top_k=10)
    info1 = OneOffInfo()
    first = oneoff_search(db, QUERIES[0], top_k=10, info=info1)
    assert (info1.path, info1.regions, info1.encoder, info1.sidecar_written) == ("fast", "lance", "light", True)
    assert (db / SIDECAR_NAME).is_file() and (db / CACHE_NAME).is_file()
    assert_same_hits(first, expected)
    info2 = OneOffInfo()
    second = oneoff_search(db, QUERIES[0], top_k=10, info=info2)
    assert (info2.regions, info2.encoder) == ("sidecar", "cache")
    assert second.hits == first.hits  # bit-identical: same vector, same regions


def test_cache_hit_identical_to_a_fresh_encoding(db):
    for text in QUERIES:
        oneoff_search(db, text)  # fills the cache
    for text in QUERIES:
        info = OneOffInfo()
        cached = oneoff_search(db, text, info=info)
        assert info.encoder == "cache"
        fresh_info = OneOffInfo()
        fresh = oneoff_search(db, text, use_cache=False, info=fresh_info)
        assert fresh_info.encoder == "light"
        assert cached.hits == fresh.hits
        assert_same_hits(cached, reference(db, text))


def test_cache_invalidated_when_weights_change(db, model_dir, tmp_path):
    """The model is retrained in place and the index rebuilt into the same folder (its
    query_cache.json survives): the cached vector of the old weights must not be used."""
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    manifest = read_manifest(db)
    manifest.model = f"owlv2:{model}"
    manifest.weights_fingerprint = weights_fingerprint(model)
    write_manifest(db, manifest)
    text = QUERIES[1]
    oneoff_search(db, text)
    key_before = json.loads((db / CACHE_NAME).read_text())["key"]
    info = OneOffInfo()
    before = oneoff_search(db, text, info=info)
    assert info.encoder == "cache"
    tensors = load_file(str(model / "model.safetensors"))
    name = "owlv2.text_projection.weight"
    tensors[name] = tensors[name] * 2 + 0.5  # "retrained"
    save_file(tensors, str(model / "model.safetensors"))
    clear_cache()
    manifest.weights_fingerprint = weights_fingerprint(spec_weights_dir(manifest.model))  # "rebuilt" with them
    write_manifest(db, manifest)
    info = OneOffInfo()
    after = oneoff_search(db, text, info=info)
    assert info.encoder == "light"  # recomputed, not served from the stale cache
    assert json.loads((db / CACHE_NAME).read_text())["key"] != key_before
    assert [h.score for h in after.hits] != [h.score for h in before.hits]
    assert_same_hits(after, reference(db, text))


def test_legacy_fingerprint_goes_through_the_engine(db):
    """An index whose fingerprint predates processor files: the engine (which checks the
    preprocessing record) answers, with the same hits."""
    manifest = read_manifest(db)
    manifest.weights_fingerprint = None
    write_manifest(db, manifest)
    info = OneOffInfo()
    result = oneoff_search(db, QUERIES[0], info=info)
    assert info.path == "engine" and "predates" in info.reason
    assert_same_hits(result, reference(db, QUERIES[0]))


@pytest.mark.parametrize("calibration, threshold", [
    (None, None), (None, 0.3), ({"threshold": 0.2}, None), ({"owl": {"threshold": 0.25}}, None),
    ({"owl": {"threshold": 0.25}}, 0.6)])
def test_threshold_choice_equals_the_engine(db, calibration, threshold):
    manifest = read_manifest(db)
    manifest.calibration = calibration
    write_manifest(db, manifest)
    request = QueryRequest(QUERIES[0], top_k=5, threshold=threshold)
    fast = search_once(db, request, PipelineConfig(device="cpu"))
    engine = QueryEngine(db, PipelineConfig(device="cpu")).run(request)
    assert fast.threshold == engine.threshold
    assert [h.present for h in fast.result.hits] == [h.present for h in engine.result.hits]


def test_fingerprinted_index_refuses_changed_weights_before_the_cache(db, model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    manifest = read_manifest(db)
    manifest.model = f"owlv2:{model}"
    write_manifest(db, manifest)
    oneoff_search(db, QUERIES[0])
    cfg = json.loads((model / "config.json").read_text())
    cfg["resedis_note"] = "edited"
    (model / "config.json").write_text(json.dumps(cfg))
    clear_cache()
    with pytest.raises(IndexMismatchError, match="retrained or replaced"):
        oneoff_search(db, QUERIES[0])


def test_query_cache_key_covers_weights_tokenizer_and_encoder(model_dir, tmp_path):
    base = cache_key("sha256:aa", model_dir, "light:v1")
    assert cache_key("sha256:bb", model_dir, "light:v1") != base
    assert cache_key("sha256:aa", model_dir, "transformers:5") != base
    other = tmp_path / "tok"
    shutil.copytree(model_dir, other)
    tok = json.loads((other / "tokenizer_config.json").read_text())
    tok["model_max_length"] = 8
    (other / "tokenizer_config.json").write_text(json.dumps(tok))
    assert cache_key("sha256:aa", other, "light:v1") != base
    cache = QueryCache(tmp_path, base, 3)
    cache.put_many(["a"], np.array([[1.0, 2.0, 3.0]], np.float32))
    assert QueryCache(tmp_path, base, 3).get("a").tolist() == [1.0, 2.0, 3.0]
    assert QueryCache(tmp_path, cache_key("sha256:bb", model_dir, "light:v1"), 3).get("a") is None


def test_sidecar_never_serves_stale_regions(db, images, model_dir, synth_small, tmp_path):
    """Images added after the sidecar was written: it is ignored, never read, then rebuilt."""
    text = QUERIES[2]
    oneoff_search(db, text)
    side = read_sidecar(db)
    assert side is not None and len(side.image_ids) == 8
    more = tmp_path / "imgs"
    shutil.copytree(images, more)
    for p in sorted((synth_small / "images").iterdir())[8:12]:
        shutil.copy(p, more / p.name)
    manifest = read_manifest(db)
    manifest.root = str(more)
    write_manifest(db, manifest)
    build_index(more, db, config=IndexConfig(max_regions=20, batch_size=4), progress=False,
                encoder=load_model(f"owlv2:{model_dir}", "cpu"))
    assert read_sidecar(db) is None  # stale: the tables have new versions
    info = OneOffInfo()
    result = oneoff_search(db, text, top_k=50, info=info)
    assert (info.regions, info.sidecar_written) == ("lance", True)
    assert_same_hits(result, reference(db, text, top_k=50))
    assert len(read_sidecar(db).image_ids) == 12
    info = OneOffInfo()
    again = oneoff_search(db, text, top_k=50, info=info)
    assert info.regions == "sidecar" and again.hits == result.hits


def test_sidecar_with_another_stamp_is_ignored(db):
    assert refresh_sidecar(db) is True
    side = read_sidecar(db)
    assert side is not None
    assert write_sidecar(db, stamp="sha256:not-the-tables", versions=side.versions, image_ids=side.image_ids,
                         paths=side.paths, region_image=side.region_image, boxes=side.boxes,
                         vectors=side.vectors) is None  # the tables do not have that stamp: nothing written
    assert read_sidecar(db) is not None
    # a sidecar whose recorded stamp differs from the tables' is not read
    raw = (db / SIDECAR_NAME).read_bytes()
    stamp = tables_stamp(db).encode()
    (db / SIDECAR_NAME).write_bytes(raw.replace(stamp, b"sha256:" + b"0" * (len(stamp) - 7)))
    assert read_sidecar(db) is None


def test_no_sidecar_for_an_index_with_ann(db):
    assert refresh_sidecar(db) is True
    (db / "regions.lance" / "_indices" / "fake-ann").mkdir(parents=True)
    assert read_sidecar(db) is None
    assert refresh_sidecar(db) is False
    assert not (db / SIDECAR_NAME).exists()


def test_cli_search_same_output_cold_and_warm(db, capsys):
    outputs = []
    for _ in range(2):
        assert cli_main(["search", QUERIES[0], "--db", str(db), "--top-k", "5", "--json"]) == 0
        outputs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert outputs[0] == outputs[1] and len(outputs[0]) == 5
    expected = reference(db, QUERIES[0], top_k=5)
    assert [o["image_id"] for o in outputs[0]] == [h.image_id for h in expected.hits]


@pytest.mark.slow
def test_bench_startup_only_reports_ratios_and_leaves_the_index_alone(base_index, tmp_path, capsys):
    before = sorted(p.name for p in base_index.iterdir())
    out = tmp_path / "startup.json"
    assert cli_main(["bench", "--startup-only", "--startup-db", str(base_index), "--out", str(out),
                     "--workdir", str(tmp_path / "work")]) == 0
    report = json.loads(out.read_text())["startup"]
    med, ratio = report["median_s"], report["ratio_to_import_torch"]
    for key in ("new_query", "repeated_query", "searcher_path"):
        assert ratio[key] == pytest.approx(med[key] / med["import_torch"], rel=1e-2, abs=2e-3)
        assert len(report["runs_s"][key]) == report["repeats"] == 3
    assert report["meets_goal"]["new_query"] == (ratio["new_query"] <= 1.5)
    assert "one-off search vs `import torch`" in capsys.readouterr().out
    assert sorted(p.name for p in base_index.iterdir()) == before  # searched a copy
    work_db = tmp_path / "work" / "startup.db"
    assert (work_db / SIDECAR_NAME).is_file() and (work_db / CACHE_NAME).is_file()


def test_an_index_with_ann_is_ranked_from_its_candidates_as_the_engine_ranks(db, monkeypatch):
    """A real vector index (two partitions, all probed, every region a candidate): the
    one-off search reads LanceDB, ranks each query's candidate rows only (never an (N,)
    logits vector), and answers exactly as the exact path did before the index existed."""
    from resedis.index import open_index
    from resedis.index.ann import AnnConfig, build_ann_index
    from resedis.index.ann_search import AnnSearch

    expected = {text: reference(db, text, top_k=10) for text in QUERIES}
    build_ann_index(open_index(db).regions_table, AnnConfig(min_rows=1, num_partitions=2))
    calls = []
    real = AnnSearch.candidates
    monkeypatch.setattr(AnnSearch, "candidates", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    monkeypatch.setattr(AnnSearch, "logits", lambda *a, **kw: pytest.fail("a dense (N, Q) logits array was built"))
    for text in QUERIES:
        info = OneOffInfo()
        got = oneoff_search(db, text, top_k=10, info=info, use_cache=False)
        assert info.path == "fast" and info.regions == "lance" and not info.sidecar_written
        assert_same_hits(got, expected[text])
    assert len(calls) == len(QUERIES)
