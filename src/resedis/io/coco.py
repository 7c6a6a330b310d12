"""Reading a COCO instances JSON (``images``, ``annotations``, ``categories``).

Only what the dataset loaders need: image records (id, file name, size), annotation
records by id, and category names. Every malformed record raises
:class:`~resedis.types.FormatError` naming the file and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resedis.types import FormatError, ImageId, ImageInfo


@dataclass
class CocoInstances:
    """The parts of a COCO instances file the loaders use.

    ``images``: id -> ImageInfo (``path`` filled when an images dir was given and the
    file exists); ``annotations``: annotation id -> raw annotation dict;
    ``categories``: category id -> name.
    """

    source: str
    images: dict[ImageId, ImageInfo]
    annotations: dict[Any, dict] = field(default_factory=dict)
    categories: dict[Any, str] = field(default_factory=dict)

    def lookup_image(self, image_id: Any) -> ImageInfo | None:
        """Find an image by id; a digit string also matches the int id (JSON keys)."""
        if isinstance(image_id, bool):
            return None
        if image_id in self.images:
            return self.images[image_id]
        if isinstance(image_id, str) and image_id.strip().lstrip("-").isdigit():
            return self.images.get(int(image_id))
        return None


def read_json(path: Path) -> Any:
    """Parse a JSON file; FormatError (field ``<json>``) on a syntax or encoding error."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise FormatError(str(path), "<json>", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise FormatError(str(path), "<json>", f"not UTF-8 text: {exc}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_coco_instances(path: str | Path, *, images_dir: str | Path | None = None) -> CocoInstances:
    """Read ``instances.json``. ``images_dir``: where ``file_name`` is resolved; an
    image whose file exists there gets an absolute ``path``, others ``path=None``.
    """
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise FormatError(src, "<file>", "COCO instances file not found")
    data = read_json(path)
    if not isinstance(data, dict):
        raise FormatError(src, "<root>", f"expected a JSON object, got {type(data).__name__}")
    raw_images = data.get("images")
    if not isinstance(raw_images, list):
        raise FormatError(src, "images", "missing or not a list")
    img_root = Path(images_dir).resolve() if images_dir is not None else None
    images: dict[ImageId, ImageInfo] = {}
    for i, rec in enumerate(raw_images):
        where = f"images[{i}]"
        if not isinstance(rec, dict):
            raise FormatError(src, where, "expected an object")
        image_id = rec.get("id")
        if not (_is_int(image_id) or isinstance(image_id, str)):
            raise FormatError(src, f"{where}.id", f"expected int or str, got {image_id!r}")
        if image_id in images:
            raise FormatError(src, f"{where}.id", f"duplicate image id {image_id!r}")
        file_name = rec.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise FormatError(src, f"{where}.file_name", f"expected a non-empty string, got {file_name!r}")
        for key in ("width", "height"):
            if not _is_int(rec.get(key)) or rec[key] <= 0:
                raise FormatError(src, f"{where}.{key}", f"expected a positive int, got {rec.get(key)!r}")
        full = None
        if img_root is not None:
            candidate = img_root / file_name
            if candidate.is_file():
                full = str(candidate)
        images[image_id] = ImageInfo(
            id=image_id, file_name=file_name, width=rec["width"], height=rec["height"], path=full
        )
    annotations: dict[Any, dict] = {}
    raw_anns = data.get("annotations", [])
    if not isinstance(raw_anns, list):
        raise FormatError(src, "annotations", "not a list")
    for i, ann in enumerate(raw_anns):
        if not isinstance(ann, dict):
            raise FormatError(src, f"annotations[{i}]", "expected an object")
        if "id" not in ann:
            raise FormatError(src, f"annotations[{i}].id", "missing")
        if ann["id"] in annotations:
            raise FormatError(src, f"annotations[{i}].id", f"duplicate annotation id {ann['id']!r}")
        annotations[ann["id"]] = ann
    categories: dict[Any, str] = {}
    raw_cats = data.get("categories", [])
    if not isinstance(raw_cats, list):
        raise FormatError(src, "categories", "not a list")
    for i, cat in enumerate(raw_cats):
        if not isinstance(cat, dict) or "id" not in cat or not isinstance(cat.get("name"), str):
            raise FormatError(src, f"categories[{i}]", "expected an object with 'id' and string 'name'")
        categories[cat["id"]] = cat["name"]
    return CocoInstances(source=src, images=images, annotations=annotations, categories=categories)


def compressed_rle_counts(counts: str | bytes) -> list[int]:
    """Decode the run lengths of a compressed COCO RLE string (pycocotools
    ``rleFrString``: 6-bit chars from ``'0'``, 5 data bits + continuation bit,
    sign-extended, runs from the third on stored as deltas to the run two back).

    Used to *validate* RLE before pycocotools decodes it: pycocotools does not check
    that the runs add up to H*W and writes past its buffer when they exceed it.
    Raises ValueError on an illegal character, a truncated value or a negative run.
    """
    s = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    out: list[int] = []
    p = 0
    while p < len(s):
        x = 0
        k = 0
        more = True
        while more:
            if p >= len(s):
                raise ValueError("truncated compressed RLE counts")
            c = s[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"illegal character {chr(s[p])!r} in compressed RLE counts")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        if x < 0:
            raise ValueError("negative run length in compressed RLE counts")
        out.append(x)
    return out


def check_rle(seg: dict, height: int, width: int, source: str, field_name: str) -> None:
    """Check an RLE dict's ``size`` equals ``[height, width]`` and that compressed
    ``counts`` cover exactly H*W pixels; FormatError on ``<field_name>.size`` /
    ``<field_name>.counts``. (Uncompressed counts are checked by
    ``normalize_segmentation``.)"""
    size = seg.get("size")
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise FormatError(source, f"{field_name}.size", f"expected [height, width], got {size!r}")
    if list(size) != [height, width]:
        raise FormatError(source, f"{field_name}.size",
                          f"{list(size)} does not match the image [height, width] = [{height}, {width}]")
    counts = seg.get("counts")
    if isinstance(counts, (str, bytes)):
        try:
            runs = compressed_rle_counts(counts)
        except (ValueError, UnicodeEncodeError) as exc:
            raise FormatError(source, f"{field_name}.counts", str(exc)) from None
        if sum(runs) != height * width:
            raise FormatError(source, f"{field_name}.counts",
                              f"runs cover {sum(runs)} pixels, expected H*W = {height * width}")
