"""REIRCOCO (referring expression instance retrieval, Hao et al., ACM MM 2025) -> :class:`Dataset`.

Format as the released code reads it: ``BaseReirDataset.load_data_list`` in
``mmdetection/mmdet/datasets/base_reir_dataset.py`` of haoxiangzhao12138/REIR. The
annotation file is a **pickled list of records**, one per referred instance::

    {"image_id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "height": 480, "width": 640,
     "split": "train" | "val" | ...,
     "ref_anno": {"bbox": [x, y, w, h], "segmentation": <COCO polygons or RLE>, "category_name": "dog"},
     "det_anno": [...],                       # the image's other boxes (detection targets; unused here)
     "sentences": [{"raw": "the brown dog lying on the sofa", ...}, ...]}

Only these fields are read. The code does not fix the file's name (its config names
``reircocog/anno.p`` and ``refs(unc).p`` in different places), so :func:`reircoco_files` finds
the dataset by content: a ``*.p`` / ``*.pkl`` file in the folder whose first record has
``ref_anno`` and ``sentences``. Images are looked up under ``train2014/`` (the config's
``img_path``), ``images/train2014/`` or the folder itself; paths are filled when found.

Mapping: every sentence is one single-image query (REIR's evaluator scores one query per
expression): query id ``"<record index>:<sentence index>"``, expression ``raw``
lower-cased as the code does, whitespace-normalised; one target :class:`Instance` whose box
is ``ref_anno.bbox`` (xyxy pixels) and mask ``ref_anno.segmentation``; ``category`` the
``category_name``. ``split=`` keeps one split's records and, as corpus, their images (the
evaluator's gallery is the images of the evaluated split). The pickle is read with
:mod:`pickle`: only load files you trust.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from resedis.masks import normalize_segmentation
from resedis.types import Dataset, FormatError, ImageId, ImageInfo, Instance, Query, Skipped

IMAGE_DIRS = ("train2014", "images/train2014", "images", ".")


def _unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception as exc:  # pickle raises many types on corrupt input
        raise FormatError(str(path), "<pickle>", f"cannot unpickle: {type(exc).__name__}: {exc}") from None


def is_reircoco_records(data: Any) -> bool:
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) \
        and "ref_anno" in data[0] and "sentences" in data[0]


def reircoco_files(folder: Path) -> list[Path]:
    """The pickles directly in ``folder`` holding REIRCOCO records (checked by content)."""
    out = []
    for p in sorted([*folder.glob("*.p"), *folder.glob("*.pkl")]):
        try:
            if is_reircoco_records(_unpickle(p)):
                out.append(p)
        except FormatError:
            continue
    return out


def _get(src: str, rec: Any, name: str) -> Any:
    if not isinstance(rec, dict):
        raise FormatError(src, "<record>", f"expected a dict, got {type(rec).__name__}")
    if name not in rec:
        raise FormatError(src, name, "missing")
    return rec[name]


def _record(src: str, i: int, rec: Any) -> tuple[ImageInfo, list[Query]]:
    image_id = _get(src, rec, "image_id")
    if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
        raise FormatError(src, "image_id", f"expected an int or a string, got {image_id!r}")
    file_name = _get(src, rec, "file_name")
    h, w = _get(src, rec, "height"), _get(src, rec, "width")
    if not isinstance(file_name, str) or not file_name:
        raise FormatError(src, "file_name", f"expected a non-empty string, got {file_name!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        raise FormatError(src, "height/width", f"expected positive integers, got {h!r}, {w!r}")
    ref = _get(src, rec, "ref_anno")
    bbox = _get(f"{src}.ref_anno", ref, "bbox")
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        raise FormatError(src, "ref_anno.bbox", f"expected [x, y, w, h], got {bbox!r}")
    x, y, bw, bh = (float(v) for v in bbox)
    if bw < 0 or bh < 0:
        raise FormatError(src, "ref_anno.bbox", f"negative width or height in {bbox!r}")
    seg = ref.get("segmentation")
    try:
        rle = normalize_segmentation(seg, h, w) if seg is not None else None
    except ValueError as exc:
        raise FormatError(src, "ref_anno.segmentation", str(exc)) from None
    category = ref.get("category_name")
    sentences = _get(src, rec, "sentences")
    if not isinstance(sentences, list) or not sentences:
        raise FormatError(src, "sentences", f"expected a non-empty list, got {sentences!r}")
    info = ImageInfo(image_id, file_name, w, h)
    inst = Instance(image_id=image_id, rle=rle, box=(x, y, x + bw, y + bh), instance_id=str(i))
    queries = []
    for j, sent in enumerate(sentences):
        raw = sent.get("raw") if isinstance(sent, dict) else None
        if not isinstance(raw, str) or not raw.strip():
            raise FormatError(src, f"sentences[{j}].raw", f"expected a non-empty string, got {raw!r}")
        queries.append(Query(query_id=f"{i}:{j}", expression=" ".join(raw.lower().split()), instances=[inst],
                             category=category if isinstance(category, str) else None, sources=[src]))
    return info, queries


def load_reircoco(path: str | Path, *, split: str | None = None, strict: bool = True) -> Dataset:
    """Load a REIRCOCO pickle (a file, or a folder holding exactly one; see the module doc).

    >>> ds = load_reircoco("data/reircoco", split="val")       # doctest: +SKIP
    """
    path = Path(path).resolve()
    if path.is_dir():
        found = reircoco_files(path)
        if len(found) != 1:
            raise FormatError(str(path), "<pickle>", f"expected one REIRCOCO pickle (a list of records with ref_anno "
                              f"and sentences), found {len(found)}: {[p.name for p in found]}")
        path = found[0]
    records = _unpickle(path)
    if not isinstance(records, list):
        raise FormatError(str(path), "<root>", f"expected a list of records, got {type(records).__name__}")
    if split is not None:
        splits = sorted({str(r.get("split")) for r in records if isinstance(r, dict)})
        if split not in splits:
            raise FormatError(str(path), "split", f"no record has split {split!r}; the file has {splits}")
    folder = path.parent
    dirs = [folder / d for d in IMAGE_DIRS] + [folder.parent / d for d in IMAGE_DIRS if d != "."]
    images: dict[ImageId, ImageInfo] = {}
    queries: list[Query] = []
    skipped: list[Skipped] = []
    for i, rec in enumerate(records):
        src = f"{path}[{i}]"
        if split is not None and isinstance(rec, dict) and rec.get("split") != split:
            continue
        try:
            info, qs = _record(src, i, rec)
            known = images.get(info.id)
            if known is not None and (known.file_name, known.width, known.height) != (info.file_name, info.width, info.height):
                raise FormatError(src, "image_id", f"image {info.id!r} was {known.file_name} "
                                  f"{known.width}x{known.height} in an earlier record")
        except FormatError as exc:
            if strict:
                raise
            skipped.append(Skipped(source=src, reason=str(exc)))
            continue
        if known is None:
            found = next((d / info.file_name for d in dirs if (d / info.file_name).is_file()), None)
            images[info.id] = ImageInfo(info.id, info.file_name, info.width, info.height, str(found) if found else None)
        queries.extend(qs)
    name = "reircoco" + (f"-{split}" if split else "")
    return Dataset(name=name, root=str(folder), images=images, queries=queries, skipped=skipped)
