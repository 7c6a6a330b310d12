"""A server killed (kill -9) during an HTTP indexing job leaves an index that verify
accepts (orphans at most, a warning), and a plain rerun completes it."""

from __future__ import annotations

import shutil
import time

import httpx
import lancedb
import pytest

from resedis.cli import main
from resedis.index.verify import verify_index
from resedis.testing.serve import ServeProcess

N_IMAGES = 96


def count_images(db) -> int:
    try:
        return lancedb.connect(str(db)).open_table("images").count_rows()
    except Exception:  # noqa: BLE001 - not created yet
        return 0


@pytest.mark.slow
def test_server_killed_mid_job(tmp_path, corpus, owlv2_spec):
    folder = tmp_path / "photos"
    folder.mkdir()
    sources = sorted(corpus.glob("*.jpg"))
    for i in range(N_IMAGES):
        shutil.copy(sources[i % len(sources)], folder / f"p{i:03d}.jpg")
    db = tmp_path / "db"
    server = ServeProcess(db, tmp_path / "serve.log", "--allow-index-root", str(tmp_path), "--model", owlv2_spec)
    try:
        answer = httpx.post(f"{server.url}/api/index", json={"folder": str(folder)}, timeout=30)
        assert answer.status_code == 202, answer.text
        deadline = time.time() + 240
        while time.time() < deadline and count_images(db) < 8:
            assert server.proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            time.sleep(0.05)
        server.proc.kill()  # SIGKILL: no cleanup of any kind
        server.proc.wait()
    finally:
        server.stop()
    killed_at = count_images(db)
    assert 8 <= killed_at < N_IMAGES, "the job finished before the kill; the test proves nothing"
    report = verify_index(db)
    assert report.ok, report.text()
    assert {p.kind for p in report.problems} <= {"orphan-regions"}
    assert main(["index", str(folder), "--db", str(db), "--quiet"]) == 0
    final = verify_index(db)
    assert final.ok and final.problems == [] and final.counts["images"] == N_IMAGES
