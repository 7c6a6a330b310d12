"""``resedis repair``: bring a damaged index back to one that ``resedis verify`` passes.

What :func:`repair_index` does, in order, holding the writer lock:

1. **verify** the index (:mod:`resedis.index.verify`) to learn what is wrong;
2. **manifest**: missing, not JSON or with invalid fields -> rebuilt from what the tables
   say (image folder from the ``images`` rows, vector width and type from the ``regions``
   schema) and the model given (``model``; required when the manifest no longer names a
   valid one — the error says exactly what to run); fields that cannot be read from the
   tables (``max_regions``, ``nms_iou``) keep a valid stored value or take the default,
   and the report says which were assumed;
3. **tables**: a table with rows that fail to decode is rewritten from the rows that
   still decode (a new version; the damaged files go when old versions are cleaned);
   a lost table is created empty;
4. **rows**: damaged images (non-finite values, impossible boxes, count or checksum
   mismatches, source changed) lose their rows, and images whose source file is gone
   are dropped and recorded in ``DB/repairs.jsonl``;
5. **re-encode**: an ordinary incremental index run of the image folder re-encodes
   every image without an intact row from its source file, and deletes orphans;
6. old versions and unreferenced (damaged) data files are removed, and the index is
   verified again: the report carries both verifications.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from resedis.version import __version__
from resedis.errors import ResedisError
from resedis.index.columns import layout_fits, manifest_proj_width, stored_layout
from resedis.index.commit import Lock, delete_ids
from resedis.index.fs import Location, as_location
from resedis.index.manifest import Manifest, read_manifest, write_manifest
from resedis.index.manifest_fields import manifest_problems
from resedis.index.store import IMAGES, REGIONS, SKIPPED, images_schema, regions_schema, skipped_schema
from resedis.index.verify import CHECKSUM_COLUMN, VerifyReport, read_salvage, table_names, verify_index
from resedis.index.config import DEFAULT_MAX_REGIONS, REGION_NMS_IOU, IndexConfig, IndexReport
from resedis.index.writer import build_index
from resedis.models import load_model
from resedis.models.fingerprint import encoder_fingerprint
from resedis.models.spec import canonical_spec

log = logging.getLogger(__name__)

REPAIR_LOG = "repairs.jsonl"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class RepairReport:
    """What :func:`repair_index` found (``before``), did, and left (``after``)."""

    db: str
    before: VerifyReport
    after: VerifyReport | None = None
    manifest_rebuilt: bool = False
    assumed: dict = field(default_factory=dict)  # manifest fields set to a default, not read
    tables_rewritten: dict = field(default_factory=dict)  # table -> rows lost
    tables_created: list[str] = field(default_factory=list)
    reencoded: list[str] = field(default_factory=list)  # ids whose rows were dropped to re-encode
    dropped: list[str] = field(default_factory=list)  # ids whose source file is gone
    index_run: IndexReport | None = None
    checksums_recorded: int = 0  # intact rows of an older index given their checksum

    @property
    def ok(self) -> bool:
        return self.after is not None and self.after.ok

    def to_json(self) -> dict:
        return {
            "db": self.db,
            "ok": self.ok,
            "manifest_rebuilt": self.manifest_rebuilt,
            "assumed": self.assumed,
            "tables_rewritten": self.tables_rewritten,
            "tables_created": self.tables_created,
            "reencoded": sorted(self.reencoded),
            "dropped": sorted(self.dropped),
            "checksums_recorded": self.checksums_recorded,
            "index_run": self.index_run.to_json() if self.index_run is not None else None,
            "before": self.before.to_json(),
            "after": self.after.to_json() if self.after is not None else None,
        }

    def text(self) -> str:
        lines = [f"{self.db}: found {len(self.before.errors)} problem(s)"]
        if self.manifest_rebuilt:
            assumed = ", ".join(f"{k}={v!r}" for k, v in self.assumed.items())
            lines.append("manifest rebuilt from the tables" + (f" (assumed {assumed})" if assumed else ""))
        for name, lost in self.tables_rewritten.items():
            lines.append(f"table {name} rewritten from the rows that decode ({lost} row(s) lost)")
        for name in self.tables_created:
            lines.append(f"table {name} was lost: created empty")
        if self.reencoded:
            lines.append(f"{len(self.reencoded)} damaged image(s) re-encoded from their source files")
        if self.dropped:
            lines.append(f"{len(self.dropped)} image(s) dropped: source file gone (recorded in {REPAIR_LOG})")
        if self.checksums_recorded:
            lines.append(f"checksums recorded for {self.checksums_recorded} intact image(s) indexed before checksums existed")
        if self.index_run is not None:
            lines.append("index run: " + self.index_run.summary())
        if self.after is not None:
            lines.append("verify: " + ("ok" if self.after.ok else "still damaged"))
            lines += [p.line() for p in self.after.errors]
        return "\n".join(lines)


def _connect(loc: Location):
    return loc.connect()


def _column_values(loc: Location, table: str, column: str) -> list:
    try:
        tbl = _connect(loc).open_table(table)
    except BaseException as exc:  # noqa: BLE001 - a lost or broken table: nothing to read
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return []
    values = []
    for chunk in read_salvage(tbl, [column]):
        if isinstance(chunk, pa.Table):
            values += chunk[column].to_pylist()
    return values


def _regions_vector_type(loc: Location) -> tuple[int, str] | None:
    try:
        schema = _connect(loc).open_table(REGIONS).schema
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return None
    layout = stored_layout(schema)  # (storage, stored width): the vector, or int8/int4 codes
    return (layout[1], layout[0]) if layout else None


def rebuild_manifest(loc: Location, stored: dict | None, model: str | None, root: str | None, device: str | None) -> tuple[Manifest, dict]:
    """A valid manifest from what is valid in ``stored``, what the tables say and the
    arguments; -> (manifest, {field: value assumed}). Raises ResedisError naming what to
    pass when the model or the image folder cannot be known."""
    stored = stored if isinstance(stored, dict) else {}
    bad = {p.field for p in manifest_problems(stored)}

    def good(name):
        return stored.get(name) if name in stored and name not in bad else None

    spec = model or good("model")
    if spec is None:
        raise ResedisError(
            f"{loc}: the manifest no longer says which model built the index; run: "
            f"resedis repair --db {loc} --model SPEC (SPEC: the model the index was built with, e.g. the "
            "--model given to resedis index; vectors of another model would not be comparable)"
        )
    roots = Counter(r for r in _column_values(loc, IMAGES, "root") if isinstance(r, str))
    folder = root or good("root") or (roots.most_common(1)[0][0] if roots else None)
    if folder is None:
        raise ResedisError(
            f"{loc}: neither the manifest nor the images table says which folder was indexed; run: "
            f"resedis repair --db {loc} --root IMAGES_DIR"
        )
    encoder = load_model(canonical_spec(spec), device)
    vector = _regions_vector_type(loc)
    if vector is not None and not layout_fits(vector[1], vector[0], int(encoder.vector_dim)):
        raise ResedisError(
            f"{loc}: the regions table holds {vector[1]} vectors of stored width {vector[0]} but model {spec} gives {encoder.vector_dim}-d "
            "ones: this is not the model the index was built with; pass the right one with --model"
        )
    assumed = {}
    max_regions = good("max_regions")
    if max_regions is None:
        counts = [n for n in _column_values(loc, IMAGES, "n_regions") if isinstance(n, int)]
        max_regions = max([DEFAULT_MAX_REGIONS] + counts)
        assumed["max_regions"] = max_regions
    nms_iou = good("nms_iou")
    if nms_iou is None:
        nms_iou = REGION_NMS_IOU
        assumed["nms_iou"] = nms_iou
    manifest = Manifest(
        model=canonical_spec(spec),
        weights_fingerprint=encoder_fingerprint(encoder),
        vector_dim=int(encoder.vector_dim),
        vector_dtype=(vector[1] if vector else None) or good("vector_dtype") or "float16",
        preprocessing=encoder.preprocessing(),
        root=str(Path(folder).expanduser().resolve()),
        max_regions=int(max_regions),
        nms_iou=float(nms_iou),
        package_version=__version__,
        created=good("created") or _now(),
        calibration=good("calibration"),
        extra={k: v for k, v in stored.items() if k not in Manifest.KEYS},
    )
    return manifest, assumed


def _rewrite_table(loc: Location, name: str, schema: pa.Schema | None) -> int:
    """Rewrite table ``name`` from the rows that still decode (``schema``: the one to write
    when the rows read do not carry the table's own; None: the table's own); -> rows lost."""
    conn = _connect(loc)
    table = conn.open_table(name)
    chunks = [c for c in read_salvage(table) if isinstance(c, pa.Table) and c.num_rows]
    try:
        total = table.count_rows()
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        total = sum(c.num_rows for c in chunks)
    keep_schema = table.schema if schema is None or all(c.schema.equals(table.schema) for c in chunks) else schema
    rows = pa.concat_tables([c.cast(keep_schema) for c in chunks]) if chunks else keep_schema.empty_table()
    conn.create_table(name, data=rows, schema=keep_schema, mode="overwrite")
    return max(0, total - rows.num_rows)


def _clean_versions(loc: Location) -> None:
    """Drop every old version and every data file no version reads (damaged ones included).
    Under the writer lock no other writer can be mid-commit."""
    conn = _connect(loc)
    for name in table_names(loc):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "removes every version except the latest": intended here
            conn.open_table(name).optimize(cleanup_older_than=dt.timedelta(0), delete_unverified=True)


def record_checksums(loc: Location, checksums: dict[str, str]) -> int:
    """Store ``checksums`` (image id -> checksum) in the images rows that have none (an
    index built before checksums were recorded; the column is added when missing)."""
    if not checksums:
        return 0
    table = _connect(loc).open_table(IMAGES)
    if CHECKSUM_COLUMN not in table.schema.names:
        table.add_columns({CHECKSUM_COLUMN: "CAST(NULL AS STRING)"})
    ids = sorted(checksums)
    rows = pa.table({"image_id": ids, CHECKSUM_COLUMN: [checksums[i] for i in ids]})
    table.merge_insert("image_id").when_matched_update_all().execute(rows)
    return len(ids)


def _record(loc: Location, records: list[dict]) -> None:
    if not records or not loc.is_local:
        return
    with open(loc.local_path / REPAIR_LOG, "a", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, sort_keys=True) + "\n")


def repair_index(
    db: str | os.PathLike,
    *,
    model: str | None = None,
    root: str | os.PathLike | None = None,
    device: str | None = None,
    deep: bool = False,
    progress: bool = False,
    encoder=None,
) -> RepairReport:
    """Repair the local index ``db`` (see the module doc) and return what was done.
    ``model`` / ``root``: needed only when the manifest and the tables no longer say them;
    ``deep``: also re-encode images whose source file changed content (hashes every file);
    ``encoder``: an already loaded region encoder of the index's model."""
    loc = as_location(db)
    if not loc.is_local:
        raise ResedisError(f"{db}: repair works on a local index directory; copy the index locally first")
    before = verify_index(loc, deep=deep)
    if not deep:  # a gone source is cheap to see (one stat); a changed one needs deep
        before.missing_sources |= {i for i, path in before.image_paths.items() if not os.path.exists(path)}
    report = RepairReport(db=str(db), before=before)
    with Lock(loc):
        if not before.manifest_ok:
            manifest, report.assumed = rebuild_manifest(loc, before.manifest, model or (encoder.spec if encoder else None),
                                                        str(root) if root else None, device)
            write_manifest(loc, manifest)
            report.manifest_rebuilt = True
        schemas = {IMAGES: images_schema(), SKIPPED: skipped_schema()}
        for name in sorted(before.damaged_tables):
            if name == REGIONS:
                m = read_manifest(loc)
                schemas[REGIONS] = regions_schema(m.vector_dim, m.vector_dtype, manifest_proj_width(m))
            # a side table (crops, masks) keeps its own schema; the run's backfill refills it
            report.tables_rewritten[name] = _rewrite_table(loc, name, schemas.get(name))
        report.tables_created = sorted(before.lost_tables)
        conn = _connect(loc)
        missing = before.missing_sources
        damaged = before.damaged_images - missing
        if damaged or missing:
            for name in (IMAGES, REGIONS):
                if loc.exists(f"{name}.lance"):
                    delete_ids(conn.open_table(name), "image_id", sorted(damaged | missing))
        report.reencoded = sorted(damaged)
        report.dropped = sorted(missing)
        _record(loc, [{"time": _now(), "image_id": i, "action": "dropped", "reason": "source file gone"} for i in report.dropped])
    manifest = read_manifest(loc)
    report.index_run = build_index(manifest.root, loc.local_path, config=IndexConfig(device=device),
                                   progress=progress, encoder=encoder)
    with Lock(loc):
        # Rows that passed every check but carry no checksum (built before they were recorded).
        intact = {i: c for i, c in before.unrecorded_checksums.items() if i not in before.damaged_images | before.missing_sources}
        report.checksums_recorded = record_checksums(loc, intact)
        _clean_versions(loc)
    report.after = verify_index(loc)
    return report
