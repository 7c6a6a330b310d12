#!/usr/bin/env python
"""Regenerate ``docs/screenshot.png``: the web page showing REAL detections of the bundled
demo model (``--model demo``), so the picture changes when the model does.

Steps: render the demo's synthetic corpus (``resedis synth``, seed 2024 — never used in
training), index it with the spec ``demo`` (reused when WORK already holds it), start
``resedis serve`` on a free loopback port, and drive Debian's Chromium with Playwright:
type the query, wait for every hit image, take a 1280 x 900 screenshot. The presence
threshold on the page is the one the service reports — the demo model's own
``presence_threshold`` unless the index was calibrated — so present and below-threshold
hits appear as a user would see them.

Needs the ``[serve]`` extra, ``pip install playwright`` (no ``playwright install``) and
``apt-get install chromium``. Offline.

    python scripts/screenshot.py                           # -> docs/screenshot.png
    python scripts/screenshot.py --query "the white ring on the right" --out /tmp/shot.png
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# One of the demo corpus's own expressions, so the script can check the present hits
# against ground truth. With the bundled model when this was written: 6 of 6 present
# hits correct, then below-threshold near misses ("the red circle on the left" gave one
# present hit, a red square).
DEFAULT_QUERY = "the large red diamond"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def build(work: Path, images: int, seed: int) -> Path:
    """The demo corpus and its ``demo`` index under ``work`` (both reused when present)."""
    from resedis.index import IndexConfig, build_index
    from resedis.synth import generate

    corpus = work / "corpus"
    if not (corpus / "instances.json").is_file():
        queries = max(10, round(0.75 * images))
        generate(corpus, images=images, queries=queries, absent=max(2, queries // 8), seed=seed, overwrite=True)
    db = work / "index.db"
    build_index(corpus / "images", db, config=IndexConfig(model="demo", device="cpu"))
    return db


def _ground_truth_note(corpus: Path, query: str, hits: list[dict]) -> str:
    """How many present hits are correct (IoU >= 0.5 with a target of their image), when
    ``query`` is one of the corpus's own expressions (else: no ground truth)."""
    from resedis.io import load_dataset
    from resedis.metrics import match_detections
    from resedis.search import normalize_text
    from resedis.types import Hit

    dataset = load_dataset(corpus)
    q = next((q for q in dataset.queries if normalize_text(q.expression) == normalize_text(query)), None)
    if q is None:
        return "ground truth: the query is not one of the corpus's expressions; correctness not checked"
    by_name = {Path(info.file_name).as_posix(): image_id for image_id, info in dataset.images.items()}
    mapped = [Hit(image_id=by_name.get(h["image_id"], h["image_id"]), box=tuple(h["box"]), score=h["score"],
                  present=h["present"]) for h in hits]
    decided = [m for m in match_detections(q, mapped) if m.hit.present]
    return (f"ground truth ({q.type} query, {len(q.instances)} target(s) in the corpus): "
            f"{sum(m.is_tp for m in decided)} of {len(decided)} present hits correct")


def _wait_js(page, expression: str, timeout: float = 60.0) -> None:
    # page.evaluate polling, not wait_for_function: the page's CSP forbids Playwright's eval
    deadline = time.time() + timeout
    while not page.evaluate(expression):
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for: {expression}")
        time.sleep(0.05)


def shoot(url: str, query: str, top_k: int, out: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1).new_page()
            page.goto(url + "/")
            _wait_js(page, "() => document.getElementById('index-info').textContent.includes('images')")
            page.select_option("#top-k", str(top_k))
            page.fill("#q", query)
            page.press("#q", "Enter")
            page.wait_for_selector(".card")
            _wait_js(page, """() => { const imgs = [...document.querySelectorAll('.card .frame img')];
                                      return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }""")
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshot.png", help="PNG to write (default: docs/screenshot.png)")
    ap.add_argument("--query", default=DEFAULT_QUERY, help=f"query typed into the page (default: {DEFAULT_QUERY!r})")
    ap.add_argument("--top-k", type=int, choices=(10, 20, 50, 100), default=20, help="hits fetched (a value of the page's menu)")
    ap.add_argument("--images", type=int, default=200, help="corpus size (default 200, as `resedis demo`)")
    ap.add_argument("--seed", type=int, default=2024, help="corpus seed (default 2024, as `resedis demo`)")
    ap.add_argument("--work", type=Path, default=None, help="corpus + index folder, reused (default: a temporary one)")
    ap.add_argument("--chromium", default=os.environ.get("RESEDIS_CHROMIUM", "/usr/bin/chromium"), help="Chromium binary")
    args = ap.parse_args(argv)
    if not Path(args.chromium).exists():
        raise SystemExit(f"{args.chromium} not found (apt-get install chromium, or --chromium PATH)")
    try:
        import playwright.sync_api  # noqa: F401
    except ModuleNotFoundError:
        raise SystemExit("playwright is not installed (pip install playwright)") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory(prefix="resedis-shot-") as tmp:
        work = args.work or Path(tmp)
        db = build(work, args.images, args.seed)
        from resedis.testing.serve import ServeProcess

        try:
            server = ServeProcess(db, work / "serve.log", "--device", "cpu")
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
        try:
            import httpx

            body = httpx.get(f"{server.url}/api/search", params={"q": args.query, "top_k": args.top_k}, timeout=60).json()
            present = [h for h in body["hits"] if h["present"]]
            print(f"{args.query!r}: {len(body['hits'])} hits, {len(present)} present at threshold "
                  f"{body['threshold']:.3f} ({body['threshold_source']}); top scores "
                  f"{[round(h['score'], 3) for h in body['hits'][:5]]}", file=sys.stderr)
            print(_ground_truth_note(db.parent / "corpus", args.query, body["hits"]), file=sys.stderr)
            if not present:
                print("warning: no hit reaches the presence threshold; the screenshot shows only "
                      "below-threshold hits (try another --query)", file=sys.stderr)
            shoot(server.url, args.query, args.top_k, args.out, args.chromium)
        finally:
            server.stop()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
