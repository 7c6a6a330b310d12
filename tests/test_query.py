"""The one query path (:mod:`resedis.query`): the CLI, the HTTP service, ``eval --db`` and
the library return the same hits for the same query; no hit has a box of zero visible
area, even from an index that stored such regions; the CLI restates no library default."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resedis.cli import main
from resedis.index import IndexConfig, build_index, open_index
from resedis.pipelines import PipelineConfig
from resedis.query import QueryEngine, QueryRequest
from resedis.boxes import visible
from resedis.search_corpus import load_corpus

CLI_DIR = Path(__file__).resolve().parents[1] / "src" / "resedis" / "cli"


# ----------------------------------------------------------------------------- zero-area guard


@pytest.mark.parametrize(
    "box, size, hidden",
    [
        ([0, 528, 264, 528], (264, 528), True),   # the reported case: a line on the bottom edge
        ([0, 600, 264, 700], (264, 528), True),   # wholly below a tall image (OWLv2 padding)
        ([300, 0, 400, 50], (264, 528), True),    # wholly right of it
        ([10, 10, 10, 50], (264, 528), True),     # degenerate: zero width
        ([-5, -5, 0.5, 0.5], (1, 1), False),      # a 1x1 image: the box covers a quarter pixel
        ([1, 0, 3, 1], (1, 1), True),             # right of a 1x1 image
        ([0, 0, 1, 1], (1, 1), False),            # the whole 1x1 image
        ([250, 500, 300, 600], (264, 528), False),  # partly outside: its visible part counts
    ],
)
def test_zero_area_table(box, size, hidden):
    assert bool(~visible(np.array([box], float), *size)[0]) is hidden


@pytest.fixture(scope="module")
def odd_db(tmp_path_factory, owlv2_spec):
    """Every patch of a non-square, a 1x1 and a square image stored (no NMS, no cap)."""
    base = tmp_path_factory.mktemp("odd")
    images = base / "images"
    images.mkdir()
    Image.new("RGB", (64, 24), (200, 30, 30)).save(images / "wide.png")
    Image.new("RGB", (20, 70), (30, 200, 30)).save(images / "tall.png")
    Image.new("RGB", (1, 1), (0, 0, 255)).save(images / "dot.png")
    Image.new("RGB", (40, 40), (250, 250, 0)).save(images / "square.png")
    build_index(images, base / "db", config=IndexConfig(model=owlv2_spec, max_regions=10_000, nms_iou=1.0),
                progress=False)
    return base / "db"


def _visible(hit, sizes) -> bool:
    return visible(np.array([hit.box]), *sizes[hit.image_id])[0]


def test_no_hit_has_zero_visible_area_on_non_square_and_1x1_images(odd_db, encoder, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(odd_db, db)
    index = open_index(db)
    # An index written before the encoder dropped such regions: plant boxes with no visible
    # area (below the wide image, beside the 1x1 one) on regions of every image.
    planted = {"wide.png": [0.0, 24.0, 64.0, 48.0], "tall.png": [20.0, 0.0, 40.0, 70.0],
               "dot.png": [1.0, 0.0, 3.0, 1.0], "square.png": [0.0, 40.0, 40.0, 40.0]}
    for image_id, box in planted.items():
        index.regions_table.update(where=f"image_id = '{image_id}' AND region < 3", values={"box": box})
    index = open_index(db)
    sizes = {r["image_id"]: (r["width"], r["height"]) for r in index.read("images", ["image_id", "width", "height"]).to_pylist()}
    corpus = load_corpus(index)
    assert corpus.hidden.sum() >= 12  # the planted ones at least
    assert corpus.hidden.tolist() == (~visible(corpus.boxes, *np.array(
        [sizes[corpus.image_ids[i]] for i in corpus.region_image], float).T)).tolist()
    engine = QueryEngine(index, PipelineConfig(nms_iou=1.0, device="cpu"))
    engine.models.put(index.manifest.model, encoder)
    for text in ("a red thing", "a blue dot", "the yellow square"):
        hits = engine.run(QueryRequest(text, top_k=len(corpus))).result.hits
        assert hits and all(_visible(h, sizes) for h in hits)
        assert len(hits) == len(corpus) - int(corpus.hidden.sum())  # every visible region, nothing else
    # the same on the exact engine's dataset path
    from resedis.search import Searcher

    searcher = Searcher(index, encoder=encoder, nms_iou=1.0)
    assert all(_visible(h, sizes) for h in searcher.search("red", top_k=len(corpus)).hits)


# ----------------------------------------------------------------------------- one path, same hits


@pytest.fixture(scope="module")
def shapes_db(tmp_path_factory, synth_small, owlv2_spec):
    db = tmp_path_factory.mktemp("query") / "db"
    build_index(synth_small / "images", db, config=IndexConfig(model=owlv2_spec, max_regions=10), progress=False)
    return db


def _key(hits: list[dict]) -> list[tuple]:
    return [(h["image_id"], [round(v, 4) for v in h["box"]], round(h["score"], 6), h["present"]) for h in hits]


def test_cli_server_eval_and_library_return_the_same_hits(shapes_db, synth_small, tmp_path, capsys):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from resedis.io import load_dataset, read_predictions
    from resedis.server import ServeConfig, create_app

    dataset = load_dataset(synth_small)
    query = next(q for q in dataset.queries if not q.is_absent)
    text, top_k = query.expression, 7

    library = QueryEngine(shapes_db, PipelineConfig(device="cpu")).run(QueryRequest(text, top_k=top_k))
    lib_hits = [h.to_json() for h in library.result.hits]
    assert len(lib_hits) == top_k

    capsys.readouterr()
    assert main(["search", text, "--db", str(shapes_db), "--top-k", str(top_k), "--json", "--device", "cpu"]) == 0
    cli_hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert cli_hits == lib_hits  # the whole shared hit schema, path included

    with TestClient(create_app(ServeConfig(db=shapes_db)), base_url="http://127.0.0.1") as client:
        body = client.get("/api/search", params={"q": text, "top_k": top_k}).json()
    assert _key(body["hits"]) == _key(lib_hits)
    assert body["threshold"] == library.threshold.value and body["threshold_source"] == library.threshold.source

    preds = tmp_path / "preds.jsonl"
    assert main(["eval", "--dataset", str(synth_small), "--db", str(shapes_db), "--top-k", str(top_k),
                 "--out-predictions", str(preds)]) == 0
    evaluated = {r.query_id: r for r in read_predictions(preds)}[query.query_id]
    # eval searches only the dataset's images (here: all of them) and names them by dataset id
    by_file = [{**h.to_json(), "image_id": dataset.images[h.image_id].file_name} for h in evaluated.hits]
    assert _key(by_file) == _key(lib_hits)


def test_requests_with_different_options_in_one_batch_equal_separate_runs(shapes_db):
    engine = QueryEngine(shapes_db, PipelineConfig(device="cpu"))
    requests = [QueryRequest("red circle", top_k=3), QueryRequest("blue square", top_k=5, threshold=0.0),
                QueryRequest("  red   circle ", top_k=3)]
    batch = engine.run_many(requests)
    for req, answer in zip(requests, batch):
        alone = engine.run(req)  # a text batch of one: the encoder's float sums may differ in the last bits
        assert [(h.image_id, h.box, h.present) for h in answer.result.hits] == \
               [(h.image_id, h.box, h.present) for h in alone.result.hits]
        assert [h.score for h in answer.result.hits] == pytest.approx([h.score for h in alone.result.hits], rel=1e-6)
        assert len(answer.result.hits) == req.top_k
    assert batch[0].result.query_id == batch[2].result.query_id == "red circle"
    assert batch[1].threshold.source == "argument" and all(h.present for h in batch[1].result.hits)


def test_bad_requests_are_refused_with_the_fix(shapes_db):
    from resedis.errors import ResedisError

    engine = QueryEngine(shapes_db, PipelineConfig(device="cpu"))
    with pytest.raises(ResedisError, match="unknown pipeline 'owls'.*resedis pipelines"):
        engine.run(QueryRequest("red", pipeline="owls"))
    with pytest.raises(ResedisError, match="empty query"):
        engine.run(QueryRequest("   "))
    with pytest.raises(ResedisError, match="top_k must be >= 1"):
        engine.run(QueryRequest("red", top_k=0))
    with pytest.raises(ResedisError, match="nms_iou must be in"):
        QueryEngine(shapes_db, PipelineConfig(nms_iou=0.0))


# ----------------------------------------------------------------------------- defaults live once


ALLOWED_DEFAULTS = (None, False)


def _literal_defaults(path: Path) -> list[str]:
    """``add_argument(..., default=<literal>)`` calls whose literal is not None/False/[]."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"):
            continue
        for kw in node.keywords:
            if kw.arg != "default":
                continue
            value = kw.value
            if isinstance(value, ast.Constant) and value.value in ALLOWED_DEFAULTS:
                continue
            if isinstance(value, ast.List) and not value.elts:  # action="append" starts from []
                continue
            if isinstance(value, ast.Attribute) and value.attr == "SUPPRESS":
                continue
            found.append(f"{path.name}:{node.lineno}: default={ast.unparse(value)}")
    return found


def test_no_cli_module_restates_a_library_default():
    offenders = [line for path in sorted(CLI_DIR.glob("*.py")) for line in _literal_defaults(path)]
    assert not offenders, "library defaults restated in the CLI (pass only what the user set):\n" + "\n".join(offenders)


def test_the_literal_default_scan_would_catch_one(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('p.add_argument("--top-k", type=int, default=20)\np.add_argument("--x", default=None)\n'
                   'p.add_argument("--y", action="append", default=[])\n')
    assert _literal_defaults(bad) == ["bad.py:1: default=20"]


def test_parsed_cli_defaults_are_unset():
    """Every option a user did not give parses to None/False/[] (the library fills the rest)."""
    from resedis.cli import build_parser

    parser = build_parser()
    argv = {
        "search": ["search", "x", "--db", "d"], "eval": ["eval", "--dataset", "d", "--db", "d"],
        "calibrate": ["calibrate", "--dataset", "d", "--db", "d"], "demo": ["demo"], "serve": ["serve", "--db", "d"],
    }
    for name, args in argv.items():
        ns = vars(parser.parse_args(args))
        given = {k: v for k, v in ns.items() if k not in ("func", "command", "verbose", "text", "db", "dataset")}
        set_values = {k: v for k, v in given.items() if v not in (None, False, [])}
        assert not set_values, f"{name}: options set without the user: {set_values}"
