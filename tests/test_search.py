"""Search: exactness against the detector's own forward pass, ranking/NMS against a slow
reference, float16 storage, thresholds, dataset mapping, CLI.

Tolerances (stated once):
* float32 index vs ``Owl*ForObjectDetection`` forward: |Δlogit| <= 1e-4 * max(1, |logit|)
  (two float32 computations of the same sums, in different order);
* float16 index: per region |Δlogit| <= 2^-11 * Σ_i |v_i q_i| + 1e-5 (each stored
  component rounded with relative error <= 2^-11); rankings agree for every pair of
  regions whose float32 logits are further apart than their two bounds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resedis.boxes import nms
from resedis.cli import main as cli_main
from resedis.errors import IndexMismatchError, ResedisError
from resedis.index import IndexConfig, build_index, open_index
from resedis.index.manifest import read_manifest, write_manifest
from resedis.io.images import open_rgb
from resedis.boxes import nms
from resedis.search import Searcher, rank_hits, search_dataset, sigmoid
from resedis.boxes import visible
from resedis.search_corpus import load_corpus
from resedis.thresholds import DEFAULT_THRESHOLD

QUERIES = ["red circle", "a small blue square on the left", "the largest yellow star", "green triangle"]
FP16_UNIT = 2.0**-11


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from resedis.synth import generate

    out = tmp_path_factory.mktemp("synth6")
    generate(out, images=6, queries=6, absent=1, seed=11, progress=False)
    return out


@pytest.fixture(scope="module")
def backends(tiny_models) -> dict:
    from resedis.models import load_model

    return {fam: load_model(f"{fam}:{tiny_models[fam]}", "cpu") for fam in ("owlv2", "owlvit")}


def _visible(boxes: np.ndarray) -> np.ndarray:
    """Boxes wider and taller than 1/100 px (the encoder drops the others: tests/test_zero_area.py)."""
    return (boxes[:, 2] - boxes[:, 0] > 0.01) & (boxes[:, 3] - boxes[:, 1] > 0.01)


def n_patches(backend) -> int:
    return len(backend.encode_patches([Image.new("RGB", (32, 32))])[0])


@pytest.fixture(scope="module")
def full_indexes(synth, backends, tmp_path_factory) -> dict:
    """(family, dtype) -> Index over the 6 synthetic images with EVERY patch stored, no NMS."""
    out = {}
    for fam, backend in backends.items():
        for dtype in ("float32", "float16"):
            db = tmp_path_factory.mktemp(f"{fam}-{dtype}")
            config = IndexConfig(max_regions=n_patches(backend), nms_iou=1.0, vector_dtype=dtype, batch_size=4)
            build_index(synth / "images", db, config=config, progress=False, encoder=backend)
            out[fam, dtype] = open_index(db)
    return out


# ----------------------------------------------------------------------------- ranking


def reference_rank(logits, region_image, boxes, top_k, nms_iou):
    """Slow, obvious: greedy NMS inside every image, then a global sort."""
    kept = []
    for img in np.unique(region_image):
        idx = np.flatnonzero(region_image == img)
        keep = idx[nms(boxes[idx], logits[idx], nms_iou)] if nms_iou < 1.0 else idx
        kept.extend(keep.tolist())
    kept.sort(key=lambda i: -logits[i])
    return kept[:top_k]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("nms_iou", [0.3, 0.5, 1.0])
def test_rank_hits_equals_per_image_nms_reference(seed, nms_iou):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 900))
    region_image = rng.integers(0, int(rng.integers(1, 12)), n)
    xy = rng.uniform(0, 80, (n, 2))
    wh = rng.uniform(2, 40, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    logits = rng.normal(size=n).astype(np.float32)
    for top_k in (1, 7, 60, n + 5):
        got = [i for i, _ in rank_hits(logits, region_image, boxes, top_k, nms_iou)]
        assert got == reference_rank(logits, region_image, boxes, top_k, nms_iou)


def test_rank_hits_excludes_masked_regions():
    logits = np.array([5.0, -np.inf, 3.0, -np.inf], np.float32)
    boxes = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5], [6, 6, 7, 7]], np.float32)
    got = rank_hits(logits, np.array([0, 0, 1, 1]), boxes, 10, 0.5)
    assert [i for i, _ in got] == [0, 2]


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("family", ["owlv2", "owlvit"])
def test_scores_equal_the_detectors_own_forward(family, full_indexes, backends):
    """Every visible box of every image comes back once, with the detector's own logit; a
    box with no visible area in its image (OWLv2 predicts boxes in the padding of
    non-square images) never does, whether or not the index stored it."""
    backend = backends[family]
    index = full_indexes[family, "float32"]
    searcher = Searcher(index, encoder=backend, nms_iou=1.0)
    patches = n_patches(backend)
    total = index.stats()["regions"]
    paths = {r["image_id"]: r["path"] for r in index.read("images", ["image_id", "path"]).to_pylist()}
    images = {image_id: open_rgb(p) for image_id, p in paths.items()}
    # every patch whose box (clipped to the image) has visible area is stored; none other
    stored_visible = {i: _visible(backend.detector_logits(img, QUERIES[:1])[0]) for i, img in images.items()}
    assert total == sum(int(v.sum()) for v in stored_visible.values()) <= 6 * patches
    for query in QUERIES:
        forward = {i: backend.detector_logits(img, [query]) for i, img in images.items()}
        shown = {i: _visible(forward[i][0]) for i in images}
        assert all((shown[i] == stored_visible[i]).all() for i in images)  # the boxes do not depend on the text
        hits = searcher.search(query, top_k=total).hits
        assert len(hits) == total
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
        used = {i: np.zeros(patches, bool) for i in images}
        for hit in hits:
            boxes, logits, _ = forward[hit.image_id]
            assert visible(np.array([hit.box]), *images[hit.image_id].size)[0]
            logit = float(np.log(hit.score) - np.log1p(-hit.score))
            same_box = np.flatnonzero(np.all(np.abs(boxes - np.asarray(hit.box)) <= 1e-2, axis=1) & ~used[hit.image_id])
            assert len(same_box), f"{family} {query!r}: no forward box equals {hit.box} in {hit.image_id}"
            best = same_box[np.argmin(np.abs(logits[same_box, 0] - logit))]
            used[hit.image_id][best] = True
            ref = float(logits[best, 0])
            assert abs(ref - logit) <= 1e-4 * max(1.0, abs(ref)), (family, query, hit.image_id, ref, logit)
            assert hit.score == pytest.approx(float(sigmoid(ref)), abs=1e-5)
        assert all((used[i] == shown[i]).all() for i in images)  # every visible patch of every image, once
        # The corpus's top hit is the detector's best visible box over all images.
        best_image = max(forward, key=lambda i: forward[i][1][shown[i]].max(initial=-np.inf))
        assert hits[0].image_id == best_image
        assert float(sigmoid(forward[best_image][1][shown[best_image]].max())) == pytest.approx(hits[0].score, abs=1e-5)


@pytest.mark.parametrize("family", ["owlv2", "owlvit"])
def test_float16_storage_keeps_ranking(family, full_indexes, backends):
    c32 = load_corpus(full_indexes[family, "float32"])
    c16 = load_corpus(full_indexes[family, "float16"])
    assert c16.vectors.dtype == np.float16 and c32.vectors.dtype == np.float32
    assert c16.image_ids == c32.image_ids
    q = backends[family].encode_texts(QUERIES)
    l32, l16 = c32.logits(q), c16.logits(q)
    bound = FP16_UNIT * (np.abs(c32.vectors) @ np.abs(q).T) + 1e-5
    assert np.all(np.abs(l16 - l32) <= bound)
    assert np.abs(l16 - l32).max() > 0  # float16 really was stored
    for j in range(len(QUERIES)):
        top = np.argsort(-l32[:, j], kind="stable")[:20]
        for a in range(len(top)):
            for b in range(a + 1, len(top)):
                i, k = top[a], top[b]
                if l32[i, j] - l32[k, j] > bound[i, j] + bound[k, j]:
                    assert l16[i, j] > l16[k, j], (family, QUERIES[j], i, k)
        # Every float32 top-20 region outside float16's top-20 is within tolerance of the cut.
        top16 = set(np.argsort(-l16[:, j], kind="stable")[:20].tolist())
        cut = np.sort(l32[:, j])[::-1][19]
        for i in set(top.tolist()) - top16:
            assert l32[i, j] - cut <= 2 * bound[:, j].max()


# ----------------------------------------------------------------------------- behaviour


@pytest.fixture(scope="module")
def small_index(synth, backends, tmp_path_factory):
    db = tmp_path_factory.mktemp("small")
    build_index(synth / "images", db, config=IndexConfig(max_regions=10), progress=False, encoder=backends["owlv2"])
    return open_index(db)


def test_threshold_present_and_calibration(small_index, backends, tmp_path):
    searcher = Searcher(small_index, encoder=backends["owlv2"])
    assert searcher.threshold == DEFAULT_THRESHOLD
    hits = searcher.search("red circle", top_k=40).hits
    scores = np.array([h.score for h in hits])
    mid = float(np.median(scores))
    result = searcher.search("red circle", top_k=40, threshold=mid)
    assert [h.present for h in result.hits] == [h.score >= mid for h in result.hits]
    assert any(h.present for h in result.hits) and not all(h.present for h in result.hits)
    # NMS per image: no two hits of one image overlap above 0.5.
    from resedis.boxes import box_iou

    for a in range(len(hits)):
        for b in range(a + 1, len(hits)):
            if hits[a].image_id == hits[b].image_id:
                assert box_iou(np.array(hits[a].box), np.array(hits[b].box))[0, 0] <= 0.5
    # A calibrated threshold written into the manifest is picked up by a live Searcher.
    manifest = read_manifest(small_index.path)
    manifest.calibration = {"threshold": mid, "metric": "F1"}
    try:
        write_manifest(small_index.path, manifest)
        assert searcher.search("red circle", top_k=1).hits is not None and searcher.threshold == mid
        again = searcher.search("red circle", top_k=40)
        assert [h.present for h in again.hits] == [h.score >= mid for h in again.hits]
    finally:
        manifest.calibration = None
        write_manifest(small_index.path, manifest)


def test_query_validation_and_batching(small_index, backends, caplog):
    searcher = Searcher(small_index, encoder=backends["owlv2"])
    for bad in ("", "   ", "\n\t"):
        with pytest.raises(ResedisError, match="empty query"):
            searcher.search(bad)
    with caplog.at_level(logging.WARNING):
        long = searcher.search("red " * 40, top_k=3)
    assert "truncated" in caplog.text and len(long.hits) == 3
    many = searcher.search_many(QUERIES, top_k=5, batch_size=3)
    for text, result in zip(QUERIES, many):
        single = searcher.search(text, top_k=5)
        assert result.query_id == text and result.expression == text
        assert [(h.image_id, h.box) for h in result.hits] == [(h.image_id, h.box) for h in single.hits]
        assert [h.score for h in result.hits] == pytest.approx([h.score for h in single.hits], abs=1e-6)
    # Different queries rank differently (a vacuous tokenizer would make them equal).
    assert len({tuple(round(h.score, 6) for h in r.hits) for r in many}) == len(QUERIES)
    with pytest.raises(IndexMismatchError):
        Searcher(small_index, encoder=backends["owlvit"])


def test_searcher_sees_new_images(tmp_path, backends):
    images = tmp_path / "imgs"
    images.mkdir()
    # square red images: the tiny random OWLv2 puts every box of flat non-square ones in the
    # padding, and gives flat blue or green ones only zero-width boxes (never hits)
    Image.new("RGB", (32, 32), (200, 0, 0)).save(images / "a.jpg")
    db = tmp_path / "db"
    build_index(images, db, config=IndexConfig(max_regions=5), progress=False, encoder=backends["owlv2"])
    searcher = Searcher(db, encoder=backends["owlv2"])
    assert {h.image_id for h in searcher.search("red", top_k=50).hits} == {"a.jpg"}
    Image.new("RGB", (40, 40), (200, 0, 0)).save(images / "b.png")
    build_index(images, db, progress=False, encoder=backends["owlv2"])
    hits = searcher.search("red", top_k=50).hits
    stored = open_index(db).read("regions", ["image_id", "box"]).to_pylist()
    # NMS (at index time and per image at search time) keeps one of each set of identical
    # boxes (random tiny weights give duplicate degenerate boxes on flat images).
    assert len({(r["image_id"], tuple(r["box"])) for r in stored}) == len(stored)
    sizes = {"a.jpg": (32, 32), "b.png": (40, 40)}
    distinct = {(r["image_id"], tuple(np.float32(r["box"]).tolist())) for r in stored
                if visible(np.array([r["box"]]), *sizes[r["image_id"]])[0]}
    assert {h.image_id for h in hits} == {"a.jpg", "b.png"} and len(hits) == len(distinct)
    assert len({(h.image_id, h.box) for h in hits}) == len(hits)
    assert {h.path for h in hits} == {str((images / n).resolve()) for n in ("a.jpg", "b.png")}


def test_search_dataset_maps_ids_and_restricts(synth, backends, tmp_path):
    from resedis.io import load_dataset

    dataset = load_dataset(synth)
    # Indexed one level above the images folder, plus an image the dataset doesn't know.
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    for p in (synth / "images").iterdir():
        (root / "images" / p.name).write_bytes(p.read_bytes())
    Image.new("RGB", (80, 80), (255, 0, 0)).save(root / "stranger.jpg")
    db = tmp_path / "db"
    build_index(root, db, config=IndexConfig(max_regions=10), progress=False, encoder=backends["owlv2"])
    searcher = Searcher(db, encoder=backends["owlv2"])

    results = search_dataset(searcher, dataset, top_k=15, batch_size=4)
    assert [r.query_id for r in results] == [q.query_id for q in dataset.queries]
    by_name = {Path(info.file_name).name: image_id for image_id, info in dataset.images.items()}
    for result, query in zip(results, dataset.queries):
        assert result.expression == query.expression and len(result.hits) == 15
        for hit in result.hits:
            assert hit.image_id in dataset.images  # dataset ids (ints), never 'stranger.jpg'
            assert by_name[Path(hit.path).name] == hit.image_id
    # Same hits as a plain search restricted to the dataset's images.
    plain = searcher.search(dataset.queries[0].expression, top_k=200).hits
    expected = [(by_name[Path(h.path).name], h.box) for h in plain if Path(h.path).name in by_name][:15]
    assert [(h.image_id, h.box) for h in results[0].hits] == expected

    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (40, 40)).save(other / "unrelated.jpg")
    db2 = tmp_path / "db2"
    build_index(other, db2, progress=False, encoder=backends["owlv2"])
    with pytest.raises(ResedisError, match="share no images"):
        search_dataset(Searcher(db2, encoder=backends["owlv2"]), dataset)


def test_cli_index_search_stats(tmp_path, tiny_models, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    # square red: flat non-square images give the tiny OWLv2 boxes with no visible area only
    Image.new("RGB", (64, 64), (200, 0, 0)).save(images / "a.jpg")
    Image.new("RGB", (48, 48), (200, 0, 0)).save(images / "b.png")
    (images / "empty.jpg").write_bytes(b"")
    db = tmp_path / "db"
    spec = f"owlv2:{tiny_models['owlv2']}"
    assert cli_main(["index", str(images), "--db", str(db), "--model", spec, "--batch-size", "1",
                     "--max-regions", "4", "--device", "cpu", "--quiet", "--report"]) == 0
    out = capsys.readouterr().out
    assert "2 added" in out and "empty.jpg: zero-byte file" in out

    assert cli_main(["search", "red thing", "--db", str(db), "--top-k", "3", "--json", "--device", "cpu"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert set(line) == {"image_id", "box", "score", "present", "mask", "path"}
        assert line["image_id"] in {"a.jpg", "b.png"} and line["mask"] is None
        assert line["present"] == (line["score"] >= DEFAULT_THRESHOLD)
    assert [x["score"] for x in lines] == sorted((x["score"] for x in lines), reverse=True)

    assert cli_main(["search", "red thing", "--db", str(db), "--top-k", "2", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "2 hits for 'red thing'" in table and ("a.jpg" in table or "b.png" in table)

    assert cli_main(["stats", "--db", str(db), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    n_regions = sum(open_index(db).read("images", ["n_regions"])["n_regions"].to_pylist())
    assert 2 <= n_regions <= 8  # at most --max-regions 4 per image (identical boxes are merged by NMS)
    assert stats["images"] == 2 and stats["regions"] == n_regions and stats["skipped"] == 1 and stats["model"] == spec
    assert cli_main(["stats", "--db", str(db)]) == 0
    assert "zero-byte file" in capsys.readouterr().out

    other = f"owlvit:{tiny_models['owlvit']}"
    assert cli_main(["search", "red", "--db", str(db), "--model", other]) == 2
    err = capsys.readouterr().err
    assert "built with model" in err and other in err
    assert cli_main(["search", "  ", "--db", str(db)]) == 2
    assert "empty query" in capsys.readouterr().err
