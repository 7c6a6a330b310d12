"""D³ (Description Detection Dataset, "DOD", Xie et al., NeurIPS 2023) -> :class:`Dataset`.

Layout of the release, as its toolkit reads it (``d_cube/d3.py``, class ``D3``, and
``doc.md`` "Key Concepts" in shikras/d-cube; PyPI ``ddd-dataset``)::

    ROOT/d3_pkl/sentences.pkl    pickled dict  sent_id  -> {id, raw_sent, is_negative, anno_id, group_id, ...}
    ROOT/d3_pkl/annotations.pkl  pickled dict  anno_id  -> {id, image_id, sent_id: [..], segmentation,
                                                            bbox [x, y, w, h], area, iscrowd, group_id}
    ROOT/d3_pkl/images.pkl       pickled dict  image_id -> {id, file_name, height, width, anno_id, group_id, ...}
    ROOT/d3_pkl/groups.pkl       pickled dict  group_id -> {id, inner_sent_id, img_id, pos_sent_id, outer_sent_id, ...}
    ROOT/d3_images/<file_name>   the images (or ROOT/<file_name>; paths are filled when found)

``ROOT`` may also be the ``d3_pkl`` folder itself. ``doc.md`` documents ``segmentation`` as an
RLE and ``bbox`` as four numbers; the toolkit's ``convert2coco`` reads them as
``segmentation[0]`` and ``bbox[0]`` (a one-element list of RLEs, a (1, 4) array). Both
forms are accepted; RLE ``counts`` may be bytes.

Mapping (the evaluation settings of ``doc.md``, "Intra- or Inter-Group Settings"):

* every sentence is one query over the whole corpus (the **inter-scenario** setting,
  where every description is annotated on every image): id ``str(sent_id)``, expression
  ``raw_sent``; its targets are the annotations whose ``sent_id`` lists it, box from
  ``bbox`` (xyxy pixels: the box D³'s COCO ground truth uses), mask from ``segmentation``;
  a sentence no annotation lists is an absent query;
* ``Query.type`` is ``absence`` for ``is_negative`` sentences, else ``presence`` (the ABS and
  PRES partitions of :mod:`resedis.eval_protocols.d3`);
* ``Query.scope`` is the images of the groups whose ``inner_sent_id`` holds the sentence:
  the **intra-scenario** setting, in which an image is only run with its group's descriptions;
* ``Query.category`` is the name of the sentence's first group (``group_name``) when present.

Malformed records raise :class:`FormatError` naming the file, the record and the field;
``strict=False`` skips them into ``Dataset.skipped``. The pickles are read with
:mod:`pickle`: only load files you trust. D³ has no splits.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from resedis.masks import normalize_segmentation
from resedis.types import Dataset, FormatError, ImageId, ImageInfo, Instance, Query, Skipped

PKL_DIR = "d3_pkl"
PKL_FILES = ("sentences.pkl", "annotations.pkl", "images.pkl", "groups.pkl")
IMAGE_DIRS = ("d3_images", "images", ".")
ABSENCE, PRESENCE = "absence", "presence"


def d3_pkl_folder(root: Path) -> Path | None:
    """The folder holding the four D³ pickles (``root`` or ``root/d3_pkl``), else None."""
    for folder in (root, root / PKL_DIR):
        if all((folder / n).is_file() for n in PKL_FILES):
            return folder
    return None


def _load(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except Exception as exc:  # pickle raises many types on corrupt input
        raise FormatError(str(path), "<pickle>", f"cannot unpickle: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise FormatError(str(path), "<root>", f"expected a dict id -> record, got {type(data).__name__}")
    return data


def _field(src: str, rec: Any, name: str) -> Any:
    if not isinstance(rec, dict):
        raise FormatError(src, "<record>", f"expected a dict, got {type(rec).__name__}")
    if name not in rec:
        raise FormatError(src, name, "missing")
    return rec[name]


def _ids(src: str, value: Any, name: str) -> list[int]:
    ids = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in ids):
        raise FormatError(src, name, f"expected an int or a list of ints, got {value!r}")
    return [int(v) for v in ids]


def _box(src: str, bbox: Any) -> tuple[float, float, float, float]:
    arr = np.asarray(bbox, dtype=np.float64) if bbox is not None else np.zeros(0)
    if arr.size != 4 or not np.all(np.isfinite(arr)):
        raise FormatError(src, "bbox", f"expected [x, y, w, h] (or [[x, y, w, h]]), got {bbox!r}")
    x, y, w, h = (float(v) for v in arr.reshape(4))
    if w < 0 or h < 0:
        raise FormatError(src, "bbox", f"negative width or height in {bbox!r}")
    return (x, y, x + w, y + h)


def _rle(src: str, seg: Any, info: ImageInfo) -> dict | None:
    if seg is None:
        return None
    if isinstance(seg, (list, tuple)) and seg and isinstance(seg[0], dict):
        seg = seg[0]  # the toolkit's convert2coco reads segmentation[0]
    try:
        rle = normalize_segmentation(seg, info.height, info.width)
    except ValueError as exc:
        raise FormatError(src, "segmentation", str(exc)) from None
    if list(rle["size"]) != [info.height, info.width]:
        raise FormatError(src, "segmentation", f"RLE size {rle['size']} is not the image's [{info.height}, {info.width}]")
    return rle


def _images(path: Path, raw: dict, root: Path, strict: bool, skipped: list[Skipped]) -> dict[ImageId, ImageInfo]:
    dirs = [root / d for d in IMAGE_DIRS] + [root.parent / d for d in IMAGE_DIRS if d != "."]
    out: dict[ImageId, ImageInfo] = {}
    for key, rec in raw.items():
        src = f"{path}[{key!r}]"
        try:
            image_id = _ids(src, _field(src, rec, "id"), "id")[0]
            file_name = _field(src, rec, "file_name")
            h, w = _field(src, rec, "height"), _field(src, rec, "width")
            if not isinstance(file_name, str) or not file_name:
                raise FormatError(src, "file_name", f"expected a non-empty string, got {file_name!r}")
            if not all(isinstance(v, (int, np.integer)) and v > 0 for v in (h, w)):
                raise FormatError(src, "height/width", f"expected positive integers, got {h!r}, {w!r}")
        except FormatError as exc:
            if strict:
                raise
            skipped.append(Skipped(source=src, reason=str(exc)))
            continue
        found = next((d / file_name for d in dirs if (d / file_name).is_file()), None)
        out[image_id] = ImageInfo(image_id, file_name, int(w), int(h), str(found) if found else None)
    return out


def load_d3(root: str | Path, *, strict: bool = True) -> Dataset:
    """Load the D³ pickles (see the module doc) as one query per description.

    >>> ds = load_d3("d3_release")                               # doctest: +SKIP
    >>> sum(q.type == "absence" for q in ds.queries)             # 106 absence descriptions  # doctest: +SKIP
    """
    root = Path(root).resolve()
    folder = d3_pkl_folder(root)
    if folder is None:
        raise FormatError(str(root), PKL_DIR, f"no {', '.join(PKL_FILES)} in {root} or {root / PKL_DIR}")
    base = folder.parent if folder.name == PKL_DIR else folder
    paths = {n: folder / n for n in PKL_FILES}
    sents, anns, imgs, groups = (_load(paths[n]) for n in PKL_FILES)
    skipped: list[Skipped] = []
    images = _images(paths["images.pkl"], imgs, base, strict, skipped)

    def guarded(src: str, fn):
        try:
            return fn()
        except FormatError as exc:
            if strict:
                raise
            skipped.append(Skipped(source=src, reason=str(exc)))
            return None

    # groups: sentence id -> scope images, and -> group name
    scope_of: dict[int, dict[ImageId, None]] = {}
    group_name: dict[int, str] = {}
    for gkey, g in groups.items():
        src = f"{paths['groups.pkl']}[{gkey!r}]"

        def read_group(src=src, g=g):
            inner = _ids(src, _field(src, g, "inner_sent_id"), "inner_sent_id")
            img_ids = _ids(src, _field(src, g, "img_id"), "img_id")
            return inner, [i for i in img_ids if i in images], g.get("group_name")

        got = guarded(src, read_group)
        if got is None:
            continue
        inner, img_ids, name = got
        for s in inner:
            scope_of.setdefault(s, {}).update(dict.fromkeys(img_ids))
            if isinstance(name, str) and s not in group_name:
                group_name[s] = name

    # annotations: sentence id -> instances
    instances_of: dict[int, list[Instance]] = {}
    for akey, a in anns.items():
        src = f"{paths['annotations.pkl']}[{akey!r}]"

        def read_ann(src=src, a=a):
            image_id = _ids(src, _field(src, a, "image_id"), "image_id")[0]
            if image_id not in images:
                raise FormatError(src, "image_id", f"image {image_id} is not in images.pkl")
            info = images[image_id]
            sent_ids = _ids(src, _field(src, a, "sent_id"), "sent_id")
            box = _box(src, _field(src, a, "bbox"))
            rle = _rle(src, a.get("segmentation"), info)
            return sent_ids, Instance(image_id=image_id, rle=rle, box=box, instance_id=str(a.get("id", akey)))

        got = guarded(src, read_ann)
        if got is None:
            continue
        sent_ids, inst = got
        for s in sent_ids:
            instances_of.setdefault(s, []).append(inst)

    queries: list[Query] = []
    for skey, s in sents.items():
        src = f"{paths['sentences.pkl']}[{skey!r}]"

        def read_sent(src=src, s=s):
            sid = _ids(src, _field(src, s, "id"), "id")[0]
            text = _field(src, s, "raw_sent")
            if not isinstance(text, str) or not text.strip():
                raise FormatError(src, "raw_sent", f"expected a non-empty string, got {text!r}")
            neg = s.get("is_negative", False)
            if not isinstance(neg, (bool, np.bool_)):
                raise FormatError(src, "is_negative", f"expected true/false, got {neg!r}")
            return sid, " ".join(text.split()), bool(neg)

        got = guarded(src, read_sent)
        if got is None:
            continue
        sid, text, neg = got
        scope = scope_of.get(sid)
        queries.append(Query(query_id=str(sid), expression=text, instances=instances_of.get(sid, []),
                             category=group_name.get(sid), type=ABSENCE if neg else PRESENCE,
                             sources=[src], scope=list(scope) if scope is not None else None))
    return Dataset(name="d3", root=str(base), images=images, queries=queries, skipped=skipped)
