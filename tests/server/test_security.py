"""``resedis.server.security`` on its own, without a corpus or a model: the query-text
check at each boundary of its character classes, the path checks on real files and
symlinks, the constant-time key comparison, and the three ASGI middlewares driven by hand
(scope, receive, send) so every status, header and replayed body is seen exactly.
The same guards behind the real HTTP routes: ``test_server_security.py`` and
``test_image_id_guard.py``."""

from __future__ import annotations

import asyncio
import json

import pytest

from resedis.server.security import (
    API_KEY_HEADER,
    MAX_IMAGE_ID_CHARS,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    RequestRefused,
    SecurityHeadersMiddleware,
    api_key_matches,
    check_image_id,
    check_query_text,
    resolve_index_folder,
    resolve_inside_roots,
)

KEY = "s3cret-key-for-tests"


def refused(fn, *args) -> tuple[int, str]:
    with pytest.raises(RequestRefused) as err:
        fn(*args)
    assert str(err.value) == err.value.message
    return err.value.status, err.value.message


# ---- constants and the id guard's length limit ---------------------------------------
def test_constants():
    assert API_KEY_HEADER == "x-api-key"  # ASGI header names are lower case
    assert MAX_IMAGE_ID_CHARS == 1024


def test_image_id_length_limit_is_1024_characters():
    assert check_image_id("a" * 1020 + ".jpg") == "a" * 1020 + ".jpg"
    assert refused(check_image_id, "a" * 1021 + ".jpg") == (400, "image id longer than 1024 characters")


@pytest.mark.parametrize("image_id", ["C:x", "z:", "Z:/a.jpg"])
def test_drive_letters_are_absolute(image_id):
    assert refused(check_image_id, image_id) == (400, "image id must not be an absolute path")


@pytest.mark.parametrize("image_id", ["ab:c.jpg", "1:a.jpg", "a/C:b.jpg", "é:a.jpg"])
def test_a_colon_elsewhere_is_a_plain_character(image_id):
    assert check_image_id(image_id) == image_id


# ---- query text ------------------------------------------------------------------------
CONTROL = "q: contains control characters"


@pytest.mark.parametrize("q", ["red circle", "red\tcircle", "red\ncircle", "red\r\ncircle", " red ", "~red",
                               "red\xa0circle", "caf\xe9", "\u2603 snowman", "red\U0001f534"])
def test_query_text_accepts_printable_text_and_whitespace(q):
    assert check_query_text(q) == q


@pytest.mark.parametrize("q", ["red\x00", "red\x01", "red\x1b[2J", "red\x1f", "red\x0b", "red\x0c", "red\x7f",
                               "red\x80", "red\x9f"])
def test_query_text_refuses_control_characters(q):
    assert refused(check_query_text, q) == (400, CONTROL)


@pytest.mark.parametrize("q", ["", " ", "\t\n", "\r"])
def test_query_text_refuses_blank(q):
    assert refused(check_query_text, q) == (400, "q: empty query; describe the object to search for")


def test_query_text_refuses_the_replacement_character():
    assert refused(check_query_text, "red \ufffd circle") == (
        400, "q: not valid UTF-8 (percent-encode the text's UTF-8 bytes)")


# ---- paths -----------------------------------------------------------------------------
@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"a")
    (root / "sub" / "b.jpg").write_bytes(b"b")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"secret")
    (tmp_path / "rootling").mkdir()  # a sibling whose name starts with the root's
    (tmp_path / "rootling" / "c.jpg").write_bytes(b"c")
    (root / "escape.jpg").symlink_to(outside / "secret.jpg")
    (root / "inner.jpg").symlink_to(root / "sub" / "b.jpg")
    return tmp_path


def test_resolve_inside_roots(tree):
    root = tree / "root"
    assert resolve_inside_roots(root / "a.jpg", [root]) == root / "a.jpg"
    assert resolve_inside_roots(str(root / "sub" / "b.jpg"), [str(tree / "outside"), str(root)]) == root / "sub" / "b.jpg"
    # a link inside the root answers with its target's real path
    assert resolve_inside_roots(root / "inner.jpg", [root]) == root / "sub" / "b.jpg"
    # through a linked root too: both sides are real paths
    (tree / "link").symlink_to(root)
    assert resolve_inside_roots(tree / "link" / "a.jpg", [tree / "link"]) == root / "a.jpg"
    assert resolve_inside_roots(root / "a.jpg", [tree / "link"]) == root / "a.jpg"


@pytest.mark.parametrize("stored, roots", [
    ("root/escape.jpg", ["root"]),
    ("outside/secret.jpg", ["root"]),
    ("rootling/c.jpg", ["root"]),  # a string prefix of the path is not a parent
    ("root/a.jpg", []),
    ("root/a.jpg", ["root/sub"]),
])
def test_resolve_inside_roots_refuses_what_leaves_every_root(tree, stored, roots):
    assert refused(resolve_inside_roots, tree / stored, [tree / r for r in roots]) == (
        403, "image file lies outside the indexed folders")


def test_resolve_inside_roots_answers_404_for_a_file_that_is_gone(tree):
    root = tree / "root"
    assert refused(resolve_inside_roots, root / "gone.jpg", [root]) == (404, "image file no longer exists")
    assert refused(resolve_inside_roots, root / "sub", [root]) == (404, "image file no longer exists")  # a folder


def test_resolve_index_folder(tree, monkeypatch):
    root = tree / "root"
    assert resolve_index_folder(str(root / "sub"), [root]) == root / "sub"
    assert resolve_index_folder(str(root), [tree / "outside", root]) == root
    monkeypatch.setenv("HOME", str(tree))
    assert resolve_index_folder("~/root/sub", [root]) == root / "sub"
    (tree / "link").symlink_to(root)
    assert resolve_index_folder(str(tree / "link" / "sub"), [root]) == root / "sub"


@pytest.mark.parametrize("folder, status, message", [
    ("", 400, "folder is empty or contains a NUL character"),
    ("root\x00/sub", 400, "folder is empty or contains a NUL character"),
    ("outside", 403, "folder is not under an allowed index root (--allow-index-root)"),
    ("rootling", 403, "folder is not under an allowed index root (--allow-index-root)"),
    ("root/nope", 400, "folder does not exist or is not a directory"),
    ("root/a.jpg", 400, "folder does not exist or is not a directory"),
])
def test_resolve_index_folder_refuses(tree, folder, status, message):
    path = str(tree / folder) if folder and "\x00" not in folder else folder
    assert refused(resolve_index_folder, path, [tree / "root"]) == (status, message)


def test_resolve_index_folder_needs_an_allowed_root(tree):
    assert refused(resolve_index_folder, str(tree / "root"), []) == (
        403, "folder is not under an allowed index root (--allow-index-root)")


# ---- API key ---------------------------------------------------------------------------
def test_api_key_matches():
    assert api_key_matches(KEY, KEY) is True
    assert api_key_matches(None, KEY) is False
    assert api_key_matches("", KEY) is False
    assert api_key_matches(KEY[:-1], KEY) is False
    assert api_key_matches(KEY + "x", KEY) is False
    assert api_key_matches("clé-de-test", "clé-de-test") is True  # UTF-8 on both sides
    # a header decoded with surrogateescape still compares (and does not match)
    assert api_key_matches("\udcff" + KEY, KEY) is False


# ---- the middlewares, driven by hand ---------------------------------------------------
class Recorder:
    """An inner ASGI app that records what reached it and answers 200 with the body it read."""

    def __init__(self):
        self.calls = []

    async def __call__(self, scope, receive, send):
        body = b""
        messages = []
        if scope["type"] == "http":
            while True:
                message = await receive()
                messages.append(message)
                body += message.get("body", b"")
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
        self.calls.append({"scope": scope, "body": body, "messages": messages})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-inner", b"1")]})
        await send({"type": "http.response.body", "body": b"ok"})


def drive(app, scope, messages=()):
    """Run ``app`` on ``scope`` with ``messages`` to receive (then a disconnect); -> what it sent."""
    queue = list(messages)
    sent = []

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def http(path="/api/stats", headers=()):
    return {"type": "http", "path": path, "headers": list(headers)}


def response(sent) -> tuple[int, dict, bytes]:
    start, body = sent
    assert start["type"] == "http.response.start" and body["type"] == "http.response.body"
    return start["status"], dict(start["headers"]), body["body"]


def refusal(sent, status, detail, extra_headers=()):
    body = json.dumps({"detail": detail}).encode()
    assert sent == [
        {"type": "http.response.start", "status": status,
         "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                     *extra_headers]},
        {"type": "http.response.body", "body": body},
    ]


WRONG_KEY = "missing or wrong API key: send it in the X-API-Key header"


@pytest.mark.parametrize("path", ["/api", "/api/", "/api/stats", "/api/images/a.jpg", "/api/zzz"])
@pytest.mark.parametrize("headers", [[], [(b"x-api-key", KEY.encode() + b"x")], [(b"x-api-key", b"")],
                                     [(b"X-API-Key", KEY.encode())], [(b"authorization", KEY.encode())]])
def test_api_key_middleware_refuses(path, headers):
    inner = Recorder()
    sent = drive(ApiKeyMiddleware(inner, KEY), http(path, headers))
    refusal(sent, 401, WRONG_KEY, [(b"www-authenticate", b"X-API-Key")])
    assert inner.calls == []


@pytest.mark.parametrize("path", ["/api", "/api/stats"])
def test_api_key_middleware_passes_the_right_key(path):
    inner = Recorder()
    headers = [(b"accept", b"*/*"), (b"x-api-key", KEY.encode()), (b"x-api-key", b"second")]
    sent = drive(ApiKeyMiddleware(inner, KEY), http(path, headers))
    assert response(sent) == (200, {b"x-inner": b"1"}, b"ok")  # the first x-api-key header counts
    assert [c["scope"]["path"] for c in inner.calls] == [path]


def test_api_key_middleware_decodes_the_header_as_latin1():
    key = "cl\xe9-de-test"
    inner = Recorder()
    assert response(drive(ApiKeyMiddleware(inner, key), http(headers=[(b"x-api-key", key.encode("latin-1"))])))[0] == 200


@pytest.mark.parametrize("path", ["/", "/healthz", "/apix", "/static/api/x", "/docs"])
def test_api_key_middleware_leaves_other_paths_open(path):
    inner = Recorder()
    assert response(drive(ApiKeyMiddleware(inner, KEY), http(path)))[0] == 200
    assert len(inner.calls) == 1


def test_api_key_middleware_refuses_a_scope_without_headers():
    inner = Recorder()
    refusal(drive(ApiKeyMiddleware(inner, KEY), {"type": "http", "path": "/api/stats"}), 401, WRONG_KEY,
            [(b"www-authenticate", b"X-API-Key")])
    assert inner.calls == []


def test_api_key_middleware_passes_non_http_scopes():
    inner = Recorder()
    sent = drive(ApiKeyMiddleware(inner, KEY), {"type": "lifespan", "path": "/api/stats"})
    assert response(sent)[0] == 200 and inner.calls[0]["scope"]["type"] == "lifespan"


LIMIT = 10
TOO_LARGE = f"request body larger than {LIMIT} bytes"


def test_body_limit_refuses_a_declared_length_over_the_limit():
    inner = Recorder()
    sent = drive(BodyLimitMiddleware(inner, LIMIT), http(headers=[(b"content-length", b"11")]),
                 [{"type": "http.request", "body": b"x" * 11}])
    refusal(sent, 413, TOO_LARGE)
    assert inner.calls == []


@pytest.mark.parametrize("value", [b"x", b"", b"1.5"])
def test_body_limit_refuses_an_invalid_content_length(value):
    inner = Recorder()
    refusal(drive(BodyLimitMiddleware(inner, LIMIT), http(headers=[(b"content-length", value)])), 400,
            "invalid Content-Length header")
    assert inner.calls == []


def test_body_limit_passes_a_declared_length_up_to_the_limit_unbuffered():
    inner = Recorder()
    parts = [{"type": "http.request", "body": b"12345", "more_body": True},
             {"type": "http.request", "body": b"67890", "more_body": False}]
    sent = drive(BodyLimitMiddleware(inner, LIMIT), http(headers=[(b"host", b"x"), (b"content-length", b"10")]), parts)
    assert response(sent)[0] == 200
    assert inner.calls[0]["messages"] == parts  # the app reads the client's own messages


def test_body_limit_buffers_a_body_without_length_up_to_the_limit():
    inner = Recorder()
    parts = [{"type": "http.request", "body": b"12345", "more_body": True},
             {"type": "http.request", "more_body": True},
             {"type": "http.request", "body": b"67890", "more_body": False}]
    assert response(drive(BodyLimitMiddleware(inner, LIMIT), http(), parts))[0] == 200
    assert inner.calls[0]["messages"] == [{"type": "http.request", "body": b"1234567890", "more_body": False}]


def test_body_limit_buffered_body_ends_without_more_body_key():
    inner = Recorder()
    drive(BodyLimitMiddleware(inner, LIMIT), http(), [{"type": "http.request", "body": b"abc"}])
    assert inner.calls[0]["messages"] == [{"type": "http.request", "body": b"abc", "more_body": False}]


def test_body_limit_replay_then_reads_the_client():
    """After the replayed body the app's next receive() reaches the client (a disconnect)."""
    seen = []

    async def app(scope, receive, send):
        seen.append(await receive())
        seen.append(await receive())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    drive(BodyLimitMiddleware(app, LIMIT), http(), [{"type": "http.request", "body": b"abc"},
                                                   {"type": "http.disconnect", "marker": 1}])
    assert seen == [{"type": "http.request", "body": b"abc", "more_body": False}, {"type": "http.disconnect", "marker": 1}]


def test_body_limit_refuses_a_streamed_body_over_the_limit():
    inner = Recorder()
    parts = [{"type": "http.request", "body": b"123456", "more_body": True},
             {"type": "http.request", "body": b"78901", "more_body": True}]
    refusal(drive(BodyLimitMiddleware(inner, LIMIT), http(), parts), 413, TOO_LARGE)
    assert inner.calls == []


def test_body_limit_replays_a_disconnect_before_the_body():
    seen = []

    async def app(scope, receive, send):
        seen.append(await receive())
        seen.append(await receive())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    drive(BodyLimitMiddleware(app, LIMIT), http(), [{"type": "http.disconnect", "marker": 1}])
    assert seen == [{"type": "http.disconnect", "marker": 1}, {"type": "http.disconnect"}]


class ReadsOnce:
    """An inner app that receives one message (any scope type) and records it with the scope."""

    def __init__(self):
        self.seen = []

    async def __call__(self, scope, receive, send):
        self.seen.append((scope, await receive()))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def test_body_limit_passes_non_http_scopes_untouched():
    inner = ReadsOnce()
    scope = {"type": "lifespan", "headers": [(b"content-length", b"x")]}
    drive(BodyLimitMiddleware(inner, LIMIT), scope, [{"type": "lifespan.startup"}])
    assert inner.seen == [(scope, {"type": "lifespan.startup"})]
    assert inner.seen[0][0] is scope


def test_body_limit_buffers_a_scope_without_headers():
    inner = ReadsOnce()
    scope = {"type": "http", "path": "/api/index"}
    drive(BodyLimitMiddleware(inner, LIMIT), scope, [{"type": "http.request", "body": b"abc"}])
    assert inner.seen == [(scope, {"type": "http.request", "body": b"abc", "more_body": False})]


def test_body_limit_replays_a_disconnect_with_the_scope():
    inner = ReadsOnce()
    scope = http()
    drive(BodyLimitMiddleware(inner, LIMIT), scope, [{"type": "http.disconnect", "marker": 2}])
    assert inner.seen == [(scope, {"type": "http.disconnect", "marker": 2})]


def test_security_headers_are_added_to_every_http_response():
    inner = Recorder()
    sent = drive(SecurityHeadersMiddleware(inner), http("/"))
    assert sent[0] == {"type": "http.response.start", "status": 200, "headers": [
        (b"x-inner", b"1"), (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer")]}
    assert sent[1] == {"type": "http.response.body", "body": b"ok"}


def test_security_headers_on_a_response_without_headers():
    async def bare(scope, receive, send):
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body", "body": b""})

    sent = drive(SecurityHeadersMiddleware(bare), http("/"))
    assert sent[0]["headers"] == [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                                  (b"referrer-policy", b"no-referrer")]


def test_security_headers_leave_non_http_scopes_alone():
    inner = ReadsOnce()
    scope = {"type": "lifespan"}
    sent = drive(SecurityHeadersMiddleware(inner), scope, [{"type": "lifespan.startup"}])
    assert sent[0]["headers"] == []
    assert inner.seen == [(scope, {"type": "lifespan.startup"})]


def test_request_refused_carries_status_and_message():
    err = RequestRefused(418, "teapot")
    assert (err.status, err.message, str(err), err.args) == (418, "teapot", "teapot", ("teapot",))
