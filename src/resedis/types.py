"""Core records shared by every stage.

Conventions, fixed once for the whole package:

* boxes are ``xyxy`` in absolute pixels of the original (EXIF-rotated) image,
  ``x0 <= x1`` and ``y0 <= y1``;
* masks are ``(H, W)`` bool arrays in memory and COCO RLE dicts
  ``{"size": [H, W], "counts": str}`` on disk and in JSON;
* image ids are ``int`` (COCO ids) or ``str`` (file-derived ids).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ImageId = int | str

EXPRESSION_TYPES = ("attribute", "position", "relation", "absent")


class FormatError(ValueError):
    """A file or record does not follow the expected format.

    The message always names the source (file, line) and the offending field.
    """

    def __init__(self, source: str, field_name: str, problem: str):
        self.source = source
        self.field_name = field_name
        self.problem = problem
        super().__init__(f"{source}: field {field_name!r}: {problem}")


@dataclass(frozen=True)
class Skipped:
    """An input that was not used, and why (lenient loading, indexing)."""

    source: str
    reason: str


@dataclass(frozen=True)
class ImageInfo:
    """One image of a corpus. ``path`` is absolute when the file is known."""

    id: ImageId
    file_name: str
    width: int
    height: int
    path: str | None = None


@dataclass
class Instance:
    """One ground-truth target instance: an object in one image.

    ``rle`` is a compressed COCO RLE (counts as ``str``); ``box`` is xyxy pixels
    derived from the mask with pycocotools ``toBbox``.
    """

    image_id: ImageId
    rle: dict
    box: tuple[float, float, float, float]
    instance_id: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Query:
    """A referring expression and every instance, across the corpus, it denotes.

    An *absent* query has no instances: the right answer is the empty set.

    ``scope``: the images on which the query's annotation is exhaustive, when the
    benchmark annotates it on fewer than the whole corpus (gRefCOCO: the expression's own
    image; D³ intra-scenario: its group's images); None = every corpus image. Protocols
    that score per (query, image) sample (GREC, D³ intra) read it; the default suite does not.
    """

    query_id: str
    expression: str
    instances: list[Instance] = field(default_factory=list)
    category: str | None = None
    type: str | None = None
    sources: list[str] = field(default_factory=list)
    scope: list[ImageId] | None = None

    @property
    def is_absent(self) -> bool:
        return not self.instances

    @property
    def target_images(self) -> list[ImageId]:
        """Target image ids, unique, in dataset order."""
        seen: dict[ImageId, None] = {}
        for inst in self.instances:
            seen.setdefault(inst.image_id, None)
        return list(seen)

    def instances_of(self, image_id: ImageId) -> list[Instance]:
        return [inst for inst in self.instances if inst.image_id == image_id]


@dataclass
class Dataset:
    """A benchmark held in memory: images and queries (with their targets)."""

    name: str
    root: str | None
    images: dict[ImageId, ImageInfo]
    queries: list[Query]
    skipped: list[Skipped] = field(default_factory=list)

    def query(self, query_id: str) -> Query:
        for q in self.queries:
            if q.query_id == query_id:
                return q
        raise KeyError(query_id)


def _check_box(box: Any, source: str) -> tuple[float, float, float, float]:
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise FormatError(source, "box", f"expected [x0, y0, x1, y1], got {box!r}")
    try:
        vals = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        raise FormatError(source, "box", f"non-numeric coordinate in {box!r}") from None
    if not all(math.isfinite(v) for v in vals):
        raise FormatError(source, "box", f"non-finite coordinate in {box!r}")
    if vals[2] < vals[0] or vals[3] < vals[1]:
        raise FormatError(source, "box", f"x1 < x0 or y1 < y0 in {box!r} (boxes are xyxy)")
    return vals  # type: ignore[return-value]


@dataclass
class Hit:
    """One detection: the shared result record of search, predictions and the API.

    ``box`` is xyxy in original-image pixels; ``mask`` a COCO RLE dict or None.
    """

    image_id: ImageId
    box: tuple[float, float, float, float]
    score: float
    present: bool
    mask: dict | None = None
    path: str | None = None
    # Only when asked (QueryRequest(explain=True), owl+compose): {"subject": logit, "<cue>": logit
    # contribution, ..., "total": logit}; absent from the JSON otherwise.
    explain: dict | None = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "image_id": self.image_id,
            "box": [float(v) for v in self.box],
            "score": float(self.score),
            "present": bool(self.present),
            "mask": self.mask,
        }
        if self.path is not None:
            out["path"] = self.path
        if self.explain is not None:
            out["explain"] = self.explain
        return out

    @classmethod
    def from_json(cls, data: Any, source: str = "<hit>") -> Hit:
        if not isinstance(data, dict):
            raise FormatError(source, "detections[]", f"expected an object, got {type(data).__name__}")
        for key in ("image_id", "box", "score"):
            if key not in data:
                raise FormatError(source, key, "missing")
        image_id = data["image_id"]
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
            raise FormatError(source, "image_id", f"expected int or str, got {image_id!r}")
        box = _check_box(data["box"], source)
        score = data["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise FormatError(source, "score", f"expected a finite number, got {score!r}")
        present = data.get("present", True)
        if not isinstance(present, bool):
            raise FormatError(source, "present", f"expected true/false, got {present!r}")
        mask = data.get("mask")
        if mask is not None and not (isinstance(mask, dict) and "size" in mask and "counts" in mask):
            raise FormatError(source, "mask", "expected a COCO RLE {size, counts} or null")
        path = data.get("path")
        return cls(image_id=image_id, box=box, score=float(score), present=present, mask=mask, path=path)


@dataclass
class QueryResult:
    """All detections for one query: one line of a predictions JSONL file.

    JSON form: ``{"query_id", "expression", "detections": [Hit...]}``.
    """

    query_id: str
    expression: str
    hits: list[Hit] = field(default_factory=list)
    timings: dict[str, float] | None = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "query_id": self.query_id,
            "expression": self.expression,
            "detections": [h.to_json() for h in self.hits],
        }
        if self.timings is not None:
            out["timings"] = self.timings
        return out


@dataclass
class ImageRegions:
    """Struct of arrays: the candidate regions of one image, as the index stores them.

    boxes:       (N, 4) float32, xyxy original-image pixels
    objectness:  (N,)   float32, the detector's objectness logit
    vectors:     (N, D) float32, augmented class vectors ``[s*e_hat, s*b]`` so that
                 ``vectors @ [q_hat, 1]`` is the detector's logit for a query
    image_vector: (E,) float32 or None, an image-level embedding when the backend has one
    """

    boxes: np.ndarray
    objectness: np.ndarray
    vectors: np.ndarray
    image_vector: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4), got {self.boxes.shape}")
        if self.objectness.shape != (n,):
            raise ValueError(f"objectness must be ({n},), got {self.objectness.shape}")
        if self.vectors.ndim != 2 or self.vectors.shape[0] != n:
            raise ValueError(f"vectors must be ({n}, D), got {self.vectors.shape}")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __getitem__(self, index: Any) -> ImageRegions:
        return ImageRegions(
            boxes=self.boxes[index],
            objectness=self.objectness[index],
            vectors=self.vectors[index],
            image_vector=self.image_vector,
        )
