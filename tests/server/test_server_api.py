"""HTTP service over the REAL engine (corpus: ``server_helpers``): search results and
their validation, pipelines, masks, images and thumbnails, stats, the page and /docs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from resedis.server import ServeConfig, create_app  # noqa: E402
from resedis.server.engine import SearchService  # noqa: E402
from resedis.types import Hit  # noqa: E402
from server_helpers import BASE, assert_healthy  # noqa: E402
from servekit import tiny_sam  # noqa: E402


# ---- search ----------------------------------------------------------------------
def test_search_returns_the_engines_hits_in_the_shared_schema(client, service):
    r = client.get("/api/search", params={"q": "red circle", "top_k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "red circle" and body["pipeline"] == "owl" and body["top_k"] == 7
    hits = body["hits"]
    assert 0 < len(hits) <= 7
    # Exactly what the library returns for the same query (same ids, boxes, scores, order).
    expected = service.searcher.search("red circle", top_k=7)
    assert [h["image_id"] for h in hits] == [h.image_id for h in expected.hits]
    assert [h["score"] for h in hits] == pytest.approx([h.score for h in expected.hits], abs=1e-9)
    assert [h["box"] for h in hits] == [pytest.approx(list(h.box)) for h in expected.hits]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    for h in hits:
        assert set(h) == {"image_id", "box", "score", "present", "mask"}  # no server path leaked
        Hit.from_json(h, "api")  # the shared schema's own validator
        assert h["present"] == (h["score"] >= body["threshold"])
        dims = body["images"][h["image_id"]]
        x0, y0, x1, y1 = h["box"]
        assert 0 <= x0 <= x1 <= dims["width"] + 1e-3 and 0 <= y0 <= y1 <= dims["height"] + 1e-3
    assert body["timings"]["encode_ms"] >= 0 and body["timings"]["total_ms"] >= 0


def test_image_dims_come_from_the_index_and_match_the_files(client, service, corpus):
    catalog = service.catalog()
    assert len(catalog) == 7
    for image_id in ("a.jpg", "b.jpg", "wide.png", "nested/deeper/c.jpg", "nested/deeper/d.jpg"):
        record = catalog.get(image_id)
        with Image.open(corpus["root"] / image_id) as im:
            assert (record.width, record.height) == im.size
    assert catalog.get("wide.png").width != catalog.get("wide.png").height
    body = client.get("/api/search", params={"q": "blue square", "top_k": 50}).json()
    assert set(body["images"]) == {h["image_id"] for h in body["hits"]}
    for image_id, dims in body["images"].items():
        record = catalog.get(image_id)
        assert dims == {"width": record.width, "height": record.height}


def test_threshold_parameter_sets_presence(client):
    base = client.get("/api/search", params={"q": "green triangle", "top_k": 20}).json()
    scores = sorted(h["score"] for h in base["hits"])
    t = scores[len(scores) // 2]
    body = client.get("/api/search", params={"q": "green triangle", "top_k": 20, "threshold": t}).json()
    assert body["threshold"] == pytest.approx(t)
    assert [h["present"] for h in body["hits"]] == [h["score"] >= t for h in body["hits"]]
    assert 0 < sum(h["present"] for h in body["hits"]) < len(body["hits"]) or len(set(scores)) == 1


@pytest.mark.parametrize(
    ("params", "status", "needle"),
    [
        ({"q": "x" * 501}, 422, "q:"),
        ({"q": ""}, 422, "q:"),
        ({"q": "   \t "}, 400, "empty"),
        ({"q": "red", "top_k": 0}, 422, "top_k"),
        ({"q": "red", "top_k": 201}, 422, "top_k"),
        ({"q": "red", "top_k": "many"}, 422, "top_k"),
        ({"q": "red", "threshold": 1.5}, 422, "threshold"),
        ({"q": "red", "threshold": "nan"}, 422, "threshold"),
        ({"q": "red", "pipeline": "rerank-xyz"}, 400, "available: owl, owl+rerank, clip-crops"),
        ({"q": "red", "pipeline": "x" * 65}, 422, "pipeline"),
        ({"q": "red", "masks": "perhaps"}, 422, "masks"),
        ({}, 422, "q:"),
        ({"q": "\x00"}, 400, "control characters"),
        ({"q": "red\x1b[2J circle"}, 400, "control characters"),
        ({"q": "red", "pipeline": "owl rerank"}, 400, "pipeline=owl%2Brerank"),
    ],
)
def test_bad_search_requests_get_clear_4xx(client, params, status, needle):
    r = client.get("/api/search", params=params)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]
    assert_healthy(client)


def test_query_bytes_that_are_not_utf8_are_a_400(client):
    r = client.get("/api/search?q=%ff%fe&top_k=3")  # raw: percent-encoded non-UTF-8 bytes
    assert r.status_code == 400 and "UTF-8" in r.json()["detail"]
    ok = client.get("/api/search?q=caf%C3%A9+cr%C3%A8me&top_k=3")  # UTF-8 text is fine
    assert ok.status_code == 200 and ok.json()["query"] == "café crème"
    assert_healthy(client)


def test_pipeline_names(client):
    by_alias = client.get("/api/search", params={"q": "yellow star", "pipeline": "default"}).json()
    by_name = client.get("/api/search", params={"q": "yellow star", "pipeline": "owl"}).json()
    assert by_alias["pipeline"] == by_name["pipeline"] == "owl"
    assert by_alias["hits"] == by_name["hits"]
    stats = client.get("/api/stats").json()
    assert list(stats["pipelines"]) == ["owl", "owl+rerank", "clip-crops"] and stats["default_pipeline"] == "owl"


def test_unavailable_models_are_a_clear_400(client):
    # Offline, without the pipeline's weights: the message names the model, the server stays up.
    r = client.get("/api/search", params={"q": "red", "masks": "true"})
    assert r.status_code == 400 and "sam" in r.json()["detail"].lower(), r.text
    r = client.get("/api/search", params={"q": "red", "pipeline": "owl+rerank"})
    assert r.status_code == 400 and "dino" in r.json()["detail"].lower(), r.text
    assert_healthy(client)
    assert client.get("/api/search", params={"q": "red"}).status_code == 200


def test_rerank_pipeline_uses_the_configured_grounder(corpus, tiny_models, tmp_path_factory, monkeypatch, capsys):
    """``--grounder`` reaches the owl+rerank pipeline (without it only the hub default could
    ever be used); hits come only from the images the grounder saw."""
    import uvicorn

    from resedis.cli import main
    from resedis.testing.tiny_extra import make_extra_checkpoints

    gdino = make_extra_checkpoints(tmp_path_factory.mktemp("gdino"), ["gdino"])["gdino"]
    spec = f"gdino:{gdino}"
    svc = SearchService(corpus["db"], grounder=spec)
    app = create_app(ServeConfig(db=corpus["db"], grounder=spec), service=svc)
    try:
        with TestClient(app, base_url=BASE) as c:
            r = c.get("/api/search", params={"q": "red circle", "top_k": 5, "pipeline": "owl+rerank"})
            assert r.status_code == 200, r.text
            backend = svc.models.get(spec)
            assert backend.images_seen >= 1
            assert 0 < len({h["image_id"] for h in r.json()["hits"]}) <= backend.images_seen
            assert c.get("/api/stats").json()["grounder"] == spec
    finally:
        svc.close()
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(app))
    assert main(["serve", "--db", str(corpus["db"]), "--grounder", spec]) == 0
    assert started[-1].state.service.grounder == spec
    capsys.readouterr()


def test_masks_are_the_segmenters_own_and_cached(corpus, tiny_models, tmp_path_factory):
    import numpy as np
    from pycocotools import mask as mask_utils

    from resedis.io.images import open_rgb

    spec = f"sam:{tiny_sam(tiny_models, tmp_path_factory.mktemp('sam'))}"
    svc = SearchService(corpus["db"], segmenter=spec)
    app = create_app(ServeConfig(db=corpus["db"], segmenter=spec), service=svc)
    try:
        with TestClient(app, base_url=BASE) as c:
            body = c.get("/api/search", params={"q": "orange circle", "top_k": 4, "masks": "true"}).json()
            assert body["timings"]["masks_ms"] > 0
            segmenter = svc.models.get(spec)
            calls = segmenter.image_calls
            assert calls >= 1
            for h in body["hits"]:
                dims = body["images"][h["image_id"]]
                assert h["mask"]["size"] == [dims["height"], dims["width"]]
                image = open_rgb(corpus["root"] / h["image_id"])
                expected = segmenter.segment(image, np.array([h["box"]]))[0]
                assert np.array_equal(mask_utils.decode(h["mask"]).astype(bool), expected)
            segmenter.image_calls = calls
            again = c.get("/api/search", params={"q": "orange circle", "top_k": 3, "masks": "true"}).json()
            assert [h["mask"] for h in again["hits"]] == [h["mask"] for h in body["hits"][:3]]
            assert segmenter.image_calls == calls  # served from the index's mask cache
            plain = c.get("/api/search", params={"q": "orange circle", "top_k": 4}).json()
            assert all(h["mask"] is None for h in plain["hits"])
    finally:
        svc.close()


# ---- images ----------------------------------------------------------------------
@pytest.mark.parametrize("image_id", ["a.jpg", "wide.png", "nested/deeper/c.jpg"])
def test_image_by_id_returns_the_file(client, corpus, image_id):
    expected = (corpus["root"] / image_id).read_bytes()
    r = client.get(f"/api/images/{image_id}")
    assert r.status_code == 200, r.text
    assert r.content == expected
    assert r.headers["content-type"] == ("image/png" if image_id.endswith(".png") else "image/jpeg")
    assert r.headers["x-content-type-options"] == "nosniff"
    # Slashes of the id may also be percent-encoded: same image.
    encoded = image_id.replace("/", "%2F")
    assert client.get(f"/api/images/{encoded}").content == expected


def test_thumbnails_are_bounded_and_cached(client, corpus):
    thumbs = client.app.state.thumbs
    r = client.get("/api/images/nested/deeper/d.jpg/thumb", params={"size": 64})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(r.content)) as im, Image.open(corpus["root"] / "nested/deeper/d.jpg") as orig:
        assert max(im.size) == 64
        assert im.width / im.height == pytest.approx(orig.width / orig.height, rel=0.05)
    hits = thumbs.hits
    assert client.get("/api/images/nested/deeper/d.jpg/thumb", params={"size": 64}).content == r.content
    assert thumbs.hits == hits + 1
    with Image.open(io.BytesIO(client.get("/api/images/wide.png/thumb").content)) as im:
        assert max(im.size) == 256  # default size
    for size in (0, 10, 5000, "big"):
        assert client.get("/api/images/a.jpg/thumb", params={"size": size}).status_code == 422


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_files_that_no_longer_decode_are_a_4xx(client, service, tmp_path, monkeypatch):
    """An indexed file replaced on disk by garbage, a truncated JPEG or a decompression
    bomb: the thumbnail (and a converted format's image) answer 404 with the reason, not 500."""
    from resedis.server.images import ImageCatalog, ImageRecord

    good = service.catalog().get("a.jpg")
    data = Path(good.path).read_bytes()
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all")
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")  # 4e8 px > PIL's bomb limit
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.tif")
    (tmp_path / "garbage.tif").write_bytes(b"II*\x00garbage")
    names = ["garbage.jpg", "truncated.jpg", "bomb.png", "bomb.tif", "garbage.tif"]
    catalog = ImageCatalog([ImageRecord(n, str(tmp_path / n), 10, 10, str(tmp_path)) for n in names])
    monkeypatch.setattr(service, "catalog", lambda: catalog)
    for name in names:
        r = client.get(f"/api/images/{name}/thumb", params={"size": 64})
        assert r.status_code == 404 and "re-run resedis index" in r.json()["detail"], (name, r.status_code, r.text)
    for name in ("bomb.tif", "garbage.tif"):  # converted to PNG for the browser: decoded too
        r = client.get(f"/api/images/{name}")
        assert r.status_code == 404 and "decode" in r.json()["detail"], (name, r.text)
    assert client.get("/api/images/garbage.jpg").status_code == 200  # browser formats are sent as stored
    assert_healthy(client)


# ---- stats, page ------------------------------------------------------------------
def test_stats(client, service, corpus):
    s = client.get("/api/stats").json()
    assert s["ready"] is True
    assert s["images"] == service.index.images_table.count_rows() == 7
    assert s["model"] == service.index.manifest.model
    assert "owl" in s["pipelines"] and s["threshold"] == service.searcher.threshold
    assert s["threshold_source"] == "default" and s["indexing_enabled"] is False
    assert "root" not in s and str(corpus["root"]) not in client.get("/api/stats").text


def test_calibrated_threshold_is_the_default(client, corpus):
    from resedis.index.manifest import read_manifest, write_manifest

    hits = client.get("/api/search", params={"q": "purple ring", "top_k": 10}).json()["hits"]
    scores = sorted(h["score"] for h in hits)
    t = (scores[4] + scores[5]) / 2
    original = read_manifest(corpus["db"])
    calibrated = read_manifest(corpus["db"])
    calibrated.calibration = {"owl": {"threshold": t}}
    write_manifest(corpus["db"], calibrated)
    try:
        stats = client.get("/api/stats").json()
        assert stats["threshold"] == pytest.approx(t) and stats["threshold_source"] == "calibrated"
        body = client.get("/api/search", params={"q": "purple ring", "top_k": 10}).json()
        assert body["threshold"] == pytest.approx(t) and body["threshold_source"] == "calibrated"
        assert [h["present"] for h in body["hits"]] == [h["score"] >= t for h in body["hits"]]
        assert 0 < sum(h["present"] for h in body["hits"]) < len(body["hits"])
    finally:
        write_manifest(corpus["db"], original)
    assert client.get("/api/stats").json()["threshold_source"] == "default"


def test_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert 'id="q"' in r.text and 'id="threshold"' in r.text and "/static/app.js" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "/api/search" in js.text
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/openapi.json").json()["paths"]["/api/search"]


def test_docs_page_is_self_contained(client):
    """/docs must work offline: FastAPI's default page loads Swagger UI from a CDN (blank
    without network). Ours loads only same-origin files and renders /openapi.json."""
    import re

    r = client.get("/docs")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "script-src 'self'" in r.headers["content-security-policy"]
    refs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert "/static/docs.js" in refs and "/openapi.json" in refs
    assert all(u.startswith(("/", "#", "data:")) for u in refs), refs  # nothing from another host
    assert "<script>" not in r.text  # no inline code (the CSP forbids it)
    js = client.get("/static/docs.js")
    assert js.status_code == 200 and 'fetch("/openapi.json"' in js.text and "http" not in js.text.replace("HTTP", "")
    assert client.get("/static/docs.css").status_code == 200
    assert client.get("/redoc").status_code == 404  # also CDN-based: not offered
    spec = client.get("/openapi.json").json()
    assert {"400", "404", "403"} <= set(spec["paths"]["/api/images/{image_id}"]["get"]["responses"])
    assert {"400", "429"} <= set(spec["paths"]["/api/search"]["get"]["responses"])
