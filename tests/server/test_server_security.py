"""HTTP service over the REAL engine (corpus: ``server_helpers``): what it refuses and
does not reveal: bounded request bodies, server paths kept out of errors, path traversal,
symlinks leaving the indexed folder, unknown ids, untrusted Host headers, the API key."""

from __future__ import annotations

import shutil
from unittest import mock

import pytest

from requires import require

require("fastapi", "serve")
require("httpx", "serve")

from fastapi.testclient import TestClient  # noqa: E402

from resedis.server import ServeConfig, create_app  # noqa: E402
from resedis.server.engine import SearchService  # noqa: E402
from server_helpers import BASE, KEY, assert_healthy  # noqa: E402
from servekit import tiny_sam  # noqa: E402


# ---- limits and leaks ------------------------------------------------------------
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


# ---- image ids: traversal, symlinks, unknown ids ----------------------------------
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
    # every attempt is refused by the id guard (400), never merely not found (404); the
    # TestClient decodes the path twice, so the %252e one arrives as "../secret.jpg" too
    assert r.status_code == 400 and "image id" in r.json()["detail"], (attempt, r.status_code, r.text[:200])
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


# ---- hosts -------------------------------------------------------------------------
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
