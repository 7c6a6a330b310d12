"""Writing a benchmark directory atomically.

Everything is written into a hidden staging directory next to ``out_dir`` and moved
into place with one rename at the end, so a crash or Ctrl-C never leaves a half-written
benchmark (only a ``.<name>.synth-tmp-*`` directory, removed on the way out).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from resedis.errors import ResedisError


def check_out_dir(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse a non-empty ``out_dir`` unless ``overwrite``; refuse a file."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ResedisError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ResedisError(f"{out_dir} is not empty; choose another directory or pass overwrite (--overwrite)")


@contextlib.contextmanager
def staged_dir(out_dir: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a staging directory; on success it replaces ``out_dir``."""
    out_dir = Path(out_dir).absolute()
    check_out_dir(out_dir, overwrite=overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.synth-tmp-", dir=out_dir.parent))
    os.chmod(stage, 0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield stage
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.synth-old-", dir=out_dir.parent))
            os.rename(out_dir, old / "x")
        os.rename(stage, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def write_json(path: Path, obj: Any, *, indent: int | None = None) -> None:
    """Deterministic JSON (keys in insertion order, UTF-8, trailing newline)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=indent, ensure_ascii=False)
        fh.write("\n")
