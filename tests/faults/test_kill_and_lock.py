"""What already held and must keep holding: kill -9 mid-run leaves an index verify accepts
(at most orphans, a warning) and a rerun completes; a second writer is refused clearly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from resedis.cli import main
from resedis.index import open_index
from resedis.index.commit import Lock
from resedis.index.verify import verify_index


def test_kill_9_then_verify_then_resume(tmp_path, corpus, owlv2_spec):
    db = tmp_path / "db"
    cmd = [sys.executable, "-m", "resedis", "index", str(corpus), "--db", str(db), "--model", owlv2_spec,
           "--batch-size", "1", "--max-regions", "20", "--quiet"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    count, deadline = 0, time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                count = open_index(db).images_table.count_rows()
            except Exception:  # noqa: BLE001 - not created yet
                count = 0
            if count >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert 3 <= count < 12
    after_kill = verify_index(db)
    assert after_kill.ok, after_kill.text()  # orphans of the batch in flight are only a warning
    assert {p.kind for p in after_kill.problems} <= {"orphan-regions"}
    assert main(["index", str(corpus), "--db", str(db), "--quiet"]) == 0
    final = verify_index(db)
    assert final.ok and final.problems == [] and final.counts["images"] == 12


def test_a_second_writer_is_refused(db, corpus, capsys):
    with Lock(db):
        assert main(["index", str(corpus), "--db", str(db), "--quiet"]) == 2
        assert main(["repair", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.count("another process is writing this index") == 2 and "Traceback" not in err
