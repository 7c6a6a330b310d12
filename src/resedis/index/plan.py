"""What an indexing run has to do: the incremental rule, shared by every driver of an
:class:`resedis.index.session.IndexingSession` (single process and Ray)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from resedis.types import Skipped


@dataclass
class FileTask:
    """One file an indexing run has to read: its id (POSIX path relative to the root), path,
    size and mtime when planned, and the sha256 of the indexed version it replaces."""

    rel: str
    path: Path
    size: int
    mtime_ns: int
    known_sha: str | None  # sha256 of the indexed version, when the file was indexed before


@dataclass
class Plan:
    """What an indexing run has to do: ``tasks`` to (re-)encode, the ids of every file
    ``present`` in the folder, how many are ``unchanged`` (left alone), ``skips`` to
    record without reading (entries the folder walk refused, e.g. symlinks leaving it), and
    the ids of recorded skips to ``forget``: folders the walk refused before and now enters
    (a folder symlink with ``--follow-symlinks``, a folder readable again); indexed images
    to ``drop``: those under a folder the walk now refuses (the folder's skip covers them)."""

    tasks: list[FileTask]
    present: set[str]
    unchanged: int
    skips: list[tuple[FileTask, Skipped]] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)


def plan_tasks(files: list[Path], root: Path, indexed: dict[str, tuple], skipped_before: dict[str, tuple], *, rehash: bool,
               refused: Sequence[tuple[Path, str]] = ()) -> Plan:
    """The incremental rule, shared by the single-process and the Ray drivers.

    ``indexed``: image id -> (sha256, size, mtime_ns) of indexed images; ``skipped_before``:
    image id -> (size, mtime_ns) of recorded skips (:func:`resedis.index.commit.existing_entries`).
    A file whose size and mtime match its indexed row is unchanged (unless ``rehash``); a
    known bad file whose size and mtime did not change is not retried (and not a task);
    every other file is a task, carrying the indexed sha256 when it replaces an entry.

    ``refused``: ``(path, reason)`` from :func:`resedis.io.images.walk_images`; each becomes a
    skip (replacing an indexed entry of that id), keyed by the entry's own ``lstat`` so that a
    run that accepts it (``--follow-symlinks``) sees a change and reads it; an identical
    recorded skip is left alone.
    """
    tasks: list[FileTask] = []
    present: set[str] = set()
    unchanged = 0
    for path in files:
        rel = path.relative_to(root).as_posix()
        present.add(rel)
        try:
            st = path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        old = indexed.get(rel)
        if old is not None and not rehash and old[1] == size and old[2] == mtime:
            unchanged += 1
            continue
        if old is None and skipped_before.get(rel) == (size, mtime) and not rehash:
            continue  # known bad file, unchanged: not retried, still reported
        tasks.append(FileTask(rel, path, size, mtime, old[0] if old else None))
    skips: list[tuple[FileTask, Skipped]] = []
    for path, reason in refused:
        rel = path.relative_to(root).as_posix()
        present.add(rel)
        try:
            st = os.lstat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        old = indexed.get(rel)
        if old is None and skipped_before.get(rel) == (size, mtime) and not rehash:
            continue
        skips.append((FileTask(rel, path, size, mtime, old[0] if old else None), Skipped(str(path), reason)))
    forget = sorted(rel for rel in skipped_before if rel not in present and (root / rel).is_dir())
    refused_ids = {path.relative_to(root).as_posix() for path, _ in refused}
    drop = sorted(i for i in indexed if i not in present and _under(i, refused_ids))
    present.update(drop)  # removed here, not again by --prune
    return Plan(tasks, present, unchanged, skips, forget, drop)


def _under(image_id: str, folders: set[str]) -> bool:
    parts = image_id.split("/")
    return any("/".join(parts[:k]) in folders for k in range(1, len(parts)))
