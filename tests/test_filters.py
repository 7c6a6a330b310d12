"""Filters on image metadata (:mod:`resedis.filters`): a filtered search equals the
unfiltered ranking (every hit) restricted to the filter, on the exact path and the ANN path;
a filter matching nothing gives zero hits with a note; bad values give clear errors."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resedis.cli import main
from resedis.errors import ResedisError
from resedis.filters import Filters, clean_folder, parse_time
from resedis.index import IndexConfig, build_index, open_index
from resedis.index.ann import AnnConfig, build_ann_index
from resedis.pipelines import PIPELINES, Models, PipelineConfig
from resedis.query import QueryEngine, QueryRequest
from resedis.search import Searcher

DAY0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
FOLDERS = ["a", "a/sub", "b", "a-old"]
SIZES = [(40, 32), (64, 48), (96, 80), (48, 64)]
TEXTS = ["a red circle", "a green square", "the blue triangle on the left"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, dict]:
    """16 images in four folders (one a prefix-lookalike: a-old), four sizes, one per day."""
    root = tmp_path_factory.mktemp("filter_images")
    rng = np.random.default_rng(5)
    meta = {}
    for i in range(16):
        folder, (w, h) = FOLDERS[i % 4], SIZES[(i // 4) % 4]
        path = root / folder / f"img{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 255, 3)))
        im.paste(tuple(int(c) for c in rng.integers(0, 255, 3)), (w // 4, h // 4, w // 2 + 3, h // 2 + 5))
        im.save(path)
        moment = DAY0 + dt.timedelta(days=i)
        ns = int(moment.timestamp()) * 1_000_000_000
        os.utime(path, ns=(ns, ns))
        meta[f"{folder}/img{i:02d}.png"] = {"folder": folder, "width": w, "height": h, "mtime": moment}
    return root, meta


@pytest.fixture(scope="module")
def db(images, encoder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("filter_db") / "db"
    build_index(images[0], out, config=IndexConfig(max_regions=8, vector_dtype="float32"), progress=False, encoder=encoder)
    return out


def passes(meta: dict, f: Filters) -> bool:
    """The filter rule, written out independently of the library."""
    folder = None if f.folder is None else f.folder.removeprefix("./").strip("/")
    if folder is not None and not meta["path"].startswith(folder + "/"):
        return False
    if f.min_width is not None and meta["width"] < f.min_width:
        return False
    if f.max_width is not None and meta["width"] > f.max_width:
        return False
    if f.min_height is not None and meta["height"] < f.min_height:
        return False
    if f.max_height is not None and meta["height"] > f.max_height:
        return False
    if f.modified_after is not None and meta["mtime"] < dt.datetime.fromisoformat(f.modified_after).replace(tzinfo=dt.timezone.utc):
        return False
    if f.modified_before is not None and meta["mtime"] >= dt.datetime.fromisoformat(f.modified_before).replace(tzinfo=dt.timezone.utc):
        return False
    if f.image_ids is not None and meta["path"] not in f.image_ids:
        return False
    return True


CASES = [
    Filters(folder="a"),  # a/ and a/sub/, never a-old/
    Filters(folder="./a/sub/"),
    Filters(min_width=60),
    Filters(max_width=64, min_height=48),
    Filters(modified_after="2024-01-05", modified_before="2024-01-11"),
    Filters(image_ids=("b/img02.png", "a/img12.png", "a-old/img07.png")),
    Filters(folder="a", min_width=48, modified_before="2024-01-14"),
]


def _key(hit):
    return (hit.image_id, tuple(round(v, 3) for v in hit.box))


def check_restricted(searcher, meta, top_k=5):
    total = searcher.corpus().region_image.shape[0]
    for text in TEXTS:
        everything = searcher.search(text, top_k=total).hits
        for f in CASES:
            allowed = [h for h in everything if passes({**meta[h.image_id], "path": h.image_id}, f)]
            assert allowed, f  # every case matches some image
            got = searcher.search(text, top_k=top_k, filters=f).hits
            assert [_key(h) for h in got] == [_key(h) for h in allowed[:top_k]], (text, f)
            np.testing.assert_allclose([h.score for h in got], [h.score for h in allowed[:top_k]], rtol=1e-6)


def test_filtered_exact_results_are_the_ranking_restricted_to_the_filter(db, images, encoder):
    searcher = Searcher(db, encoder=encoder, use_ann=False)
    check_restricted(searcher, images[1])
    # the "a" folder is a prefix of "a-old" as text but not as a folder
    hits = searcher.search(TEXTS[0], top_k=100, filters=Filters(folder="a")).hits
    assert {h.image_id.split("/img")[0] for h in hits} == {"a", "a/sub"}


def test_filtered_ann_results_are_the_ranking_restricted_to_the_filter(db, images, encoder, tmp_path, monkeypatch):
    """ANN candidates ranked by the inner product itself (IVF_FLAT, dot, every partition
    probed) but only max(3, k) of them: a filtered query must widen the candidate set until
    it has enough allowed ones, and then equals the exact restricted ranking (NMS off, so
    the top-k are the top-k candidates)."""
    ann_db = tmp_path / "db"
    shutil.copytree(db, ann_db)
    config = AnnConfig(min_rows=1, index_type="IVF_FLAT", metric="dot", num_partitions=2, nprobes=2,
                       min_candidates=3, candidate_factor=1)
    build_ann_index(open_index(ann_db).regions_table, config)
    import resedis.index.ann_search as ann  # the Searcher's ANN path calls ann_candidates from there

    limits = []
    real = ann.ann_candidates

    def spy(*args, **kwargs):
        limits.append(kwargs.get("limit"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ann, "ann_candidates", spy)
    searcher = Searcher(ann_db, encoder=encoder, ann=config, nms_iou=1.0)
    exact = Searcher(ann_db, encoder=encoder, use_ann=False, nms_iou=1.0)
    total = exact.corpus().region_image.shape[0]
    meta = images[1]
    for text in TEXTS:
        everything = exact.search(text, top_k=total).hits
        unfiltered = searcher.search(text, top_k=3).hits
        assert [_key(h) for h in unfiltered] == [_key(h) for h in everything[:3]]
        for f in CASES:
            allowed = [h for h in everything if passes({**meta[h.image_id], "path": h.image_id}, f)]
            got = searcher.search(text, top_k=3, filters=f).hits
            assert [_key(h) for h in got] == [_key(h) for h in allowed[:3]], (text, f)
            np.testing.assert_allclose([h.score for h in got], [h.score for h in allowed[:3]], rtol=1e-5)
    assert searcher.ann.queries_answered == len(TEXTS) * (1 + len(CASES))
    assert any(limit is not None and limit > 3 for limit in limits)  # the candidate set was widened


def test_a_filter_matching_nothing_gives_no_hits_and_a_note(db, encoder):
    models = Models("cpu")
    models.put(encoder.spec, encoder)
    engine = QueryEngine(db, PipelineConfig(device="cpu"), models)
    answer = engine.run(QueryRequest("a red circle", filters=Filters(folder="nowhere")))
    assert answer.result.hits == []
    assert answer.notes and "match none of the 16 indexed images" in answer.notes[0]
    answer = engine.run(QueryRequest("a red circle", filters=Filters(folder="b"), top_k=50))
    assert answer.notes == [] and {h.image_id.split("/")[0] for h in answer.result.hits} == {"b"}
    with pytest.raises(ResedisError, match="does not support filters"):
        engine.run(QueryRequest("a red circle", pipeline="clip-crops", filters=Filters(folder="b")))


@pytest.mark.parametrize("bad, message", [
    (Filters(min_width=100, max_width=50), "min_width .100. is larger than max_width"),
    (Filters(min_height=-1), "min_height must be a whole number"),
    (Filters(max_width=2.5), "max_width must be a whole number"),
    (Filters(modified_after="yesterday"), "modified_after: 'yesterday' is not an ISO date"),
    (Filters(modified_after="2024-02-01", modified_before="2024-01-01"), "is not before modified_before"),
    (Filters(image_ids=()), "image_ids is empty"),
    (Filters(image_ids="a/img00.png"), "not one string"),
    (Filters(folder="../etc"), "relative to the indexed folder"),
])
def test_bad_filters_are_refused(bad, message):
    with pytest.raises(ResedisError, match=message):
        bad.validated()


def test_time_and_folder_parsing():
    assert parse_time("2024-05-01", "x") == int(dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc).timestamp()) * 10**9
    assert parse_time("2024-05-01T02:00:00+02:00", "x") == parse_time("2024-05-01", "x")
    assert parse_time(1.5, "x") == 1_500_000_000
    assert clean_folder("./a/b/") == "a/b" and clean_folder("/") == "" and clean_folder("a\\b") == "a/b"
    assert not Filters(folder="").validated().active and Filters(min_width=0).validated().active


def test_cli_filters(db, images, encoder, tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text("# two images\nb/img02.png\n\na/img12.png\n")
    assert main(["search", "a red circle", "--db", str(db), "--ids-file", str(ids), "--top-k", "50", "--json",
                 "--device", "cpu"]) == 0
    hits = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert hits and {h["image_id"] for h in hits} == {"b/img02.png", "a/img12.png"}
    assert main(["search", "a red circle", "--db", str(db), "--folder", "a/sub", "--modified-after", "2024-01-02",
                 "--image-id", "a/sub/img05.png", "--image-id", "a/sub/img09.png", "--json", "--device", "cpu"]) == 0
    assert {json.loads(x)["image_id"] for x in capsys.readouterr().out.splitlines()} == {"a/sub/img05.png", "a/sub/img09.png"}
    assert main(["search", "a red circle", "--db", str(db), "--folder", "b", "--group-by", "image", "--json",
                 "--top-k", "30", "--device", "cpu"]) == 0
    groups = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len({g["image_id"] for g in groups}) == len(groups) == 4  # b/ holds 4 images
    assert sum(len(g["hits"]) for g in groups) == 30
    assert all(g["score"] == max(h["score"] for h in g["hits"]) for g in groups)
    assert main(["search", "a red circle", "--db", str(db), "--folder", "b", "--group-by", "image", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("20 hits for 'a red circle' (threshold 0.1; * = present)") and " images, " in out[0]
    assert all(" b/img" in line and "box" in line for line in out[1:]) and len(out) > 2
    assert main(["search", "a red circle", "--db", str(db), "--folder", "zzz", "--device", "cpu"]) == 0
    assert "note: the filters (folder zzz/) match none" in capsys.readouterr().out
    assert main(["search", "x", "--db", str(db), "--modified-before", "01/02/2024", "--device", "cpu"]) == 2
    assert "modified_before: '01/02/2024' is not an ISO date" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    assert main(["search", "x", "--db", str(db), "--ids-file", str(empty), "--device", "cpu"]) == 2
    assert "lists no image id" in capsys.readouterr().err


def test_validating_twice_changes_nothing():
    f = Filters(folder="./a/", min_width=3, modified_after="2024-01-02", modified_before=1.8e9,
                image_ids=("b", "a")).validated()
    assert f.validated() == f
    assert f.image_ids == ("a", "b") and f.folder == "a"


@pytest.mark.parametrize("name", [n for n, e in PIPELINES.items() if e.cls.supports_filters and n != "owl+rerank"])  # owl+rerank: needs a grounder
def test_every_pipeline_that_claims_filters_applies_them(name, db, images, encoder):
    """A pipeline with ``supports_filters`` (inherited or not) returns only allowed images,
    for a plain phrase and for a relational one (a composing pipeline's own path)."""
    models = Models("cpu")
    models.put(encoder.spec, encoder)
    engine = QueryEngine(db, PipelineConfig(device="cpu"), models)
    meta = images[1]
    for text in ("a red circle", "the red circle left of the blue square"):
        for f in (Filters(folder="b"), Filters(min_width=90), Filters(image_ids=("a/img04.png",))):
            hits = engine.run(QueryRequest(text, pipeline=name, filters=f, top_k=40)).result.hits
            assert hits, (name, text, f)
            assert all(passes({**meta[h.image_id], "path": h.image_id}, f) for h in hits), (name, text, f)
