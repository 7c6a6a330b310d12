"""Fault injection for the fault suite: damage an index on disk the way the world does.

Every helper acts on files only (no resedis code), so a test states the damage plainly:
flip bytes in a data file, truncate it, delete it, delete a table directory, write a
manifest field of the wrong type. :func:`settle` first drops old table versions and
unreferenced files, so that every data file left is one the current version reads
(damage to a file no version reads would prove nothing).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import warnings
from pathlib import Path

TABLES = ("images", "regions", "skipped")


def settle(db: Path) -> None:
    """Keep only the latest version of each table and the data files it reads."""
    import lancedb

    conn = lancedb.connect(str(db))
    for name in TABLES:
        if (db / f"{name}.lance").is_dir():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "removes every version except the latest": meant
                conn.open_table(name).optimize(cleanup_older_than=dt.timedelta(0), delete_unverified=True)


def data_files(db: Path, table: str) -> list[Path]:
    """The table's data files, largest first (after :func:`settle`: the ones it reads)."""
    files = list((db / f"{table}.lance" / "data").glob("*.lance"))
    return sorted(files, key=lambda p: (-p.stat().st_size, p.name))


def flip_bytes(path: Path, offset: int | None = None, count: int = 256) -> tuple[int, int]:
    """XOR ``count`` bytes of ``path`` with 0xFF from ``offset`` (default: the middle).
    Returns (offset, count) as applied."""
    size = path.stat().st_size
    count = min(count, size)
    if offset is None:
        offset = max(0, size // 2 - count // 2)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        data = fh.read(count)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))
    return offset, len(data)


def truncate(path: Path, keep: float = 0.5) -> int:
    """Cut ``path`` to ``keep`` of its size; returns the new size."""
    size = int(path.stat().st_size * keep)
    os.truncate(path, size)
    return size


def delete_table(db: Path, table: str) -> None:
    shutil.rmtree(db / f"{table}.lance")


def manifest(db: Path) -> dict:
    return json.loads((db / "resedis.json").read_text())


def set_manifest_field(db: Path, field: str, value) -> None:
    """Write ``value`` (any JSON value, e.g. the wrong type) into the manifest field."""
    data = manifest(db)
    data[field] = value
    (db / "resedis.json").write_text(json.dumps(data, indent=2))


def delete_manifest_field(db: Path, field: str) -> None:
    data = manifest(db)
    del data[field]
    (db / "resedis.json").write_text(json.dumps(data, indent=2))


def copy_index(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def overwrite_bytes(db: Path, table: str, old: bytes, new: bytes) -> int:
    """Replace every occurrence of ``old`` by ``new`` (same length) in the table's data
    files: bit rot aimed at chosen stored values (e.g. one row's vector). Returns how many
    occurrences were replaced. LanceDB refuses to write NaN vectors, rot does not ask."""
    assert len(old) == len(new)
    count = 0
    for path in data_files(db, table):
        data = path.read_bytes()
        if old in data:
            count += data.count(old)
            path.write_bytes(data.replace(old, new))
    return count
