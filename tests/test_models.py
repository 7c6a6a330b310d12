"""Model registry, weight resolver, and the OWL / CLIP / SigLIP backends on tiny checkpoints.

Exactness tolerance (float32, CPU): |our logit - model forward logit| <= 1e-4 + 1e-5·|logit|;
boxes within 1e-3 px. The float16-storage test states its own bound below.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resedis.boxes import box_iou, nms
from resedis.errors import ResedisError, WeightsNotFoundError
from resedis.models import DEFAULT_MODEL, MODELS, ModelSpec, canonical_spec, list_models, load_model, parse_spec
from resedis.models.base import ImageTextEncoder, RegionEncoder, TextEncoder
from resedis.models.owl import select_regions
from resedis.models.resolver import resolve_device, resolve_weights

QUERIES = ["a red circle", "blue square", "the smallest green triangle on the left", "cat"]
ATOL, RTOL = 1e-4, 1e-5


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    # wide, tall, square, and a non-RGB mode: aspect ratios matter for the box mapping
    sizes = [(50, 80), (90, 40), (64, 64)]
    imgs = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    imgs.append(Image.fromarray(rng.integers(0, 255, (30, 70), dtype=np.uint8), mode="L"))
    return imgs


@pytest.fixture(scope="module")
def owl(tiny_models):
    return {fam: load_model(f"{fam}:{tiny_models[fam]}", device="cpu") for fam in ("owlv2", "owlvit")}


@pytest.fixture(scope="module")
def dual(tiny_models):
    return {fam: load_model(f"{fam}:{tiny_models[fam]}", device="cpu") for fam in ("clip", "siglip")}


# ---------------------------------------------------------------------------- registry / specs
def test_registry_lists_families_and_default():
    names = [e.name for e in list_models()]
    assert names[:4] == ["owlv2", "owlvit", "clip", "siglip"]
    assert parse_spec(DEFAULT_MODEL) == ModelSpec("owlv2", "google/owlv2-base-patch16-ensemble")
    assert MODELS["owlv2"].kind == "region+text" and MODELS["clip"].kind == "image-text"


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("owlv2:google/owlv2-base-patch16-ensemble", ("owlv2", "google/owlv2-base-patch16-ensemble")),
        ("owlvit", ("owlvit", "google/owlvit-base-patch32")),
        ("OWLv2:/data/m:odd", ("owlv2", "/data/m:odd")),
        ("  clip:./local  ", ("clip", "./local")),
        ("siglip:", ("siglip", "google/siglip-base-patch16-224")),
        ("owlv2:hf-hub:org/name", ("owlv2", "org/name")),
        ("owlv2:local-dir:org/name", ("owlv2", "org/name", None, True)),
        ("owlv2:~/models/x", ("owlv2", "~/models/x")),
        ("owlv2:../x", ("owlv2", "../x")),
    ],
)
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == ModelSpec(*expected)


@pytest.mark.parametrize(
    "spec, local",
    [("owlv2:org/name", False), ("owlv2:hf-hub:org/name", False), ("owlv2:local-dir:org/name", True),
     ("owlv2:./org/name", True), ("owlv2:/abs/dir", True), ("owlv2:~/dir", True), ("owlv2:plain", False)],
)
def test_hub_or_local_is_decided_by_how_the_spec_is_written(spec, local, tmp_path, monkeypatch):
    """Never by what exists in the working directory: a folder named like the hub id changes nothing."""
    monkeypatch.chdir(tmp_path)
    before = parse_spec(spec)
    (tmp_path / "org" / "name").mkdir(parents=True)
    (tmp_path / "plain").mkdir()
    after = parse_spec(spec)
    assert before == after and after.local is local
    # str() re-parses to the same spec; the canonical form of a local dir is absolute
    assert parse_spec(str(after)) == after
    canon = canonical_spec(spec)
    assert parse_spec(canon).local is local
    if local:
        assert canon == f"owlv2:{Path(after.source).expanduser().resolve()}"
    else:
        assert canon == f"owlv2:{after.source}"


def test_old_manifest_specs_keep_their_canonical_form(tmp_path):
    """Specs recorded by earlier versions (absolute paths, hub ids, demo) are canonical already."""
    for recorded in (f"owlv2:{tmp_path}", "owlv2:google/owlv2-base-patch16-ensemble", "clip:openai/clip-vit-base-patch32",
                     "demo", "owlvit:/data/m:odd"):
        assert canonical_spec(recorded) == recorded


def test_hub_id_shadowed_by_a_local_folder_says_how_to_write_it(tiny_models, tmp_path, monkeypatch, caplog):
    import shutil

    from huggingface_hub import constants

    cache = tmp_path / "cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = tmp_path / "work"
    shutil.copytree(tiny_models["owlv2"], work / "org" / "tiny")
    monkeypatch.chdir(work)
    # the hub cache holds org/tiny-owl: the spec means it, whatever folder exists here (with a warning)
    snap = _fake_cache(cache, "org/tiny-owl")
    shutil.copytree(tiny_models["owlv2"], work / "org" / "tiny-owl")
    with caplog.at_level(logging.WARNING, logger="resedis.models.resolver"):
        assert resolve_weights("owlv2:org/tiny-owl").resolve() == snap.resolve()
    assert any("owlv2:./org/tiny-owl" in r.getMessage() for r in caplog.records)
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights("owlv2:org/tiny")
    msg = str(err.value)
    assert "owlv2:./org/tiny" in msg and "owlv2:local-dir:org/tiny" in msg and "hub id" in msg
    # written as the message says, it is the folder
    assert resolve_weights("owlv2:./org/tiny") == (work / "org" / "tiny").resolve()
    assert resolve_weights("owlv2:local-dir:org/tiny") == (work / "org" / "tiny").resolve()
    with pytest.raises(ResedisError, match="nothing after 'local-dir:'"):
        parse_spec("owlv2:local-dir:")


@pytest.mark.parametrize(
    "spec, fragment",
    [("", "empty"), ("yolo:x", "unknown model family 'yolo'"), ("google/owlv2", "did you mean owlv2:google/owlv2")],
)
def test_parse_spec_errors(spec, fragment):
    with pytest.raises(ResedisError, match=fragment):
        parse_spec(spec)


def test_import_is_light_and_offline():
    code = (
        "import sys, resedis.models, resedis.cli.models, resedis.models.resolver;"
        "bad=[m for m in ('torch','transformers','huggingface_hub') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- resolver
def test_resolve_local_dir(tiny_models, tmp_path):
    assert resolve_weights(f"owlv2:{tiny_models['owlv2']}") == tiny_models["owlv2"].resolve()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights(f"owlv2:{empty}")
    msg = str(err.value)
    assert f"owlv2:{empty}" in msg and "no config.json" in msg and "--model owlv2:/path/to/dir" in msg
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_weights(f"clip:{tmp_path / 'missing'}")


def _fake_cache(root: Path, repo: str) -> Path:
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("a" * 40)
    return snap


def test_resolve_hf_cache_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    snap = _fake_cache(tmp_path, "org/tiny-owl")
    assert resolve_weights("owlv2:org/tiny-owl").resolve() == snap.resolve()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights("owlv2:org/absent-model")
    msg = str(err.value)
    expected = ("owlv2:org/absent-model", str(tmp_path), "HF_HUB_OFFLINE", "HF_HOME", "--model owlv2:/path/to/dir")
    for fragment in expected:
        assert fragment in msg


def test_resolver_downloads_only_when_allowed(tmp_path, monkeypatch):
    import huggingface_hub

    calls: list[dict] = []
    target = tmp_path / "dl"
    target.mkdir()
    (target / "config.json").write_text("{}")

    def fake_snapshot(repo_id, **kw):
        calls.append(kw)
        if kw.get("local_files_only"):
            raise FileNotFoundError("not cached")
        return str(target)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError):
        resolve_weights("owlv2:org/x")
    assert [c.get("local_files_only") for c in calls] == [True]  # cache lookup only, no download
    calls.clear()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert resolve_weights("owlv2:org/x") == target
    assert [bool(c.get("local_files_only")) for c in calls] == [True, False]  # cache first, then hub
    calls.clear()
    with pytest.raises(WeightsNotFoundError, match="not tried"):
        resolve_weights("owlv2:org/x", allow_download=False)
    assert len(calls) == 1


def test_resolve_device():
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ResedisError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ResedisError, match="CUDA is not available"):
            resolve_device("cuda")


def test_family_mismatch_is_refused(tiny_models):
    with pytest.raises(ResedisError, match="not 'owlvit'"):
        load_model(f"owlvit:{tiny_models['owlv2']}", device="cpu")
    with pytest.raises(ResedisError, match="unknown dtype"):
        load_model(f"owlv2:{tiny_models['owlv2']}", device="cpu", dtype="int8")


def test_cli_models_lists_families(capsys):
    from resedis.cli import main

    assert main(["models", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["family"] for r in rows} >= {"owlv2", "owlvit", "clip", "siglip"}
    assert [r["default_spec"] for r in rows if r["default"]] == [DEFAULT_MODEL]
    assert main(["models"]) == 0
    assert "google/owlvit-base-patch32" in capsys.readouterr().out


# ---------------------------------------------------------------------------- OWL exactness
@pytest.mark.parametrize("family", ["owlv2", "owlvit"])
def test_owl_vectors_equal_model_forward(owl, family):
    """[s·ê, s·b]·[q̂, 1] == Owl*ForObjectDetection's own logits, boxes == its boxes in original px."""
    model = owl[family]
    assert isinstance(model, RegionEncoder) and isinstance(model, TextEncoder)
    images = _images()
    u = model.encode_texts(QUERIES)
    assert u.shape == (len(QUERIES), model.vector_dim)
    patches = model.encode_patches(images)
    for image, regions in zip(images, patches):
        boxes, logits, objectness = model.detector_logits(image, QUERIES)
        assert np.isfinite(logits).all() and logits.min() > -1e3  # query mask trap would give dtype min
        assert np.ptp(logits, axis=1).max() > 1e-3  # different queries give different logits
        np.testing.assert_allclose(regions.vectors @ u.T, logits, atol=ATOL, rtol=RTOL)
        sig = 1 / (1 + np.exp(-(regions.vectors @ u.T)))
        np.testing.assert_allclose(sig, 1 / (1 + np.exp(-logits)), atol=1e-5)
        np.testing.assert_allclose(regions.boxes, boxes, atol=1e-3)
        np.testing.assert_allclose(regions.objectness, objectness, atol=ATOL, rtol=RTOL)
        assert (regions.boxes[:, 2] <= image.width).all() and (regions.boxes[:, 3] <= image.height).all()
        assert (regions.boxes[:, :2] >= 0).all()
        assert regions.image_vector is not None
        assert abs(np.linalg.norm(regions.image_vector) - 1) < 1e-5


@pytest.mark.parametrize("family", ["owlv2", "owlvit"])
def test_owl_kept_regions_are_the_detectors_boxes(owl, family):
    """encode_images keeps <= N boxes by objectness after NMS; each kept box's score is
    sigmoid of the forward logit of the SAME patch (matched by index)."""
    model = owl[family]
    images = _images()
    u = model.encode_texts(QUERIES)
    kept = model.encode_images(images, max_regions=5, nms_iou=0.5)
    for image, regions in zip(images, kept):
        boxes, logits, objectness = model.detector_logits(image, QUERIES)
        # slow reference: boxes of no visible area dropped, full greedy NMS over the rest, then the first 5
        seen = np.flatnonzero((boxes[:, 2] - boxes[:, 0] > 0.01) & (boxes[:, 3] - boxes[:, 1] > 0.01))
        ref_idx = seen[nms(boxes[seen], objectness[seen], 0.5)][:5]
        assert len(regions) == len(ref_idx) <= 5
        np.testing.assert_allclose(regions.boxes, boxes[ref_idx], atol=1e-3)
        np.testing.assert_allclose(regions.vectors @ u.T, logits[ref_idx], atol=ATOL, rtol=RTOL)
        assert (np.diff(regions.objectness) <= 0).all()
        iou = box_iou(regions.boxes, regions.boxes)
        assert (iou[~np.eye(len(regions), dtype=bool)] <= 0.5 + 1e-6).all()
    everything = model.encode_images(images[:1], max_regions=10_000, nms_iou=1.0)[0]
    patches = model.encode_patches(images[:1])[0].boxes
    assert len(everything) == int(((patches[:, 2] - patches[:, 0] > 0.01) & (patches[:, 3] - patches[:, 1] > 0.01)).sum())


def test_select_regions_matches_full_nms():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 200, (3000, 2))
    wh = rng.uniform(5, 60, (3000, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.normal(size=3000).astype(np.float32)
    for n, thr in [(1, 0.5), (50, 0.3), (400, 0.1), (3000, 0.7)]:
        np.testing.assert_array_equal(select_regions(boxes, scores, n, thr), nms(boxes, scores, thr)[:n])
    with pytest.raises(ValueError):
        select_regions(boxes, scores, 0, 0.5)
    with pytest.raises(ValueError):
        select_regions(boxes, scores, 5, 0.0)


def test_owlv2_boxes_follow_bottom_right_padding(owl):
    """Independent check of the OWLv2 convention: padding the image ourselves with black at the
    bottom/right to a square gives the same patches, and the same boxes in pixel units."""
    model = owl["owlv2"]
    image = _images()[0]  # 80 x 50 (W x H)
    side = max(image.size)
    square = Image.new("RGB", (side, side))
    square.paste(image, (0, 0))
    a, b = model.encode_patches([image, square])
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
    clipped = b.boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, image.width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, image.height)
    np.testing.assert_allclose(a.boxes, clipped, atol=1e-3)


def test_owlvit_boxes_stretch_with_image_size(owl):
    """OWL-ViT stretches to a square: the same content at 2x width gives boxes with 2x x-coords."""
    model = owl["owlvit"]
    # rows vary, columns are constant: any horizontal resampling leaves the pixels unchanged,
    # so both images reach the model as the same 64 x 64 input
    rows = np.random.default_rng(1).integers(0, 255, (64, 1, 3), dtype=np.uint8)
    base = Image.fromarray(np.repeat(rows, 64, axis=1))
    wide = Image.fromarray(np.repeat(rows, 128, axis=1))
    a, b = model.encode_patches([base, wide])
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
    np.testing.assert_allclose(b.boxes[:, 0::2], 2 * a.boxes[:, 0::2], atol=2e-3)
    np.testing.assert_allclose(b.boxes[:, 1::2], a.boxes[:, 1::2], atol=1e-3)


def test_owl_batching_is_independent(owl):
    model = owl["owlv2"]
    images = _images()
    batched = model.encode_images(images, max_regions=8)
    for image, regions in zip(images, batched):
        single = model.encode_images([image], max_regions=8)[0]
        np.testing.assert_allclose(single.vectors, regions.vectors, atol=1e-5)
        np.testing.assert_allclose(single.boxes, regions.boxes, atol=1e-3)
    texts = model.encode_texts(QUERIES)
    for i, q in enumerate(QUERIES):
        np.testing.assert_allclose(model.encode_texts([q])[0], texts[i], atol=1e-6)
    assert model.encode_texts([]).shape == (0, model.vector_dim)
    assert model.encode_images([]) == []


def test_owl_text_vectors_and_truncation(owl, caplog):
    model = owl["owlv2"]
    u = model.encode_texts(QUERIES)
    np.testing.assert_array_equal(u[:, -1], 1.0)
    np.testing.assert_allclose(np.linalg.norm(u[:, :-1], axis=1), 1.0, atol=1e-5)
    long = " ".join(["red circle"] * 20)
    assert len(model.processor.tokenizer(long)["input_ids"]) > model.max_text_tokens
    with caplog.at_level(logging.WARNING, logger="resedis.models.owl"):
        v = model.encode_texts([long, long + " blue square triangle", "red circle"])
    assert any("truncated" in r.message for r in caplog.records)
    np.testing.assert_allclose(v[0], v[1], atol=1e-6)  # the extra tail is cut off
    assert np.abs(v[0] - v[2]).max() > 1e-4
    v = v[:1]
    # and the detector itself, fed the long query, gives the same logits as our truncated vector
    image = _images()[2]
    regions = model.encode_patches([image])[0]
    _, logits, _ = model.detector_logits(image, [long])
    np.testing.assert_allclose(regions.vectors @ v.T, logits, atol=ATOL, rtol=RTOL)


def test_owl_overlong_query_warns_once_in_our_words(tiny_models, caplog):
    """Truncation is ours (with our warning); transformers' "will result in indexing
    errors" warning about the untruncated length count must not reach the user."""
    model = load_model(f"owlv2:{tiny_models['owlv2']}", device="cpu")  # fresh tokenizer: it warns once
    hf_records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = hf_records.append  # transformers' logger does not propagate to caplog
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    try:
        with caplog.at_level(logging.WARNING, logger="resedis.models.owl"):
            model.encode_texts([" ".join(["red circle"] * 20)])
    finally:
        hf_logger.removeHandler(handler)
    assert any("truncated" in r.message for r in caplog.records)
    assert not [r for r in hf_records if "sequence length" in r.getMessage()]


def test_owl_preprocessing_is_json(owl):
    for model in owl.values():
        pre = model.preprocessing()
        assert json.loads(json.dumps(pre)) == pre
    assert owl["owlv2"].preprocessing()["box_mapping"] == "pad-bottom-right-to-square"
    assert owl["owlvit"].preprocessing()["box_mapping"] == "stretch-to-square"


def test_float16_storage_keeps_topk(owl):
    """Storing vectors as float16 changes each logit by at most 1e-3·|v| (|q̂| = 1, float16 has
    ~4.9e-4 relative precision per entry), so top-k agrees up to pairs closer than that."""
    model = owl["owlv2"]
    vectors = np.concatenate([r.vectors for r in model.encode_patches(_images())])
    u = model.encode_texts(QUERIES)
    exact = vectors @ u.T
    half = vectors.astype(np.float16).astype(np.float32) @ u.T
    bound = 1e-3 * np.linalg.norm(vectors, axis=1, keepdims=True)
    assert (np.abs(half - exact) <= bound).all()
    k = 10
    for q in range(len(QUERIES)):
        top32 = np.argsort(-exact[:, q], kind="stable")[:k]
        top16 = np.argsort(-half[:, q], kind="stable")[:k]
        assert len(set(top32) & set(top16)) >= k - 1
        # any disagreement is a near-tie: the k-th float32 logit is within 2·bound of the swapped one
        for i in set(top16) - set(top32):
            assert exact[top32[-1], q] - exact[i, q] <= 2 * bound.max()


# ---------------------------------------------------------------------------- CLIP / SigLIP
@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_dual_encoder_matches_model_forward(dual, family):
    model = dual[family]
    assert isinstance(model, ImageTextEncoder)
    images = _images()
    img = model.encode_images(images)
    txt = model.encode_texts(QUERIES)
    assert img.shape == (len(images), model.embed_dim) and txt.shape == (len(QUERIES), model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-5)
    scale, bias = model.logit_params()
    ref = model.model_logits(images, QUERIES)
    np.testing.assert_allclose(scale * img @ txt.T + bias, ref, atol=ATOL, rtol=RTOL)
    assert np.ptp(ref, axis=1).max() > 1e-4  # queries differ
    if family == "siglip":
        assert bias == pytest.approx(-10.0)
    else:
        assert bias == 0.0
    # batching does not change an embedding
    np.testing.assert_allclose(model.encode_images(images[1:2])[0], img[1], atol=1e-5)
    np.testing.assert_allclose(model.encode_texts(QUERIES[2:3])[0], txt[2], atol=1e-5)


def test_encode_crops(dual):
    model = dual["clip"]
    image = _images()[0]
    boxes = np.array([[0, 0, 20, 10], [10.5, 5.2, 60.7, 49.9], [70, 40, 500, 500]])
    crops = model.encode_crops(image, boxes)
    ref = model.encode_images([image.crop((0, 0, 20, 10)), image.crop((10, 5, 61, 50)), image.crop((70, 40, 80, 50))])
    np.testing.assert_allclose(crops, ref, atol=1e-6)


def test_half_precision_model_stays_close(tiny_models):
    """dtype="float16" (meant for GPUs; runs on CPU too): outputs are float32 arrays, and the
    [s·ê, s·b]·[q̂, 1] identity still holds against the same half-precision forward within 1e-2."""
    model = load_model(f"owlv2:{tiny_models['owlv2']}", device="cpu", dtype="float16")
    image = _images()[0]
    regions = model.encode_patches([image])[0]
    assert regions.vectors.dtype == np.float32 and model.preprocessing()["dtype"] == "float16"
    boxes, logits, _ = model.detector_logits(image, QUERIES)
    np.testing.assert_allclose(regions.vectors @ model.encode_texts(QUERIES).T, logits, atol=1e-2)
    np.testing.assert_allclose(regions.boxes, boxes, atol=1e-2)
