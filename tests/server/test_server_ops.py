"""HTTP service over the REAL engine (corpus: ``server_helpers``): running it: health
and back-pressure while the model is busy, indexing jobs, and the ``resedis serve`` command."""

from __future__ import annotations

import shutil
import threading

import pytest

from requires import require

require("fastapi", "serve")
require("httpx", "serve")

from fastapi.testclient import TestClient  # noqa: E402

from resedis.server import ServeConfig, create_app  # noqa: E402
from server_helpers import BASE, KEY, assert_healthy, wait_until  # noqa: E402


# ---- concurrency -----------------------------------------------------------------
class ObservedLock:
    """A drop-in for ``SearchService.model_lock`` that reports when a thread has to wait
    for it: ``waiting`` is set once an acquire finds the lock taken (the explicit
    condition "the search is blocked on the model", instead of sleeping and hoping)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.waiting = threading.Event()

    def __enter__(self):
        if not self._lock.acquire(blocking=False):
            self.waiting.set()
            self._lock.acquire()
        return self

    def __exit__(self, *exc):
        self._lock.release()


def in_thread(fn, deadline_s: float = 120.0):
    """Run ``fn`` in a thread; its result, or an AssertionError if it has not returned
    after a generous deadline (a deadlock, not a slow machine)."""
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("result", fn()), daemon=True)
    worker.start()
    worker.join(deadline_s)
    assert not worker.is_alive(), f"{fn} still blocked after {deadline_s} s"
    return out["result"]


def test_healthz_stays_responsive_during_a_slow_search(client, service, monkeypatch):
    lock = ObservedLock()
    monkeypatch.setattr(service, "model_lock", lock)
    results = {}

    def slow_search():
        results["search"] = client.get("/api/search", params={"q": "a slow query", "top_k": 3})

    with lock:  # the model is busy: the search must wait for it
        worker = threading.Thread(target=slow_search)
        worker.start()
        assert lock.waiting.wait(120), "the search never reached the model lock"
        assert worker.is_alive() and "search" not in results  # really blocked on the model
        # health and images answer while the model is held (they would deadlock here if
        # they needed it; the deadline only turns such a hang into a failure)
        for _ in range(5):
            in_thread(lambda: assert_healthy(client))
        assert in_thread(lambda: client.get("/api/images/a.jpg/thumb")).status_code == 200
        assert "search" not in results  # still waiting: the answers above did not need the model
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert results["search"].status_code == 200 and results["search"].json()["hits"]


def test_waiting_searches_are_bounded_with_429(client, service, monkeypatch):
    lock = ObservedLock()
    monkeypatch.setattr(service, "model_lock", lock)
    monkeypatch.setattr(service, "max_pending", 1)
    results = {}
    with lock:
        worker = threading.Thread(target=lambda: results.setdefault("first", client.get("/api/search?q=blue")))
        worker.start()
        assert lock.waiting.wait(120), "the first search never reached the model lock"
        r = in_thread(lambda: client.get("/api/search?q=green"))
        assert r.status_code == 429 and r.json()["detail"] == "1 searches already waiting; retry shortly"
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert results["first"].status_code == 200


# ---- indexing jobs ---------------------------------------------------------------
def _wait_job(c, job_id, timeout=300):
    job = wait_until(lambda: (j := c.get(f"/api/jobs/{job_id}").json())["state"] in ("done", "failed") and j,
                     timeout, f"job {job_id} to finish")
    return job


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
        # the catalog re-reads the image table at most once a second: poll, do not sleep
        wait_until(lambda: c.get("/api/images/later.jpg").status_code == 200, 60, "later.jpg to become servable")
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


def test_the_service_reads_the_index_at_start_not_at_the_first_query(corpus):
    """Opening the service warms its Searcher: the corpus is read (and, on this small index
    without a vector index, the region matrix), so the first query pays no load."""
    from resedis.server.engine import SearchService

    svc = SearchService(corpus["db"])
    try:
        searcher = svc.searcher
        assert searcher._corpus is not None and searcher._corpus.vectors_loaded
        assert searcher.ann is not None and not searcher.ann.available()  # no vector index here: exact path
    finally:
        svc.close()
