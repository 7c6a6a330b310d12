"""Disk full, I/O and permission errors end a command with one line naming the path and
the cause and exit code 74; the index stays consistent and a rerun completes it."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import uuid

import lancedb.table
import pytest

from resedis.cli import main
from resedis.index import open_index
from resedis.index.fs import Location
from resedis.index.verify import verify_index
from resedis.storage_errors import EXIT_STORAGE

LANCE_ENOSPC = ("lance error: LanceError(IO): No space left on device (os error 28), "
                "/root/.cargo/registry/src/index.crates.io-1/lance-file-13.0.0/src/writer/structural.rs:258:9")


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and "ambiguous" not in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def fail_on_call(monkeypatch, cls, name, n, exc):
    """Make ``cls.name`` raise ``exc`` on its ``n``-th call (1-based) and after."""
    real = getattr(cls, name)
    calls = {"n": 0}

    def wrapper(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= n:
            raise exc
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, wrapper)
    return calls


def index_argv(corpus, db, spec):
    return ["index", str(corpus), "--db", str(db), "--model", spec, "--batch-size", "4", "--max-regions", "20", "--quiet"]


def test_disk_full_in_lance_mid_run_then_rerun(tmp_path, corpus, owlv2_spec, capsys, monkeypatch):
    db = tmp_path / "db"
    calls = fail_on_call(monkeypatch, lancedb.table.LanceTable, "add", 4, RuntimeError(LANCE_ENOSPC))
    assert main(index_argv(corpus, db, owlv2_spec)) == EXIT_STORAGE
    assert calls["n"] >= 4
    line = one_line(capsys.readouterr().err)
    assert str(db) in line and "disk full" in line and "errno 28" in line
    assert open_index(db).stats()["images"] < 12  # stopped part-way
    monkeypatch.undo()
    assert main(index_argv(corpus, db, owlv2_spec)) == 0
    assert open_index(db).stats()["images"] == 12
    assert verify_index(db).ok


def test_permission_denied_on_the_manifest(tmp_path, corpus, owlv2_spec, capsys, monkeypatch):
    db = tmp_path / "db"
    target = str(db / "resedis.json")

    def denied(self, name, data):
        raise PermissionError(errno.EACCES, "Permission denied", target)

    monkeypatch.setattr(Location, "write_atomic", denied)
    assert main(index_argv(corpus, db, owlv2_spec)) == EXIT_STORAGE
    line = one_line(capsys.readouterr().err)
    assert target in line and "permission denied" in line


def test_io_error_while_reading(pristine, capsys, monkeypatch):
    fail_on_call(monkeypatch, lancedb.table.LanceTable, "count_rows", 1,
                 OSError(errno.EIO, "[Errno 5] Input/output error"))
    assert main(["stats", "--db", str(pristine)]) == EXIT_STORAGE
    line = one_line(capsys.readouterr().err)
    assert str(pristine) in line and "I/O error" in line


@pytest.fixture
def small_fs(tmp_path):
    """A real 4 MiB tmpfs (needs root and mount permission; skipped otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip() or 'mount failed'}); "
                    "the injected-error tests above cover the same paths")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_real_full_disk(small_fs, corpus, owlv2_spec, tmp_path):
    """Index onto a tmpfs left with 48 KiB free: one line and exit 74; free space, rerun: complete."""
    filler = small_fs / f"filler-{uuid.uuid4().hex}"
    st = os.statvfs(small_fs)
    with open(filler, "wb") as fh:
        fh.write(b"\0" * (st.f_bavail * st.f_frsize - 48 * 1024))
    db = small_fs / "db"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "resedis", *index_argv(corpus, db, owlv2_spec)]
    full = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert full.returncode == EXIT_STORAGE, full.stderr[-3000:]
    line = one_line(full.stderr)
    assert str(db) in line and "disk full" in line
    filler.unlink()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert open_index(db).stats()["images"] == 12
    assert verify_index(db).ok
