"""``resedis verify``: check an index the way ``git fsck`` checks a repository.

Every check reads the index as it is on disk, never trusting one part to vouch for
another, and each problem found is named with what is wrong, where, and the fix:

* the manifest: missing, not JSON, a field of the wrong type or range
  (:mod:`resedis.index.manifest_fields`);
* the tables: a table directory missing, a data file that is not a whole Lance file
  (its footer magic is gone: truncated or overwritten), rows that fail to decode (a data
  file missing or damaged: the rows that still decode are kept apart from those lost);
* the rows: non-finite vectors, boxes, objectness or image vectors; boxes outside their
  image or inverted; an image whose region count differs from its ``n_regions``; the
  same image twice; regions left by an interrupted batch (orphans: harmless, readers
  ignore them, the next run deletes them);
* bit rot: each image's checksum (:mod:`resedis.index.checksum`) recomputed from its rows
  as read back; an index built before checksums were recorded is said to have none;
* with ``deep``: every indexed image's source file, missing or with a content hash other
  than the stored one.

:func:`verify_index` returns a :class:`VerifyReport` (``ok`` is False when any problem has
severity ``error``); ``report.damaged_images`` / ``lost_tables`` tell repair what to do.
A table is read in chunks, and a chunk that fails is split until the rows that decode
are found, so one damaged data file costs only its own rows.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from resedis.errors import ResedisError
from resedis.index.checksum import image_checksum, merge_sums, region_digest_sums
from resedis.index.columns import finite_vectors
from resedis.index.fs import Location, as_location
from resedis.index.manifest import MANIFEST_NAME
from resedis.index.manifest_fields import manifest_problems
from resedis.index.sane import finite_rows, possible_boxes
from resedis.index.store import CHECKSUM, IMAGES, REGIONS, SKIPPED
from resedis.io.images import sha256_file
from resedis.storage_errors import first_line

CORE_TABLES = (IMAGES, REGIONS, SKIPPED)
CHECKSUM_COLUMN = CHECKSUM
# Rows read per chunk; a chunk that fails is split down to _MIN_CHUNK rows.
_CHUNK = 8192
_MIN_CHUNK = 16
# Image ids listed per problem in the JSON report (the count is always complete).
MAX_LISTED = 50
LANCE_MAGIC = b"LANC"

ERROR, WARNING = "error", "warning"


def _fatal(exc: BaseException) -> bool:
    """Errors a read must never swallow (Lance's Rust panics arrive as BaseException)."""
    return isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError))


def short_error(exc: BaseException) -> str:
    """``Type: first line`` of a read error (Lance's Rust source location dropped)."""
    return f"{type(exc).__name__}: {first_line(exc)}"


@dataclass
class Problem:
    """One thing wrong with an index. ``kind`` is a stable key (e.g. ``"non-finite"``),
    ``severity`` ``"error"`` (damage: verify fails) or ``"warning"`` (harmless or
    informational), ``message`` says what and where, ``fix`` what to run."""

    kind: str
    severity: str
    message: str
    fix: str
    table: str | None = None
    path: str | None = None
    image_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {"kind": self.kind, "severity": self.severity, "message": self.message, "fix": self.fix}
        if self.table is not None:
            out["table"] = self.table
        if self.path is not None:
            out["path"] = self.path
        if self.image_ids:
            out["images"] = len(self.image_ids)
            out["image_ids"] = sorted(self.image_ids)[:MAX_LISTED]
        return out

    def line(self) -> str:
        return f"{self.severity}: {self.message}\n  fix: {self.fix}"


@dataclass
class VerifyReport:
    """What :func:`verify_index` found. ``counts``: rows read per table, images checked
    against a checksum, and so on."""

    db: str
    deep: bool
    problems: list[Problem] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    damaged_images: set[str] = field(default_factory=set)  # ids whose rows must be re-encoded
    missing_sources: set[str] = field(default_factory=set)  # ids whose source file is gone
    lost_tables: set[str] = field(default_factory=set)  # tables whose directory is gone
    damaged_tables: set[str] = field(default_factory=set)  # tables with rows that fail to decode
    unrecorded_checksums: dict[str, str] = field(default_factory=dict)  # id -> checksum of its rows as read, where none is stored
    image_paths: dict[str, str] = field(default_factory=dict)  # image id -> source path, as stored
    manifest: dict | None = None  # the parsed manifest (None: missing or not JSON)
    manifest_ok: bool = False

    @property
    def ok(self) -> bool:
        return not any(p.severity == ERROR for p in self.problems)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    def add(self, kind: str, severity: str, message: str, fix: str, **where) -> Problem:
        problem = Problem(kind, severity, message, fix, **where)
        self.problems.append(problem)
        return problem

    def to_json(self) -> dict:
        return {
            "db": self.db,
            "ok": self.ok,
            "deep": self.deep,
            "errors": len(self.errors),
            "warnings": len(self.problems) - len(self.errors),
            "counts": self.counts,
            "problems": [p.to_json() for p in self.problems],
        }

    def text(self) -> str:
        head = f"{self.db}: " + ("ok" if self.ok else f"DAMAGED ({len(self.errors)} problem(s))")
        facts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        lines = [head + (f" — {facts}" if facts else "")]
        lines += [p.line() for p in self.problems]
        return "\n".join(lines)


# -- reading what can be read ------------------------------------------------------------


def read_salvage(table, columns: list[str] | None = None, chunk: int = _CHUNK) -> Iterator[pa.Table | BaseException]:
    """Yield the rows of a LanceDB table in chunks (Arrow tables, ``columns`` or all); for
    rows that fail to decode, yield the exception instead (once per failed run of rows,
    after splitting the chunk to find the rows that still decode)."""
    try:
        n = table.count_rows()
    except BaseException as exc:  # noqa: BLE001 - damage shows up as any error, even a panic
        if _fatal(exc):
            raise
        yield exc
        return

    def take(start: int, stop: int) -> Iterator[pa.Table | BaseException]:
        try:
            query = table.take_offsets(list(range(start, stop)))
            if columns is not None:
                query = query.select(columns)
            yield query.to_arrow()
        except BaseException as exc:  # noqa: BLE001
            if _fatal(exc):
                raise
            if stop - start <= _MIN_CHUNK:
                yield exc
                return
            mid = (start + stop) // 2
            yield from take(start, mid)
            yield from take(mid, stop)

    for start in range(0, n, chunk):
        yield from take(start, min(start + chunk, n))


def _lost_rows(table, chunks: list) -> int:
    try:
        return max(0, table.count_rows() - sum(c.num_rows for c in chunks if isinstance(c, pa.Table)))
    except BaseException as exc:  # noqa: BLE001
        if _fatal(exc):
            raise
        return 0


def _bad_footers(table_dir: Path) -> list[Path]:
    """Data files of a local table that are not whole Lance files (no footer magic)."""
    bad = []
    data = table_dir / "data"
    if not data.is_dir():
        return bad
    for path in sorted(data.glob("*.lance")):
        try:
            size = path.stat().st_size
            with open(path, "rb") as fh:
                if size < len(LANCE_MAGIC):
                    bad.append(path)
                    continue
                fh.seek(size - len(LANCE_MAGIC))
                if fh.read(len(LANCE_MAGIC)) != LANCE_MAGIC:
                    bad.append(path)
        except OSError:
            bad.append(path)
    return bad


def _matrix(column, width: int) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], type=column.type)
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, width)


# -- the checks ----------------------------------------------------------------------------


def _check_manifest(loc: Location, report: VerifyReport, db: str) -> None:
    try:
        raw = loc.read_bytes(MANIFEST_NAME)
    except FileNotFoundError:
        report.add(
            "manifest-missing", ERROR, f"{loc / MANIFEST_NAME} is missing",
            f"run: resedis repair --db {db} --model SPEC (the manifest is rebuilt from the tables; "
            "SPEC is the model the index was built with)",
            path=str(loc / MANIFEST_NAME),
        )
        return
    except OSError as exc:
        report.add("manifest-unreadable", ERROR, f"{loc / MANIFEST_NAME} cannot be read ({exc})",
                   f"check the file's permissions, or run: resedis repair --db {db}", path=str(loc / MANIFEST_NAME))
        return
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        report.add("manifest-not-json", ERROR, f"{loc / MANIFEST_NAME} is not valid JSON ({exc})",
                   f"run: resedis repair --db {db} (the manifest is rebuilt from the tables)", path=str(loc / MANIFEST_NAME))
        return
    report.manifest = data if isinstance(data, dict) else None
    problems = manifest_problems(data)
    for p in problems:
        report.add("manifest-field", ERROR, f"{loc / MANIFEST_NAME}: " + p.message(db).split(". Fix: ")[0],
                   p.fix.format(db=db), path=str(loc / MANIFEST_NAME))
    report.manifest_ok = not problems


def _open_tables(loc: Location, report: VerifyReport, db: str) -> dict:
    present = {name: loc.exists(f"{name}.lance") for name in CORE_TABLES}
    if not any(present.values()):
        report.add("no-tables", WARNING, f"{db}: no tables yet (nothing has been indexed into it)",
                   f"index a folder: resedis index IMAGES_DIR --db {db}")
        return {}
    tables = {}
    conn = None
    try:
        conn = loc.connect()
    except ResedisError as exc:
        report.add("tables-unreadable", ERROR, str(exc), f"check the path and permissions of {db}")
        return {}
    for name in CORE_TABLES:
        if not present[name]:
            report.lost_tables.add(name)
            what = "the skip records are lost (those files would be retried)" if name == SKIPPED else "its rows are lost"
            report.add("table-missing", ERROR, f"{loc / (name + '.lance')} is missing: {what}",
                       f"run: resedis repair --db {db} (re-encodes the lost rows from the source folder)",
                       table=name, path=str(loc / f"{name}.lance"))
            continue
        try:
            tables[name] = conn.open_table(name)
        except BaseException as exc:  # noqa: BLE001
            if _fatal(exc):
                raise
            report.lost_tables.add(name)
            report.add("table-unreadable", ERROR, f"{loc / (name + '.lance')} cannot be opened ({short_error(exc)})",
                       f"run: resedis repair --db {db} (rebuilds the table from the source folder)",
                       table=name, path=str(loc / f"{name}.lance"))
    return tables


def table_names(loc: Location) -> list[str]:
    """Every table directory of the index (core and side tables such as crops, masks)."""
    return sorted(n[: -len(".lance")] for n in loc.list_names() if n.endswith(".lance"))


def _check_files(loc: Location, report: VerifyReport, db: str) -> None:
    if not loc.is_local:
        return
    for name in table_names(loc):
        for path in _bad_footers(loc.local_path / f"{name}.lance"):
            report.add("bad-data-file", ERROR,
                       f"{path}: not a whole Lance data file (truncated or overwritten: its footer is gone)",
                       f"run: resedis repair --db {db} (rewrites the table from the rows that decode and "
                       "re-encodes the rest from the source files)", table=name, path=str(path))


def _read_table(name: str, table, report: VerifyReport, db: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The decodable chunks of a table; records one problem for the rows that are not."""
    failures: list[BaseException] = []
    good: list[pa.Table] = []
    for chunk in read_salvage(table, columns):
        if isinstance(chunk, pa.Table):
            good.append(chunk)
            yield chunk
        else:
            failures.append(chunk)
    if failures:
        report.damaged_tables.add(name)
        lost = _lost_rows(table, good)
        paths = sorted({_as_path(m.group(0)) for f in failures for m in re.finditer(r"[^\s:,]+\.lance\b", str(f))})
        where = f" (data file {paths[0]})" if paths else ""
        report.add(
            "undecodable-rows", ERROR,
            f"table {name}: {lost} row(s) fail to decode{where}: {short_error(failures[0])}",
            f"run: resedis repair --db {db} (keeps the rows that decode, re-encodes the lost images from their source files)",
            table=name, path=paths[0] if paths else None,
        )


def _check_side_tables(loc: Location, report: VerifyReport, db: str) -> None:
    """Side tables (crops, masks): every row must decode (their content is checked by
    their own modules when used)."""
    side = [t for t in table_names(loc) if t not in CORE_TABLES]
    if not side:
        return
    conn = loc.connect()
    for name in side:
        try:
            table = conn.open_table(name)
        except BaseException as exc:  # noqa: BLE001
            if _fatal(exc):
                raise
            report.damaged_tables.add(name)
            report.add("table-unreadable", ERROR, f"{loc / (name + '.lance')} cannot be opened ({short_error(exc)})",
                       f"run: resedis repair --db {db}", table=name, path=str(loc / f"{name}.lance"))
            continue
        report.counts[name] = sum(c.num_rows for c in _read_table(name, table, report, db))


def _as_path(text: str) -> str:
    """A path from a Lance error message (Lance drops the leading '/' of local paths)."""
    if not text.startswith("/") and os.path.isdir(os.path.dirname("/" + text)):
        return "/" + text
    return text


def _check_images(rows: pa.Table, report: VerifyReport, db: str) -> dict[tuple[str, int], dict]:
    """Per (image_id, batch): its row. Records duplicates, bad sizes, non-finite image vectors."""
    data = rows.to_pydict()
    n = rows.num_rows
    by_key: dict[tuple[str, int], dict] = {}
    seen: dict[str, int] = {}
    duplicates, bad_size, bad_vector = set(), set(), set()
    for i in range(n):
        row = {k: data[k][i] for k in data}
        image_id = row["image_id"]
        seen[image_id] = seen.get(image_id, 0) + 1
        if seen[image_id] > 1:
            duplicates.add(image_id)
        if not (isinstance(row.get("width"), int) and row["width"] >= 1 and isinstance(row.get("height"), int) and row["height"] >= 1):
            bad_size.add(image_id)
        vec = row.get("image_vector")
        if vec is not None and not all(v is not None and math.isfinite(v) for v in vec):
            bad_vector.add(image_id)
        by_key[(image_id, row["batch"])] = row
        if isinstance(row.get("path"), str):
            report.image_paths[image_id] = row["path"]
    fix = f"run: resedis repair --db {db} (re-encodes these images from their source files)"
    if duplicates:
        report.add("duplicate-images", ERROR, f"table images: {len(duplicates)} image(s) have more than one row", fix,
                   table=IMAGES, image_ids=sorted(duplicates))
    if bad_size:
        report.add("bad-image-size", ERROR, f"table images: {len(bad_size)} image(s) have a width or height below 1", fix,
                   table=IMAGES, image_ids=sorted(bad_size))
    if bad_vector:
        report.add("non-finite", ERROR, f"table images: {len(bad_vector)} image(s) have a non-finite image vector", fix,
                   table=IMAGES, image_ids=sorted(bad_vector))
    report.damaged_images |= duplicates | bad_size | bad_vector
    return by_key


def _check_regions(chunks: Iterator[pa.Table], images: dict, report: VerifyReport, db: str) -> dict:
    """Value checks on every decodable region row; -> digest sums per (image_id, batch)."""
    sums: dict[tuple[str, int], tuple[int, int]] = {}
    non_finite, outside = set(), set()
    n_rows = 0
    for chunk in chunks:
        n_rows += chunk.num_rows
        if chunk.num_rows == 0:
            continue
        merge_sums(sums, region_digest_sums(chunk))
        ids = chunk["image_id"].to_pylist()
        batches = chunk["batch"].to_pylist()
        boxes = _matrix(chunk["box"], 4)
        objectness = chunk["objectness"].to_numpy(zero_copy_only=False).astype(np.float64)
        finite = finite_rows(boxes) & finite_vectors(chunk) & np.isfinite(objectness)
        sizes = np.array([
            (images[k]["width"], images[k]["height"]) if k in images and isinstance(images[k].get("width"), int)
            else (np.inf, np.inf) for k in zip(ids, batches)
        ], np.float64).reshape(-1, 2)
        inside = possible_boxes(boxes, sizes)
        for i in np.flatnonzero(~finite):
            non_finite.add(ids[i])
        for i in np.flatnonzero(finite & ~inside):
            outside.add(ids[i])
    fix = f"run: resedis repair --db {db} (re-encodes these images from their source files)"
    if non_finite:
        report.add("non-finite", ERROR, f"table regions: {len(non_finite)} image(s) have regions with a non-finite "
                   "box, objectness or vector (damaged data)", fix, table=REGIONS, image_ids=sorted(non_finite))
    if outside:
        report.add("box-outside-image", ERROR, f"table regions: {len(outside)} image(s) have boxes outside the image "
                   "or inverted (damaged data)", fix, table=REGIONS, image_ids=sorted(outside))
    report.damaged_images |= non_finite | outside
    report.counts["regions"] = n_rows
    return sums


def _check_counts(images: dict, sums: dict, report: VerifyReport, db: str) -> None:
    mismatch = sorted({i for (i, b), row in images.items() if sums.get((i, b), (0, 0))[0] != row["n_regions"]})
    if mismatch:
        report.add("count-mismatch", ERROR, f"{len(mismatch)} image(s) have a region count other than their n_regions "
                   "(regions lost or damaged)",
                   f"run: resedis repair --db {db} (re-encodes these images from their source files)",
                   table=REGIONS, image_ids=mismatch)
        report.damaged_images |= set(mismatch)
    orphans = {key for key in sums if key not in images}
    if orphans:
        n = sum(sums[k][0] for k in orphans)
        report.add("orphan-regions", WARNING,
                   f"table regions: {n} region row(s) of {len(orphans)} image(s) have no images row "
                   "(left by an interrupted batch; searches ignore them)",
                   f"none needed: the next resedis index run deletes them (or run: resedis repair --db {db})",
                   table=REGIONS, image_ids=sorted({i for i, _ in orphans}))


def _check_checksums(images: dict, sums: dict, report: VerifyReport, db: str, has_column: bool) -> None:
    checked, mismatch, without = 0, set(), 0
    for (image_id, batch), row in images.items():
        stored = row.get(CHECKSUM_COLUMN) if has_column else None
        if image_id in report.damaged_images:  # already known to need re-encoding
            continue
        got = image_checksum(image_id, row["sha256"], row["width"], row["height"], row["n_regions"],
                             sums.get((image_id, batch), (0, 0))[1])
        if stored is None:
            without += 1
            report.unrecorded_checksums[image_id] = got
            continue
        checked += 1
        if got != stored:
            mismatch.add(image_id)
    report.counts["checksummed"] = checked
    if without and images:
        report.add("no-checksums", WARNING,
                   f"{without} of {len(images)} image(s) have no checksum (indexed before resedis recorded "
                   "checksums), so bit rot in their rows cannot be detected",
                   f"run: resedis repair --db {db} (records checksums for rows that pass every other check)",
                   table=IMAGES)
    if mismatch:
        report.add("checksum-mismatch", ERROR,
                   f"{len(mismatch)} image(s) have rows whose checksum no longer matches (bit rot: their stored "
                   "values changed after they were written)",
                   f"run: resedis repair --db {db} (re-encodes these images from their source files)",
                   table=REGIONS, image_ids=sorted(mismatch))
        report.damaged_images |= mismatch


def _check_sources(images: dict, report: VerifyReport, db: str) -> None:
    changed, missing = set(), set()
    for (image_id, _), row in images.items():
        path = row.get("path")
        try:
            digest = sha256_file(path)
        except (FileNotFoundError, NotADirectoryError, TypeError):
            missing.add(image_id)
            continue
        except OSError:
            missing.add(image_id)
            continue
        if digest != row["sha256"]:
            changed.add(image_id)
    if missing:
        report.add("source-missing", ERROR, f"{len(missing)} indexed image(s) have no source file any more",
                   f"run: resedis repair --db {db} (drops them and records which), or restore the files",
                   table=IMAGES, image_ids=sorted(missing))
        report.missing_sources |= missing
    if changed:
        report.add("source-changed", ERROR,
                   f"{len(changed)} image(s) have a source file whose content no longer matches the stored sha256",
                   f"run: resedis repair --db {db} (re-encodes them from the files as they are now)",
                   table=IMAGES, image_ids=sorted(changed))
        report.damaged_images |= changed


def verify_index(db: str | os.PathLike | Location, *, deep: bool = False,
                 storage_options: dict[str, str] | None = None) -> VerifyReport:
    """Check the index at ``db`` (see the module doc); ``deep`` also hashes every source file.
    Raises ResedisError only when ``db`` is not an index directory at all."""
    loc = as_location(db, storage_options)
    name = str(db)
    if loc.is_local and not loc.local_path.is_dir():
        raise ResedisError(f"{db}: no such index directory")
    if loc.is_local and not loc.exists(MANIFEST_NAME) and not any(loc.exists(f"{t}.lance") for t in CORE_TABLES):
        raise ResedisError(f"{db}: not a resedis index (no {MANIFEST_NAME} and no tables)")
    report = VerifyReport(db=name, deep=deep)
    _check_manifest(loc, report, name)
    tables = _open_tables(loc, report, name)
    _check_files(loc, report, name)
    images: dict = {}
    has_checksum = False
    if IMAGES in tables:
        has_checksum = CHECKSUM_COLUMN in tables[IMAGES].schema.names
        rows = [c for c in _read_table(IMAGES, tables[IMAGES], report, name)]
        rows = [c for c in rows if c.num_rows]
        merged = pa.concat_tables(rows, promote_options="default") if rows else None
        images = _check_images(merged, report, name) if merged is not None else {}
        report.counts["images"] = len(images)
    sums: dict = {}
    if REGIONS in tables:
        sums = _check_regions(_read_table(REGIONS, tables[REGIONS], report, name), images, report, name)
    if IMAGES in tables and (REGIONS in tables or not images):
        _check_counts(images, sums, report, name)
        _check_checksums(images, sums, report, name, has_checksum)
    elif REGIONS in report.lost_tables:
        report.damaged_images |= {i for i, _ in images}
    if SKIPPED in tables:
        report.counts["skipped"] = sum(c.num_rows for c in _read_table(SKIPPED, tables[SKIPPED], report, name))
    _check_side_tables(loc, report, name)
    if deep:
        _check_sources(images, report, name)
    return report
