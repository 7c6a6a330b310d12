"""``resedis demo --serve`` end to end, in-process: the CLI renders a 12-image corpus,
indexes it with the bundled model and hands the app to uvicorn — here a stand-in that
records the app instead of listening — and the app answers with presence decided by
the demo model's own ``presence_threshold`` (not the 0.1 fallback)."""

from __future__ import annotations

from unittest import mock

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from resedis.cli import main as cli_main  # noqa: E402
from resedis.demo import demo_threshold  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_serve")
    calls = []
    with mock.patch("uvicorn.run", lambda app, **kw: calls.append((app, kw))):
        code = cli_main(["demo", "--out", str(out), "--images", "12", "--seed", "77", "--device", "cpu",
                         "--no-progress", "--serve", "--port", "8123"])
    assert code == 0 and len(calls) == 1
    app, kw = calls[0]
    assert (kw["host"], kw["port"]) == ("127.0.0.1", 8123)
    from resedis.io import load_dataset

    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, out, load_dataset(out / "corpus")


def test_demo_serve_uses_the_demo_threshold(served):
    client, out, dataset = served
    t = demo_threshold()
    assert t > 0.1  # else this test could not tell it from the fallback
    stats = client.get("/api/stats").json()
    assert stats["model"] == "demo" and stats["images"] == 12
    assert (stats["threshold"], stats["threshold_source"]) == (t, "checkpoint")
    assert "demo_model/resedis_checkpoint.json" in stats["threshold_origin"]
    hits = []
    for q in dataset.queries:
        body = client.get("/api/search", params={"q": q.expression, "top_k": 20}).json()
        assert (body["threshold"], body["threshold_source"]) == (t, "checkpoint")
        assert [h["present"] for h in body["hits"]] == [h["score"] >= t for h in body["hits"]]
        hits += body["hits"]
    # present and below-threshold hits both occur, and some hits the 0.1 fallback would
    # have called present are not
    assert any(h["present"] for h in hits)
    assert any(0.1 <= h["score"] < t and not h["present"] for h in hits)
    page = client.get("/")
    assert page.status_code == 200 and "Presence threshold" in page.text


def test_demo_serve_also_wrote_the_page(served):
    _, out, _ = served
    page = (out / "index.html").read_text()
    assert f"presence threshold {demo_threshold():.3f}" in page and "checkpoint" in page
