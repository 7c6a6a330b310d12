"""HTTP service over the REAL engine: a tiny random OWLv2 index of a synthetic corpus.

No fake backend: every request goes through ``SearchService`` -> ``resedis.search.Searcher``
over a LanceDB index built by ``resedis.index.build_index``.
"""

from __future__ import annotations

import io
import shutil
import threading
import time
from pathlib import Path
from unittest import mock

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from resedis.server import ServeConfig, create_app  # noqa: E402
from servekit import tiny_sam  # noqa: E402
from resedis.server.engine import SearchService  # noqa: E402
from resedis.types import Hit  # noqa: E402

BASE = "http://127.0.0.1"
KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, synth_small, tiny_models):
    """A corpus with nested ids, a non-square PNG, a symlink leaving it, and its index.

    Layout: ``root/a.jpg, b.jpg, swap.jpg, wide.png, nested/deeper/c.jpg, d.jpg`` plus
    ``root/escape.jpg -> outside/secret.jpg`` (indexed because the index is built with
    ``follow_symlinks=True``: the server must refuse it all the same); after indexing,
    ``swap.jpg`` is replaced by a symlink to the outside file (a link planted after the fact).
    """
    from resedis.index import IndexConfig, build_index

    base = tmp_path_factory.mktemp("serve")
    root, outside = base / "corpus", base / "outside"
    (root / "nested" / "deeper").mkdir(parents=True)
    outside.mkdir()
    src = sorted((synth_small / "images").glob("*.jpg"))
    shutil.copy(src[0], root / "a.jpg")
    shutil.copy(src[1], root / "b.jpg")
    shutil.copy(src[2], root / "swap.jpg")
    shutil.copy(src[3], root / "nested" / "deeper" / "c.jpg")
    shutil.copy(src[4], root / "nested" / "deeper" / "d.jpg")
    with Image.open(src[5]) as im:
        im.crop((0, 0, im.width, im.height // 2)).save(root / "wide.png")
    shutil.copy(src[6], outside / "secret.jpg")
    (root / "escape.jpg").symlink_to(outside / "secret.jpg")
    db = base / "db"
    build_index(root, db, config=IndexConfig(model=f"owlv2:{tiny_models['owlv2']}", max_regions=8, follow_symlinks=True), progress=False)
    (root / "swap.jpg").unlink()
    (root / "swap.jpg").symlink_to(outside / "secret.jpg")
    return {"root": root, "outside": outside, "db": db, "secret": (outside / "secret.jpg").read_bytes()}


@pytest.fixture(scope="module")
def service(corpus):
    svc = SearchService(corpus["db"])
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(corpus, service):
    app = create_app(ServeConfig(db=corpus["db"]), service=service)
    with TestClient(app, base_url=BASE) as c:
        yield c


def assert_healthy(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


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


def test_error_messages_do_not_leak_server_paths(corpus, tiny_models, tmp_path_factory):
    """A hit whose file no longer decodes cannot be segmented: the 400 names the image id,
    not the server's path to it."""
    spec = f"sam:{tiny_sam(tiny_models, tmp_path_factory.mktemp('sam'))}"
    db = tmp_path_factory.mktemp("leak") / "db"
    shutil.copytree(corpus["db"], db)  # a private mask cache
    svc = SearchService(db, segmenter=spec)
    victim = corpus["root"] / "b.jpg"
    original = victim.read_bytes()
    try:
        with TestClient(create_app(ServeConfig(db=db, segmenter=spec), service=svc), base_url=BASE) as c:
            hits = c.get("/api/search", params={"q": "blue star", "top_k": 200}).json()["hits"]
            assert any(h["image_id"] == "b.jpg" for h in hits), "b.jpg not among the hits: the test would be blind"
            victim.write_bytes(b"no longer an image")
            r = c.get("/api/search", params={"q": "blue star", "top_k": 200, "masks": "true"})
            assert r.status_code == 400, r.text
            detail = r.json()["detail"]
            assert "b.jpg" in detail and "not an image" in detail
            for secret in (str(corpus["root"]), str(db), str(corpus["root"].resolve())):
                assert secret not in detail, detail
            assert_healthy(c)
    finally:
        victim.write_bytes(original)
        svc.close()


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


def test_request_body_is_bounded(client):
    big = b"{" + b" " * 100_000 + b"}"
    r = client.post("/api/index", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(40):
            yield b" " * 1000

    r = client.post("/api/index", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = client.post("/api/index", content=b"{}", headers={"content-type": "application/json", "content-length": "x"})
    assert r.status_code == 400
    assert_healthy(client)


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


TRAVERSALS = [
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "..%2Foutside%2Fsecret.jpg",
    "nested%2F..%2F..%2Foutside%2Fsecret.jpg",
    "nested/%2E%2E/%2E%2E/outside/secret.jpg",
    "%2Fetc%2Fpasswd",
    "%2F%2Fetc%2Fpasswd",
    "~%2F.bashrc",
    "..%5C..%5Coutside%5Csecret.jpg",
    "C:%5Cwindows%5Cwin.ini",
    "a.jpg%00.png",
    "nested//deeper/c.jpg",
    "%2E/a.jpg",
    "%252e%252e%252fsecret.jpg",
]


@pytest.mark.parametrize("attempt", TRAVERSALS)
@pytest.mark.parametrize("suffix", ["", "/thumb"])
def test_path_traversal_is_refused(client, corpus, attempt, suffix):
    r = client.get(f"/api/images/{attempt}{suffix}")
    assert r.status_code in (400, 404), (attempt, r.status_code, r.text[:200])
    assert corpus["secret"] not in r.content and b"root:" not in r.content
    assert r.headers["content-type"].startswith("application/json")
    assert_healthy(client)


def test_absolute_path_of_an_indexed_file_is_not_an_id(client, corpus):
    absolute = str(corpus["root"] / "a.jpg").lstrip("/")
    assert client.get(f"/api/images/%2F{absolute}").status_code == 400
    assert client.get(f"/api/images/{absolute}").status_code == 404  # not an id of the index


@pytest.mark.parametrize("image_id", ["escape.jpg", "swap.jpg"])
def test_symlinks_leaving_the_indexed_folder_are_refused(client, corpus, image_id):
    assert (corpus["root"] / image_id).is_symlink()
    for url in (f"/api/images/{image_id}", f"/api/images/{image_id}/thumb"):
        r = client.get(url)
        assert r.status_code == 403, (url, r.status_code)
        assert "outside" in r.json()["detail"]
        assert corpus["secret"] not in r.content


def test_unknown_ids_are_404(client):
    for url in ("/api/images/nope.jpg", "/api/images/nested/nope.jpg/thumb", "/api/images/nested/deeper"):
        r = client.get(url)
        assert r.status_code == 404 and r.json()["detail"] == "unknown image id"
    assert client.get("/api/nothing-here").status_code == 404
    for url in ("/api/jobs/..%2F", "/api/stats/", "/api/search/?q=red", "/api/images/a.jpg/"):
        r = client.get(url, follow_redirects=False)
        assert 400 <= r.status_code < 500, (url, r.status_code)


# ---- stats, page, hosts ------------------------------------------------------------
def test_stats(client, service, corpus):
    s = client.get("/api/stats").json()
    assert s["ready"] is True
    assert s["images"] == service.index.images_table.count_rows() == 7
    assert s["model"] == service.index.manifest.model
    assert "owl" in s["pipelines"] and s["threshold"] == service.searcher.threshold
    assert s["threshold_source"] == "default" and s["indexing_enabled"] is False
    assert "root" not in s and str(corpus["root"]) not in client.get("/api/stats").text


def test_calibrated_threshold_is_the_default(client, corpus):
    from resedis.index.store import read_manifest, write_manifest

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


def test_untrusted_host_header_is_refused(client):
    # DNS-rebinding guard: a loopback server answers only to loopback host names.
    assert client.get("/healthz", headers={"host": "evil.example"}).status_code == 400
    assert client.get("/healthz", headers={"host": "localhost:8000"}).status_code == 200


# ---- API key ---------------------------------------------------------------------
def test_api_key_is_required_on_every_api_route(corpus, service):
    app = create_app(ServeConfig(db=corpus["db"], api_key=KEY), service=service)
    with TestClient(app, base_url=BASE) as c:
        urls = ["/api/search?q=red", "/api/stats", "/api/images/a.jpg", "/api/images/a.jpg/thumb", "/api/jobs/x", "/api/zzz"]
        for url in urls:
            assert c.get(url).status_code == 401, url
            assert c.get(url, headers={"X-API-Key": KEY + "x"}).status_code == 401, url
            assert c.get(url, headers={"X-API-Key": KEY[:-1]}).status_code == 401, url
            assert c.get(url, headers={"X-API-Key": ""}).status_code == 401, url
        assert c.post("/api/index", json={"folder": "."}).status_code == 401
        assert "X-API-Key" in c.get("/api/stats").json()["detail"]
        ok = {"X-API-Key": KEY}
        assert c.get("/api/search?q=red", headers=ok).status_code == 200
        assert c.get("/api/images/a.jpg", headers=ok).status_code == 200
        assert c.get("/api/stats", headers=ok).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
        with mock.patch("resedis.server.security.hmac.compare_digest", wraps=__import__("hmac").compare_digest) as cmp:
            assert c.get("/api/stats", headers=ok).status_code == 200
        assert cmp.call_count == 1  # the key is compared in constant time


def test_short_api_key_is_rejected(corpus):
    from resedis.errors import ResedisError

    with pytest.raises(ResedisError, match="at least 8"):
        ServeConfig(db=corpus["db"], api_key="short")


# ---- concurrency -----------------------------------------------------------------
def test_healthz_stays_responsive_during_a_slow_search(client, service):
    results = {}

    def slow_search():
        results["search"] = client.get("/api/search", params={"q": "a slow query", "top_k": 3})

    with service.model_lock:  # the model is busy: the search must wait for it
        worker = threading.Thread(target=slow_search)
        worker.start()
        time.sleep(0.3)
        assert worker.is_alive() and "search" not in results  # really blocked on the model
        started = time.perf_counter()
        for _ in range(5):
            assert_healthy(client)
        assert client.get("/api/images/a.jpg/thumb").status_code == 200  # images too
        assert time.perf_counter() - started < 2.0
    worker.join(timeout=30)
    assert results["search"].status_code == 200 and results["search"].json()["hits"]


def test_waiting_searches_are_bounded_with_429(client, service):
    old = service.max_pending
    service.max_pending = 1
    results = {}
    try:
        with service.model_lock:
            worker = threading.Thread(target=lambda: results.setdefault("first", client.get("/api/search?q=blue")))
            worker.start()
            time.sleep(0.3)
            r = client.get("/api/search?q=green")
            assert r.status_code == 429 and "retry" in r.json()["detail"]
    finally:
        service.max_pending = old
    worker.join(timeout=30)
    assert results["first"].status_code == 200


# ---- indexing jobs ---------------------------------------------------------------
def _wait_job(c, job_id, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = c.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_index_jobs_create_and_update_the_served_index(tmp_path, synth_small, tiny_models, client):
    allowed = tmp_path / "allowed"
    photos = allowed / "photos"
    photos.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    src = sorted((synth_small / "images").glob("*.jpg"))
    for p in src[:3]:
        shutil.copy(p, photos / p.name)
    config = ServeConfig(
        db=tmp_path / "new.db", allow_index_roots=[allowed], index_model=f"owlv2:{tiny_models['owlv2']}"
    )
    app = create_app(config)
    with TestClient(app, base_url=BASE) as c:
        assert c.get("/api/stats").json()["ready"] is False
        r = c.get("/api/search?q=red")
        assert r.status_code == 409 and "POST /api/index" in r.json()["detail"]
        assert c.post("/api/index", json={"folder": str(elsewhere)}).status_code == 403
        assert c.post("/api/index", json={"folder": str(allowed / ".." / "elsewhere")}).status_code == 403
        assert c.post("/api/index", json={"folder": str(allowed / "missing")}).status_code == 400
        assert c.post("/api/index", json={"nope": 1}).status_code == 422
        r = c.post("/api/index", json={"folder": str(photos)})
        assert r.status_code == 202, r.text
        job = _wait_job(c, r.json()["id"])
        assert job["state"] == "done", job
        assert job["report"]["added"] == 3 and job["images_found"] == 3 and job["images_indexed"] == 3
        assert c.get("/api/stats").json()["images"] == 3
        assert c.get("/api/search?q=red").json()["hits"]
        assert c.get(f"/api/images/{src[0].name}").status_code == 200
        # Incremental update: a new file appears, is indexed, and becomes servable.
        shutil.copy(src[3], photos / "later.jpg")
        assert c.get("/api/images/later.jpg").status_code == 404
        job = _wait_job(c, c.post("/api/index", json={"folder": str(photos)}).json()["id"])
        assert job["state"] == "done" and job["report"]["added"] == 1 and job["report"]["unchanged"] == 3
        time.sleep(1.1)  # the catalog re-reads the image table at most once a second
        assert c.get("/api/images/later.jpg").status_code == 200
        other = allowed / "other"
        other.mkdir()
        r = c.post("/api/index", json={"folder": str(other)})
        assert r.status_code == 400 and "another folder" in r.json()["detail"]
        assert c.get("/api/jobs/not-a-job").status_code == 400
        assert c.get("/api/jobs/" + "0" * 32).status_code == 404
    # Indexing is off unless enabled.
    assert client.post("/api/index", json={"folder": str(photos)}).status_code == 403


# ---- CLI -------------------------------------------------------------------------
def test_cli_serve_validates_before_starting(tmp_path, capsys):
    from resedis.cli import main

    assert main(["serve", "--db", str(tmp_path / "missing")]) == 2
    assert "not a resedis index" in capsys.readouterr().err
    assert main(["serve", "--db", str(tmp_path), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for option in ("--db", "--host", "--port", "--api-key", "--allow-index-root", "--device"):
        assert option in out


def test_cli_serve_warns_when_exposed_without_a_key(corpus, monkeypatch, capsys):
    import uvicorn

    from resedis.cli import main

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append((app, kw)))
    monkeypatch.delenv("RESEDIS_API_KEY", raising=False)
    assert main(["serve", "--db", str(corpus["db"]), "--port", "8123"]) == 0
    err = capsys.readouterr().err
    assert "http://127.0.0.1:8123/" in err and "loopback only" in err and "WARNING" not in err
    assert started[-1][1]["host"] == "127.0.0.1" and started[-1][1]["port"] == 8123
    assert main(["serve", "--db", str(corpus["db"]), "--host", "0.0.0.0"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "WITHOUT an API key" in err
    app, kw = started[-1]
    assert kw["host"] == "0.0.0.0" and app.state.config.effective_trusted_hosts() == ["*"]
    assert main(["serve", "--db", str(corpus["db"]), "--host", "0.0.0.0", "--api-key", KEY]) == 0
    err = capsys.readouterr().err
    assert "WARNING" not in err and "X-API-Key" in err
    assert started[-1][0].state.config.api_key == KEY
