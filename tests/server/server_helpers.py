"""Shared setup for the service tests (test_server_api.py, test_server_security.py,
test_server_ops.py): constants and :func:`build_corpus`. The ``corpus`` / ``service`` /
``client`` fixtures over it are in this folder's ``conftest.py``.

No fake backend: every request goes through ``SearchService`` -> ``resedis.search.Searcher``
over a LanceDB index built by ``resedis.index.build_index``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from PIL import Image

BASE = "http://127.0.0.1"
KEY = "s3cret-key-for-tests"


def build_corpus(base: Path, synth_small: Path, tiny_models: dict) -> dict:
    """A corpus with nested ids, a non-square PNG, a symlink leaving it, and its index.

    Layout: ``root/a.jpg, b.jpg, swap.jpg, wide.png, nested/deeper/c.jpg, d.jpg`` plus
    ``root/escape.jpg -> outside/secret.jpg`` (indexed because the index is built with
    ``follow_symlinks=True``: the server must refuse it all the same); after indexing,
    ``swap.jpg`` is replaced by a symlink to the outside file (a link planted after the fact).
    Returns ``{"root": Path, "outside": Path, "db": Path, "secret": bytes of the outside file}``.
    """
    from resedis.index import IndexConfig, build_index

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
    config = IndexConfig(model=f"owlv2:{tiny_models['owlv2']}", max_regions=8, follow_symlinks=True)
    build_index(root, db, config=config, progress=False)
    (root / "swap.jpg").unlink()
    (root / "swap.jpg").symlink_to(outside / "secret.jpg")
    return {"root": root, "outside": outside, "db": db, "secret": (outside / "secret.jpg").read_bytes()}


def assert_healthy(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def wait_until(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll ``condition()`` until it returns something truthy (returned), or fail after a
    generous ``timeout`` seconds naming ``what`` was awaited. Synchronises on an explicit
    condition; the deadline only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
