"""The service's guards: API key, request-body limit, image-id and path checks.

Rules, in one place:

* With an API key configured, every ``/api`` path (including unknown ones, so routes
  cannot be enumerated) needs header ``X-API-Key``; the comparison is constant-time
  (``hmac.compare_digest``).
* Request bodies are capped (``413``) before any route sees them.
* An image is addressed by its **id only**. ``check_image_id`` refuses ids that could
  mean something to a filesystem (``..``, absolute, backslashes, NUL) with ``400``;
  the id is then looked up in the index's image table; only the path *stored in the
  index* is ever opened, and only after ``resolve_inside_roots`` has checked that its
  real path (symlinks followed) lies under one of the indexed roots.
"""

from __future__ import annotations

import hmac
import json
import os
import re
from pathlib import Path
from typing import Iterable

API_KEY_HEADER = "x-api-key"
MAX_IMAGE_ID_CHARS = 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


class RequestRefused(Exception):
    """A request refused with an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def check_image_id(image_id: str) -> str:
    """Return ``image_id`` if it is a plain relative id; raise ``RequestRefused(400)``.

    >>> check_image_id("shapes/0001.jpg")
    'shapes/0001.jpg'
    """
    if not image_id:
        raise RequestRefused(400, "image id is empty")
    if len(image_id) > MAX_IMAGE_ID_CHARS:
        raise RequestRefused(400, f"image id longer than {MAX_IMAGE_ID_CHARS} characters")
    if "\x00" in image_id or "\\" in image_id:
        raise RequestRefused(400, "image id contains a NUL or backslash character")
    if image_id.startswith(("/", "~")) or _DRIVE.match(image_id):
        raise RequestRefused(400, "image id must not be an absolute path")
    if any(part in ("", ".", "..") for part in image_id.split("/")):
        raise RequestRefused(400, "image id must not contain empty, '.' or '..' segments")
    return image_id


def check_query_text(q: str) -> str:
    """Return the search text ``q``; ``RequestRefused(400)`` when it is blank, holds control
    characters (NUL, escapes, ...; tab and newline are whitespace) or U+FFFD, which is what
    a percent-encoded byte sequence that is not UTF-8 (``%ff``) decodes to."""
    if not q.strip():
        raise RequestRefused(400, "q: empty query; describe the object to search for")
    if any((ord(c) < 32 and c not in "\t\n\r") or 0x7F <= ord(c) < 0xA0 for c in q):
        raise RequestRefused(400, "q: contains control characters")
    if "\ufffd" in q:
        raise RequestRefused(400, "q: not valid UTF-8 (percent-encode the text's UTF-8 bytes)")
    return q


def _is_within(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


def resolve_inside_roots(stored_path: str | os.PathLike, roots: Iterable[str | os.PathLike]) -> Path:
    """Real path of an indexed file, refusing (``403``) one that leaves every root.

    ``stored_path`` comes from the index, never from the request. Symlinks are
    followed: a link planted in the corpus that points outside is refused.
    """
    real = os.path.realpath(stored_path)
    real_roots = [os.path.realpath(r) for r in roots]
    if not any(_is_within(real, r) for r in real_roots):
        raise RequestRefused(403, "image file lies outside the indexed folders")
    if not os.path.isfile(real):
        raise RequestRefused(404, "image file no longer exists")
    return Path(real)


def resolve_index_folder(folder: str, allowed_roots: Iterable[Path]) -> Path:
    """Real path of a folder to index, which must lie under an allowed root (``403``)."""
    if not folder or "\x00" in folder:
        raise RequestRefused(400, "folder is empty or contains a NUL character")
    real = os.path.realpath(os.path.expanduser(folder))
    real_roots = [os.path.realpath(r) for r in allowed_roots]
    if not any(_is_within(real, r) for r in real_roots):
        raise RequestRefused(403, "folder is not under an allowed index root (--allow-index-root)")
    if not os.path.isdir(real):
        raise RequestRefused(400, "folder does not exist or is not a directory")
    return Path(real)


def api_key_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of the presented key with the configured one."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


async def _send_json(send, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """Pure ASGI middleware: ``/api`` paths need a matching ``X-API-Key`` header."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (scope["path"] == "/api" or scope["path"].startswith("/api/")):
            given = None
            for name, value in scope.get("headers", []):
                if name == API_KEY_HEADER.encode():
                    given = value.decode("latin-1")
                    break
            if not api_key_matches(given, self.api_key):
                await _send_json(
                    send,
                    401,
                    "missing or wrong API key: send it in the X-API-Key header",
                    [(b"www-authenticate", b"X-API-Key")],
                )
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Pure ASGI middleware: refuse request bodies over ``max_bytes`` with ``413``.

    A declared ``Content-Length`` over the limit is refused at once; a body without
    one (chunked) is read up to the limit, then replayed to the app.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, "invalid Content-Length header")
                    return
        if declared is not None and declared > self.max_bytes:
            await _send_json(send, 413, f"request body larger than {self.max_bytes} bytes")
            return
        if declared is not None:
            await self.app(scope, receive, send)
            return
        # No declared length: buffer (bounded) and replay.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_json(send, 413, f"request body larger than {self.max_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)


def _replay(messages: list[dict], then=None):
    queue = list(messages)

    async def receive():
        if queue:
            return queue.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


class SecurityHeadersMiddleware:
    """Adds ``nosniff`` and ``frame-ancestors 'none'`` to every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"x-frame-options", b"DENY"))
                headers.append((b"referrer-policy", b"no-referrer"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
