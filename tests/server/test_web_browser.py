"""The web page in a real browser: Debian's Chromium driven by Playwright.

The server is the real ``resedis serve`` command (a subprocess on a free loopback port)
over a tiny random OWLv2 index of a synthetic corpus. Screenshots go to
``test-artifacts/`` (random weights: the boxes mean nothing; ``docs/screenshot.png``
is made over the bundled demo model by ``scripts/screenshot.py``).

Needs: ``pip install playwright`` (no ``playwright install``) and ``apt-get install
chromium`` (``/usr/bin/chromium``); skipped with the reason when either is missing.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from resedis.pipelines import DEFAULT_PIPELINE

from requires import require, require_chromium

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
KEY = "browser-test-key"
QUERY = "red circle"
TOP_K = 20
TOLERANCE_PX = 2.0

sync_api = require("playwright.sync_api", "dev")
CHROMIUM = require_chromium()

import httpx  # noqa: E402
from PIL import Image  # noqa: E402
from servekit import tiny_sam  # noqa: E402

from resedis.testing.serve import ServeProcess  # noqa: E402




@pytest.fixture(scope="module")
def corpus(tmp_path_factory, synth_small, tiny_models):
    """Images (one non-square, two in a nested folder) and their tiny-OWLv2 index."""
    from resedis.index import IndexConfig, build_index

    base = tmp_path_factory.mktemp("web")
    root = base / "photos"
    (root / "more" / "shots").mkdir(parents=True)
    src = sorted((synth_small / "images").glob("*.jpg"))
    for p in src[:6]:
        shutil.copy(p, root / p.name)
    for p in src[6:8]:
        shutil.copy(p, root / "more" / "shots" / p.name)
    with Image.open(src[8]) as im:  # a wide image, so scaling differs per axis from a square one
        im.crop((0, 0, im.width, im.height * 2 // 5)).save(root / "more" / "wide.png")
    with Image.open(src[9]) as im:  # and a tall one
        im.crop((0, 0, im.width // 3, im.height)).save(root / "tall.png")
    db = base / "db"
    build_index(root, db, config=IndexConfig(model=f"owlv2:{tiny_models['owlv2']}", max_regions=12), progress=False)
    sam = tiny_sam(tiny_models, base / "sam")
    return {"root": root, "db": db, "base": base, "sam": sam}


@pytest.fixture(scope="module")
def server(corpus):
    srv = ServeProcess(corpus["db"], corpus["base"] / "serve.log", "--segmenter", f"sam:{corpus['sam']}")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))
    yield pg
    context.close()


def _shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path


def _wait_js(page, expression: str, arg=None, timeout: float = 30.0) -> None:
    """Poll a JS predicate with ``page.evaluate`` (not ``wait_for_function``: Playwright
    polls that with ``eval``, which the page's Content-Security-Policy forbids)."""
    deadline = time.time() + timeout
    while not page.evaluate(expression, arg):
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for: {expression}")
        time.sleep(0.05)


def _wait_images_loaded(page, selector: str) -> None:
    _wait_js(
        page,
        """(sel) => { const imgs = [...document.querySelectorAll(sel)];
                     return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }""",
        selector,
    )


def _geometry(page, card_selector: str) -> list[dict]:
    """Per drawn box of every card: the card's displayed image rect and the box's on-screen rect."""
    return page.eval_on_selector_all(
        card_selector,
        """cards => cards.flatMap(card => {
             const img = card.querySelector('.frame img').getBoundingClientRect();
             return [...card.querySelectorAll('.overlay g')].map(g => {
               const box = g.querySelector('path.box').getBoundingClientRect();
               return {index: Number(g.dataset.index), card: Number(card.dataset.index),
                       img: [img.left, img.top, img.width, img.height],
                       box: [box.left, box.top, box.right, box.bottom]};
             });
           })""",
    )


def _groups(hits: list[dict]) -> list[list[int]]:
    """Hit indices per image, images in the order of their best hit (one card each)."""
    groups: dict[str, list[int]] = {}
    for i, h in enumerate(hits):
        groups.setdefault(h["image_id"], []).append(i)
    return list(groups.values())


def _assert_box_matches(geom: dict, box: list[float], size: tuple[int, int]) -> None:
    left, top, width, height = geom["img"]
    w, h = size
    # The displayed image keeps the file's aspect ratio ...
    assert width / w == pytest.approx(height / h, abs=TOLERANCE_PX / min(w, h))
    sx, sy = width / w, height / h
    expected = [left + box[0] * sx, top + box[1] * sy, left + box[2] * sx, top + box[3] * sy]
    # ... and the drawn box is the returned box scaled to it.
    for got, want in zip(geom["box"], expected):
        assert abs(got - want) <= TOLERANCE_PX, (geom, box, size, expected)


def test_search_draw_filter_open(page, server, corpus):
    api = httpx.get(f"{server.url}/api/search", params={"q": QUERY, "top_k": TOP_K}).json()
    hits = api["hits"]
    assert hits, "the tiny index returned no hit"
    sizes = {}
    for h in hits:
        with Image.open(corpus["root"] / h["image_id"]) as im:  # ground truth for the scaling
            sizes[h["image_id"]] = im.size

    page.goto(server.url + "/")
    assert page.locator("#empty").is_visible()
    _wait_js(page, "() => document.getElementById('index-info').textContent.includes('images')")
    assert "10 images" in page.locator("#index-info").inner_text()

    # Search with the keyboard.
    page.select_option("#top-k", str(TOP_K))
    page.fill("#q", QUERY)
    page.press("#q", "Enter")
    page.wait_for_selector(".card")
    assert not page.locator("#empty").is_visible()
    cards = page.locator(".card")
    groups = _groups(hits)
    assert len(groups) < len(hits), "need an image with several hits to test one card per image"
    assert cards.count() == len(groups)  # one card per image, with all its boxes
    _wait_images_loaded(page, ".card .frame img")
    texts = cards.locator(".score").all_inner_texts()
    assert texts == [f"{hits[g[0]]['score']:.3f}" for g in groups]  # each image's best score
    assert cards.locator(".name").all_inner_texts() == [hits[g[0]]["image_id"] for g in groups]

    # Every drawn box sits on the returned coordinates, scaled to the displayed image.
    geoms = _geometry(page, ".card")
    assert sorted(g["index"] for g in geoms) == list(range(len(hits)))  # every hit drawn once
    for g in geoms:
        hit = hits[g["index"]]
        assert hits[g["card"]]["image_id"] == hit["image_id"]
        _assert_box_matches(g, hit["box"], sizes[hit["image_id"]])
    _shot(page, "serve-results.png")

    # The slider re-labels cards from the scores, without a new request.
    requests = []
    page.on("request", lambda r: requests.append(r.url) if "/api/search" in r.url else None)
    scores = sorted({h["score"] for h in hits})
    assert len(scores) >= 3, "need distinct scores to test the slider"
    for k in (len(scores) // 3, 2 * len(scores) // 3):
        t = (scores[k - 1] + scores[k]) / 2  # between two scores: no rounding ambiguity
        page.locator("#threshold").fill(repr(t))
        expected = sum(h["score"] >= t for h in hits)
        images_present = sum(any(hits[i]["score"] >= t for i in g) for g in groups)
        present = page.locator('.card[data-present="true"]')
        assert present.count() == images_present
        assert 0 < expected < len(hits)
        assert page.locator("#status").get_attribute("data-present") == str(expected)
        assert page.locator(".card.below").count() == len(groups) - images_present
        labels = cards.locator(".badge").all_inner_texts()
        assert labels == [("present" if hits[g[0]]["score"] >= t else "below threshold") for g in groups]
        assert cards.locator("path.box.below").count() == len(hits) - expected
        page.uncheck("#show-below")
        assert page.locator(".cell:visible").count() == images_present
        page.check("#show-below")
        assert page.locator(".cell:visible").count() == len(groups)
    _shot(page, "serve-threshold.png")  # present and below-threshold hits side by side
    page.locator("#threshold").fill("0")
    assert page.locator('.card[data-present="true"]').count() == len(groups)
    assert requests == []

    # Open a hit with the keyboard: the large view shows every hit of that image.
    target = max(range(len(hits)), key=lambda i: sum(h["image_id"] == hits[i]["image_id"] for h in hits))
    image_id = hits[target]["image_id"]
    same = [i for i, h in enumerate(hits) if h["image_id"] == image_id]
    page.locator(f'.card[data-index="{target}"]').focus()
    page.keyboard.press("Enter")
    dialog = page.locator("#viewer")
    dialog.wait_for(state="visible")
    assert image_id in page.locator("#viewer-title").inner_text()
    assert page.locator("#viewer path.box").count() == len(same)
    assert page.locator("#viewer-list li").count() == len(same)
    _wait_images_loaded(page, "#viewer .frame img")
    big = page.eval_on_selector_all(
        "#viewer .overlay g",
        """gs => gs.map(g => { const img = g.closest('.frame').querySelector('img').getBoundingClientRect();
                               const b = g.querySelector('path.box').getBoundingClientRect();
                               return {index: Number(g.dataset.index), img: [img.left, img.top, img.width, img.height],
                                       box: [b.left, b.top, b.right, b.bottom]}; })""",
    )
    assert sorted(g["index"] for g in big) == same
    for g in big:
        _assert_box_matches(g, hits[g["index"]]["box"], sizes[image_id])
    assert big[0]["img"][2] > geoms[0]["img"][2]  # really larger than the card
    assert page.locator("#viewer path.box.selected").count() == 1
    _shot(page, "serve-viewer.png")
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    assert page.evaluate("document.activeElement.dataset.index") == str(target)
    assert page.errors == []


def test_find_more_like_this_and_filters(page, server):
    """"Find more like this" on a box of the large view runs a query by example; the
    filter row restricts the search; cards show what /api/search answers."""
    page.goto(server.url + "/")
    page.select_option("#top-k", str(TOP_K))
    page.fill("#q", QUERY)
    page.press("#q", "Enter")
    page.wait_for_selector(".card")
    first = page.locator(".card").first
    image_id = first.locator(".name").inner_text()
    first.click()
    page.locator("#viewer").wait_for(state="visible")
    hit = httpx.get(f"{server.url}/api/search", params={"q": QUERY, "top_k": TOP_K}).json()["hits"][0]
    assert hit["image_id"] == image_id
    with page.expect_response(lambda r: "like_image_id=" in r.url) as answer:
        page.locator("#viewer-list li").first.locator("button.like").click()
    body = answer.value.json()
    assert body["example"]["image_id"] == image_id and body["query"].startswith(f"like {image_id}")
    page.locator("#viewer").wait_for(state="hidden")
    _wait_js(page, "(q) => document.getElementById('status').textContent.includes(q)", body["query"])
    want = list(dict.fromkeys(h["image_id"] for h in body["hits"]))
    assert page.locator(".card .name").all_inner_texts() == want
    box = ",".join(f"{v:.2f}" for v in hit["box"])
    api = httpx.get(f"{server.url}/api/search", params={"like_image_id": image_id, "box": box, "top_k": TOP_K}).json()
    assert [h["image_id"] for h in api["hits"]] == [h["image_id"] for h in body["hits"]]
    _shot(page, "serve-like.png")
    # The filter row: only images below more/ (the page re-runs the last search).
    page.locator("#filters summary").click()
    page.fill("#f-folder", "more")
    page.locator("#f-folder").dispatch_event("change")
    _wait_js(page, "() => [...document.querySelectorAll('.card .name')].every(n => n.textContent.startsWith('more/'))")
    names = page.locator(".card .name").all_inner_texts()
    assert names and all(n.startswith("more/") for n in names)
    assert page.errors == []


def test_error_and_empty_states(page, server):
    page.goto(server.url + "/?q=" + "x" * 600)  # longer than the server accepts
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "HTTP 422" in error.inner_text() and "at most 500" in error.inner_text()
    assert page.locator(".card").count() == 0
    _shot(page, "serve-error.png")
    page.fill("#q", "   ")
    page.press("#q", "Enter")
    assert "Type a description" in error.inner_text()
    page.fill("#q", "blue square")
    page.press("#q", "Enter")
    page.wait_for_selector(".card")
    assert not error.is_visible()
    assert page.errors == []


def test_pipeline_choice_and_masks(page, server):
    page.goto(server.url + "/")
    select = page.locator("#pipeline")
    select.wait_for(state="visible")  # more than one pipeline registered
    assert select.input_value() == DEFAULT_PIPELINE  # the page offers the library's default first
    assert "owl+rerank" in select.locator("option").all_inner_texts()
    page.check("#masks")
    page.select_option("#top-k", "10")
    page.fill("#q", QUERY)
    page.press("#q", "Enter")
    page.wait_for_selector(".card image.mask", timeout=60_000)
    api = httpx.get(f"{server.url}/api/search", params={"q": QUERY, "top_k": 10, "masks": "true"}, timeout=60).json()
    assert page.locator(".card").count() == len(_groups(api["hits"]))  # one card per image
    assert page.locator(".card image.mask").count() == sum(h["mask"] is not None for h in api["hits"]) == len(api["hits"])
    # A pipeline without its weights (offline) shows the server's message, not a broken page.
    page.select_option("#pipeline", "owl+rerank")
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=60_000)
    assert "HTTP 400" in error.inner_text() and "not found" in error.inner_text()
    assert page.errors == []


def test_rle_decoder_matches_pycocotools(page, server):
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    page.goto(server.url + "/")
    for h, w in ((7, 5), (40, 64), (33, 17)):
        m = np.zeros((h, w), dtype=np.uint8)
        m[rng.integers(0, h, 30), rng.integers(0, w, 30)] = 1
        m[h // 4 : h // 2, w // 3 : w // 2] = 1
        rle = mask_utils.encode(np.asfortranarray(m))
        rle = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}
        got = page.evaluate("rle => Array.from(window.resedis.decodeRle(rle))", rle)
        assert np.array_equal(np.array(got, dtype=np.uint8).reshape(h, w), mask_utils.decode(rle))


def test_page_with_api_key(browser, corpus):
    srv = ServeProcess(corpus["db"], corpus["base"] / "serve-key.log", "--api-key", KEY)
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(srv.url + "/")
        key_form = page.locator("#key-form")
        key_form.wait_for(state="visible")  # /api/stats answered 401
        page.fill("#api-key", KEY)
        page.press("#api-key", "Enter")
        key_form.wait_for(state="hidden")
        page.select_option("#top-k", "10")
        page.fill("#q", QUERY)
        page.press("#q", "Enter")
        page.wait_for_selector(".card")
        _wait_images_loaded(page, ".card .frame img")  # fetched with the key header, shown as blobs
        assert page.eval_on_selector(".card img", "img => img.src.startsWith('blob:')")
        context.close()
    finally:
        srv.stop()
    assert "X-API-Key" in (corpus["base"] / "serve-key.log").read_text()


def test_docs_page_renders_every_endpoint_offline(page, server):
    """/docs in the browser (no network): every operation of /openapi.json is rendered,
    with the search parameters' limits."""
    spec = httpx.get(f"{server.url}/openapi.json").json()
    operations = [(m.upper(), path) for path, ops in spec["paths"].items() for m in ops]
    outside = []
    page.on("request", lambda r: None if r.url.startswith(server.url) else outside.append(r.url))
    page.goto(f"{server.url}/docs")
    _wait_js(page, "() => document.querySelectorAll('section.endpoint').length > 0")
    rendered = page.eval_on_selector_all("section.endpoint h2", "hs => hs.map(h => [h.querySelector('.method').textContent, h.childNodes[1].textContent])")
    assert [tuple(r) for r in rendered] == operations
    search = page.locator("section.endpoint", has_text="/api/search").first.inner_text()
    assert "top_k" in search and "≤ 200" in search and "length ≤ 500" in search
    assert not outside and not page.errors, (outside, page.errors)
    _shot(page, "docs.png")


def test_cli_says_it_binds_loopback(server):
    log = server.log.read_text()
    assert f"http://127.0.0.1:{server.port}/" in log and "loopback only" in log
