"""The image-id guard (``resedis.server.security.check_image_id``) on its own, and behind
the HTTP routes with exact status codes: a refused id is a ``400`` naming the rule it
broke, never the catalog's ``404 unknown image id`` (which would answer a traversal
attempt just as well and so would hide a guard that lets it through)."""

from __future__ import annotations

import pytest

from resedis.server.security import MAX_IMAGE_ID_CHARS, RequestRefused, check_image_id
from server_helpers import assert_healthy

SEGMENTS = "image id must not contain empty, '.' or '..' segments"
ABSOLUTE = "image id must not be an absolute path"
NUL_OR_BACKSLASH = "image id contains a NUL or backslash character"

# id -> the guard's message
REFUSED = {
    "": "image id is empty",
    ".": SEGMENTS,
    "..": SEGMENTS,
    "./a.jpg": SEGMENTS,
    "../a.jpg": SEGMENTS,
    "nested/../a.jpg": SEGMENTS,
    "nested/./a.jpg": SEGMENTS,
    "nested/..": SEGMENTS,
    "nested//deeper/c.jpg": SEGMENTS,
    "nested/deeper/": SEGMENTS,
    "a.jpg/.": SEGMENTS,
    "/etc/passwd": ABSOLUTE,
    "//server/share/a.jpg": ABSOLUTE,
    "~/.bashrc": ABSOLUTE,
    "~root/a.jpg": ABSOLUTE,
    "C:/windows/win.ini": ABSOLUTE,
    "c:a.jpg": ABSOLUTE,
    "..\\..\\secret.jpg": NUL_OR_BACKSLASH,
    "nested\\a.jpg": NUL_OR_BACKSLASH,
    "C:\\windows\\win.ini": NUL_OR_BACKSLASH,
    "a.jpg\x00.png": NUL_OR_BACKSLASH,
    "x" * (MAX_IMAGE_ID_CHARS + 1): f"image id longer than {MAX_IMAGE_ID_CHARS} characters",
}

ACCEPTED = ["a.jpg", "nested/deeper/c.jpg", "...jpg", "a..b.jpg", ".hidden.jpg", "dir.d/x.png", "x" * MAX_IMAGE_ID_CHARS,
            "%2e%2e%2fsecret.jpg", "name with spaces.jpg", "ünïcode/ファイル.jpg"]


@pytest.mark.parametrize("image_id", list(REFUSED))
def test_guard_refuses(image_id):
    with pytest.raises(RequestRefused) as err:
        check_image_id(image_id)
    assert err.value.status == 400
    assert err.value.message == REFUSED[image_id]


@pytest.mark.parametrize("image_id", ACCEPTED)
def test_guard_accepts_plain_relative_ids(image_id):
    assert check_image_id(image_id) == image_id


# (URL path after /api/images/, exact status, detail). Percent-encoding keeps the HTTP
# client from resolving dot segments itself; the server decodes them into the id. Every
# id refused here is one the catalog does not hold either, so a 404 would mean the guard
# let it through.
HTTP_CASES = [
    ("..%2F..%2F..%2Fetc%2Fpasswd", 400, SEGMENTS),
    ("..%2Foutside%2Fsecret.jpg", 400, SEGMENTS),
    ("nested%2F..%2F..%2Foutside%2Fsecret.jpg", 400, SEGMENTS),
    ("nested/%2E%2E/%2E%2E/outside/secret.jpg", 400, SEGMENTS),
    ("nested/%2E%2E/a.jpg", 400, SEGMENTS),  # would name an indexed file if resolved
    ("%2E/a.jpg", 400, SEGMENTS),
    ("%2E%2E", 400, SEGMENTS),
    ("nested//deeper/c.jpg", 400, SEGMENTS),  # the indexed id with an empty segment
    ("nested/deeper/%2E/c.jpg", 400, SEGMENTS),
    ("%2Fetc%2Fpasswd", 400, ABSOLUTE),
    ("%2F%2Fetc%2Fpasswd", 400, ABSOLUTE),
    ("~%2F.bashrc", 400, ABSOLUTE),
    ("C:%2Fwindows%2Fwin.ini", 400, ABSOLUTE),
    ("..%5C..%5Coutside%5Csecret.jpg", 400, NUL_OR_BACKSLASH),
    ("C:%5Cwindows%5Cwin.ini", 400, NUL_OR_BACKSLASH),
    ("a.jpg%00.png", 400, NUL_OR_BACKSLASH),
    # (no double-encoded case: Starlette's TestClient decodes the path twice, uvicorn once,
    # so "%252e%252e" would test the transport; the guard's own table above has that id)
    ("nested/deeper/nope.jpg", 404, "unknown image id"),
]


@pytest.mark.parametrize("suffix", ["", "/thumb"])
@pytest.mark.parametrize("path, status, detail", HTTP_CASES)
def test_http_status_of_each_refused_id(client, corpus, path, status, detail, suffix):
    r = client.get(f"/api/images/{path}{suffix}")
    assert (r.status_code, r.json()["detail"]) == (status, detail), r.text[:200]
    assert corpus["secret"] not in r.content


def test_http_serves_the_plain_ids_the_guard_accepts(client):
    for image_id in ("a.jpg", "nested/deeper/c.jpg"):
        r = client.get(f"/api/images/{image_id}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert client.get(f"/api/images/{image_id}/thumb").status_code == 200
    assert_healthy(client)
