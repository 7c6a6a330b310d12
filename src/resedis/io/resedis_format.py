"""The ReSeDis annotation format (hufflepuff0596/ReSeDis) -> :class:`Dataset`.

Layout (the default places; each can be given explicitly)::

    ROOT/instances.json          COCO instances: images[{id, file_name, width, height}]
                                 (or ROOT/annotations/instances*.json when exactly one)
    ROOT/expressions/**/*.json   one JSON object per annotated object/expression
                                 (or ROOT/expressions.json / .jsonl: all records in one file)
    ROOT/images/                 the image files named by ``file_name`` (else ROOT)

One record::

    {"image_id": 139 | null, "expression": "the man on the left", "category": "person",
     "target_annotation": {"<key>": RLE | polygon, ...},
     "query_id": "q1", "type": "attribute"}        # optional extension fields

``target_annotation`` values are COCO RLE ``{"size": [H, W], "counts": str | list[int]}``
(compressed or uncompressed) or a polygon list ``[[x0, y0, x1, y1, ...], ...]`` in
pixels. The released data reads them with ``COCO.annToMask``, which accepts exactly these
three forms. Each value is one target instance; they are stored as compressed RLE
(counts ``str``) with the box (xyxy pixels) from pycocotools ``toBbox``.

Grouping into queries:

* records with a ``query_id`` form the query with that id (all must agree on
  expression, category and type);
* records without one are grouped by their *whitespace-normalised* expression
  (leading/trailing space stripped, inner runs collapsed to one space). Matching is
  **case-sensitive**: the benchmark states each description maps uniquely to its
  instances, and we do not merge what the annotators wrote differently. The query id
  is then ``"q-" + sha1(normalised expression)[:12]``, stable across runs and machines.
* queries are ordered by their first record; records are read in sorted relative-path
  order (and file order inside a list file), so loading is deterministic.
* an absent query has ``image_id: null`` and an empty ``target_annotation`` in every
  one of its records.

Problems raise :class:`FormatError` naming the file and the field; with
``strict=False`` the record is skipped instead and listed in ``Dataset.skipped``. An
instance listed twice for one query (same image, same mask) is kept once and the
repeat is listed in ``Dataset.skipped`` in both modes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from resedis.io.coco import CocoInstances, check_rle, load_coco_instances, read_json
from resedis.masks import normalize_segmentation, rle_area, rle_to_box
from resedis.types import EXPRESSION_TYPES, Dataset, FormatError, ImageId, Instance, Query, Skipped


def normalize_expression(text: str) -> str:
    """Whitespace-normalise an expression (case is kept): ``"  a  Cat "`` -> ``"a Cat"``."""
    return " ".join(text.split())


def derived_query_id(expression: str) -> str:
    """The query id of a record without ``query_id``: ``q-`` + 12 hex digits of the
    SHA-1 of the normalised expression (UTF-8)."""
    return "q-" + hashlib.sha1(normalize_expression(expression).encode("utf-8")).hexdigest()[:12]


@dataclass
class _Record:
    source: str
    expression: str
    query_id: str | None
    category: str | None
    type: str | None
    image_id: ImageId | None
    instances: list[Instance]


@dataclass
class _Group:
    query_id: str
    first: _Record
    absent: bool
    category: str | None = None
    type: str | None = None
    meta_source: dict[str, str] = field(default_factory=dict)  # field -> record that set it
    instances: list[Instance] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    seen: dict[tuple, str] = field(default_factory=dict)  # (image_id, counts) -> source


# --------------------------------------------------------------------- locating files


def _find_instances(root: Path) -> Path:
    direct = root / "instances.json"
    if direct.is_file():
        return direct
    found = sorted((root / "annotations").glob("instances*.json")) if (root / "annotations").is_dir() else []
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise FormatError(str(root), "instances", f"several COCO instances files ({names}); pass instances=")
    raise FormatError(str(root), "instances", "no instances.json (or annotations/instances*.json) found; pass instances=")


def _find_expressions(root: Path) -> Path:
    for cand in (root / "expressions", root / "expressions.json", root / "expressions.jsonl"):
        if cand.exists():
            return cand
    raise FormatError(str(root), "expressions", "no expressions/ folder or expressions.json(l) found; pass expressions=")


def _iter_raw_records(expressions: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(source, parsed JSON or FormatError)`` for every record, in a fixed order.

    Source names: the file for one-record files, ``file[i]`` / ``file[key]`` for list or
    mapping files, ``file:line`` for JSONL.
    """
    if expressions.is_dir():
        files = sorted((p for p in expressions.rglob("*") if p.suffix.lower() in (".json", ".jsonl") and p.is_file()),
                       key=lambda p: p.relative_to(expressions).as_posix())
    elif expressions.is_file():
        files = [expressions]
    else:
        raise FormatError(str(expressions), "expressions", "not found")
    for path in tqdm(files, desc="reading expressions", unit="file", file=sys.stderr,
                     disable=len(files) < 500):
        src = str(path)
        if path.suffix.lower() == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        yield f"{src}:{lineno}", json.loads(line)
                    except json.JSONDecodeError as exc:
                        yield f"{src}:{lineno}", FormatError(f"{src}:{lineno}", "<json>", f"invalid JSON: {exc.msg}")
            continue
        try:
            data = read_json(path)
        except FormatError as exc:
            yield src, exc
            continue
        if isinstance(data, list):
            for i, rec in enumerate(data):
                yield f"{src}[{i}]", rec
        elif isinstance(data, dict) and "expression" not in data and data and all(isinstance(v, dict) for v in data.values()):
            for key, rec in data.items():  # {record_key: record} mapping file
                yield f"{src}[{key}]", rec
        else:
            yield src, data


# --------------------------------------------------------------------- one record


def _parse_record(src: str, rec: Any, coco: CocoInstances) -> _Record:
    if not isinstance(rec, dict):
        raise FormatError(src, "<root>", f"expected a JSON object, got {type(rec).__name__}")
    for key in ("expression", "image_id", "target_annotation"):
        if key not in rec:
            raise FormatError(src, key, "missing")
    expr = rec["expression"]
    if not isinstance(expr, str) or not normalize_expression(expr):
        raise FormatError(src, "expression", f"expected a non-empty string, got {expr!r}")
    expr = normalize_expression(expr)
    qid = rec.get("query_id")
    if qid is not None:
        if isinstance(qid, bool) or not isinstance(qid, (str, int)) or (isinstance(qid, str) and not qid.strip()):
            raise FormatError(src, "query_id", f"expected a non-empty string, got {qid!r}")
        qid = str(qid)
    category = rec.get("category")
    if category is not None and not isinstance(category, str):
        raise FormatError(src, "category", f"expected a string, got {category!r}")
    qtype = rec.get("type")
    if qtype is not None and qtype not in EXPRESSION_TYPES:
        raise FormatError(src, "type", f"expected one of {list(EXPRESSION_TYPES)}, got {qtype!r}")
    targets = rec["target_annotation"]
    if not isinstance(targets, dict):
        raise FormatError(src, "target_annotation", f"expected an object {{key: RLE or polygon}}, got {type(targets).__name__}")
    raw_id = rec["image_id"]
    if raw_id is None:
        if targets:
            raise FormatError(src, "target_annotation", "image_id is null (absent query) but target_annotation is not empty")
        if qtype not in (None, "absent"):
            raise FormatError(src, "type", f"image_id is null (absent query) but type is {qtype!r}")
        return _Record(src, expr, qid, category, qtype, None, [])
    if isinstance(raw_id, bool) or not isinstance(raw_id, (int, str)):
        raise FormatError(src, "image_id", f"expected an int (COCO id), a string or null, got {raw_id!r}")
    info = coco.lookup_image(raw_id)
    if info is None:
        raise FormatError(src, "image_id", f"unknown image id {raw_id!r} (not in {coco.source})")
    if not targets:
        raise FormatError(src, "target_annotation", f"empty, but image_id is {raw_id!r} (absent queries use image_id null)")
    if qtype == "absent":
        raise FormatError(src, "type", "type is 'absent' but the record has targets")
    instances = []
    for key, seg in targets.items():
        where = f"target_annotation[{key!r}]"
        if isinstance(seg, dict):
            check_rle(seg, info.height, info.width, src, where)
        try:
            rle = normalize_segmentation(seg, info.height, info.width)
        except ValueError as exc:
            raise FormatError(src, where, str(exc)) from None
        if rle_area(rle) <= 0:
            raise FormatError(src, where, "the mask is empty")
        instances.append(Instance(image_id=info.id, rle=rle, box=rle_to_box(rle),
                                  instance_id=f"{src}#{key}", attributes=_attributes(coco, key, info.id)))
    return _Record(src, expr, qid, category, qtype, info.id, instances)


def _attributes(coco: CocoInstances, key: str, image_id: ImageId) -> dict:
    """Attributes of the COCO annotation the key names (when it is that image's
    annotation id), e.g. the synthetic benchmark's shape/colour/size."""
    ann = coco.annotations.get(key)
    if ann is None and key.lstrip("-").isdigit():
        ann = coco.annotations.get(int(key))
    if ann is None or ann.get("image_id") != image_id:
        return {}
    attrs = dict(ann.get("attributes") or {})
    if "category_id" in ann:
        attrs.setdefault("category_id", ann["category_id"])
    return attrs


# --------------------------------------------------------------------- grouping


def _conflict(group: _Group, rec: _Record) -> FormatError | None:
    first = group.first
    if rec.query_id is not None and rec.expression != first.expression:
        return FormatError(rec.source, "expression", f"query_id {rec.query_id!r} has expression {first.expression!r} "
                           f"in {first.source}, but {rec.expression!r} here")
    for name in ("type", "category"):
        mine, theirs = getattr(rec, name), getattr(group, name)
        if mine is not None and theirs is not None and mine != theirs:
            return FormatError(rec.source, name, f"query {group.query_id!r} has {name} {theirs!r} in "
                               f"{group.meta_source[name]}, but {mine!r} here")
    if (rec.image_id is None) != group.absent:
        here = "absent here (image_id null)" if rec.image_id is None else f"has targets here (image {rec.image_id!r})"
        there = "absent" if group.absent else "has targets"
        return FormatError(rec.source, "image_id", f"query {group.query_id!r} {there} in {first.source}, but {here}")
    return None


def load_resedis(
    root: str | Path,
    *,
    instances: str | Path | None = None,
    expressions: str | Path | None = None,
    images: str | Path | None = None,
    strict: bool = True,
) -> Dataset:
    """Load a ReSeDis-format benchmark (see the module docstring for the layout).

    ``instances``/``expressions``/``images`` override the default places under
    ``root``. ``strict=True`` raises the first :class:`FormatError`; ``strict=False``
    skips bad records and lists each, with its reason, in ``Dataset.skipped``.
    Every image of the instances file is in ``Dataset.images`` (the search corpus),
    with an absolute ``path`` when its file exists.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FormatError(str(root), "<root>", "dataset directory not found")
    inst_path = Path(instances) if instances is not None else _find_instances(root)
    expr_path = Path(expressions) if expressions is not None else _find_expressions(root)
    images_dir = Path(images) if images is not None else (root / "images" if (root / "images").is_dir() else root)
    coco = load_coco_instances(inst_path, images_dir=images_dir)

    skipped: list[Skipped] = []
    groups: dict[tuple, _Group] = {}
    owner_of_id: dict[str, tuple] = {}  # query id -> group key, to catch id collisions

    for src, raw in _iter_raw_records(expr_path):
        try:
            if isinstance(raw, FormatError):
                raise raw
            rec = _parse_record(src, raw, coco)
            key = ("id", rec.query_id) if rec.query_id is not None else ("expr", rec.expression)
            group = groups.get(key)
            if group is None:
                qid = rec.query_id if rec.query_id is not None else derived_query_id(rec.expression)
                other = owner_of_id.get(qid)
                if other is not None:
                    raise FormatError(src, "query_id", f"query id {qid!r} is already used by {groups[other].first.source}")
                group = _Group(query_id=qid, first=rec, absent=rec.image_id is None)
                groups[key] = group
                owner_of_id[qid] = key
            else:
                err = _conflict(group, rec)
                if err is not None:
                    raise err
        except FormatError as exc:
            if strict:
                raise
            skipped.append(Skipped(source=src, reason=str(exc)))
            continue
        group.sources.append(src)
        for name in ("type", "category"):
            if getattr(group, name) is None and getattr(rec, name) is not None:
                setattr(group, name, getattr(rec, name))
                group.meta_source[name] = src
        for inst in rec.instances:
            sig = (inst.image_id, inst.rle["counts"])
            if sig in group.seen:
                skipped.append(Skipped(source=inst.instance_id or src,
                                       reason=f"duplicate instance of query {group.query_id!r}: same image and mask "
                                              f"as {group.seen[sig]}"))
                continue
            group.seen[sig] = inst.instance_id or src
            group.instances.append(inst)

    queries = [
        Query(query_id=g.query_id, expression=g.first.expression, instances=g.instances,
              category=g.category, type=g.type, sources=g.sources)
        for g in groups.values()
    ]
    return Dataset(name=root.name, root=str(root), images=coco.images, queries=queries, skipped=skipped)
