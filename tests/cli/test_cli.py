"""The `resedis` dispatcher: how errors reach the user."""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import sys
import resedis.cli.models as m

def run(args):
    raise {exc}

m.run = run
from resedis.cli import main
sys.exit(main(["models"]))
"""


def _run(exc: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _SCRIPT.format(exc=exc)], capture_output=True, text=True, timeout=60)


def test_broken_pipe_exits_quietly():
    """`resedis search ... --json | head -1`: the reader leaves; no traceback, no error line."""
    proc = _run("BrokenPipeError(32, 'Broken pipe')")
    assert proc.returncode == 141
    assert proc.stderr == ""


def test_os_error_is_one_line_exit_2():
    proc = _run("IsADirectoryError(21, 'Is a directory', '/out/metrics.json')")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: [Errno 21] Is a directory: '/out/metrics.json'"]


def test_storage_error_is_one_line_exit_74():
    """Permission, disk-full and I/O errors are storage failures: the path, the cause, exit 74."""
    proc = _run("PermissionError(13, 'Permission denied', '/out/metrics.json')")
    assert proc.returncode == 74
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: /out/metrics.json: permission denied")
