"""An unreadable file is skipped with reason "permission denied" — tested even though the
suite runs as root (root ignores file modes, so ``test_images``' chmod test skips there):
once with a ``PermissionError`` injected into the file open, once for real in a child
process that has dropped root for ``nobody`` before reading a mode-000 file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from PIL import Image

import resedis.io.images
from resedis.io.images import load_image
from resedis.types import Skipped

NOBODY = 65534


def test_injected_permission_error_is_a_skip(tmp_path, monkeypatch):
    path = tmp_path / "secret.jpg"
    Image.new("RGB", (4, 4)).save(path)
    real_open = open

    def denying_open(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(resedis.io.images, "open", denying_open, raising=False)
    out = load_image(path)
    assert isinstance(out, Skipped)
    assert (out.source, out.reason) == (str(path), "unreadable: permission denied")
    monkeypatch.undo()
    assert not isinstance(load_image(path), Skipped)  # the same file, readable: decoded


CHILD = textwrap.dedent(
    """
    import os, sys
    from PIL import Image
    from resedis.io.images import load_image  # imported as root: site-packages may be root-only
    Image.init()  # and PIL's format plugins too, which it imports lazily
    os.setgroups([])
    os.setgid({uid})
    os.setuid({uid})
    assert os.geteuid() == {uid}
    out = load_image(sys.argv[1])
    print(type(out).__name__, out.reason if hasattr(out, "reason") else "")
    """
)


def test_unreadable_file_is_skipped_for_a_user_without_permission():
    if os.geteuid() != 0:
        pytest.fail("this test drops root privileges in a child process: run the suite as root, or deselect it")
    folder = Path(tempfile.mkdtemp(prefix="resedis-perm-"))  # not under pytest's 0700 root-only tmp dir
    try:
        folder.chmod(0o755)
        locked, readable = folder / "locked.jpg", folder / "readable.jpg"
        Image.new("RGB", (4, 4)).save(locked)
        Image.new("RGB", (4, 4)).save(readable)
        locked.chmod(0o000)
        readable.chmod(0o644)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        results = {}
        for path in (locked, readable):
            proc = subprocess.run([sys.executable, "-c", CHILD.format(uid=NOBODY), str(path)], env=env,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-2000:]
            results[path.name] = proc.stdout.strip()
        assert results == {"locked.jpg": "Skipped unreadable: permission denied", "readable.jpg": "LoadedImage"}
    finally:
        shutil.rmtree(folder)
