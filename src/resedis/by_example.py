"""Query by example: "find this object in my other images".

A :class:`ByExample` names a region — of an indexed image (``image_id``, optional
``box``) or of an image that is not indexed (``image``: a file path or a PIL image,
optional ``box``) — and :func:`example_query` turns it into a query vector ``[q̂, 1]``,
searched over every stored region by the same inner product as a text query
(:meth:`resedis.search.Searcher.search_vectors`). ``q̂`` is the region's class
embedding, so a stored region's score ``[s·ê, s·b] · [q̂, 1] = (ê·q̂ + b)·s`` is the
detector's own *image-conditioned* logit: what transformers' ``image_guided_detection``
computes with that region as the query (its class head applied with that query
embedding).

Which region, and where ``q̂`` comes from:

* indexed image: among the image's stored regions (boxes of zero visible area
  excluded), the one whose box has the highest IoU with ``box`` (generalised IoU when
  none overlaps it), ties by objectness (the stored order; :func:`resedis.boxes.best_match`); without ``box`` the stored region of highest objectness. ``q̂`` is
  recovered from the stored vector: its first E components are ``s·ê`` with ``s > 0``,
  so ``q̂ = s·ê / |s·ê| = e / |e|``. The detector normalises a query embedding as
  ``e / (|e| + 1e-6)``, a relative difference of ``1e-6 / |e|`` (far below the float32
  resolution of a logit for real embeddings); a float16 index stores ``s·ê`` rounded to
  2^-11 relative, which bounds the error of ``q̂`` the same way it bounds text logits.
* image not indexed: it is encoded once with the index's region encoder
  (:meth:`resedis.models.owl.OwlBackend.image_query`): with ``box``, the predicted box with
  the highest IoU with it (the same rule); without, OWL's own rule of transformers'
  ``embed_image_query`` (OWLv2: the patch of highest objectness; OWL-ViT: among the
  boxes whose IoU with the whole image is within 80% of the best, the one least similar
  to the mean class embedding). ``q̂ = e / (|e| + 1e-6)`` exactly as the detector uses it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from resedis.boxes import best_match
from resedis.errors import ResedisError
from resedis.io.images import open_rgb


def parse_box(value: Any, name: str = "box") -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` or a sequence of 4 numbers -> a checked xyxy tuple (pixels)."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", ",").split(",") if p]
    else:
        try:
            parts = list(value)
        except TypeError:
            parts = [value]
    try:
        box = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        box = ()
    if len(box) != 4 or not all(np.isfinite(box)):
        raise ResedisError(f"{name}: expected four numbers x0,y0,x1,y1 in pixels, got {value!r}")
    if not (box[2] > box[0] and box[3] > box[1]):
        raise ResedisError(f"{name}: {list(box)} has no area; x1 must exceed x0 and y1 exceed y0 (xyxy pixels)")
    return box  # type: ignore[return-value]


@dataclass(frozen=True)
class ByExample:
    """The example region of a query by example: exactly one of ``image_id`` (an indexed
    image) and ``image`` (a path or PIL image that need not be indexed); ``box`` xyxy in
    that image's pixels (None: the rule of the module docstring)."""

    image_id: str | None = None
    image: Any = None
    box: tuple[float, float, float, float] | None = None

    def validated(self) -> ByExample:
        if (self.image_id is None) == (self.image is None):
            raise ResedisError("query by example needs exactly one of image_id (an indexed image) and image "
                               "(a file that need not be indexed)")
        if self.image_id is not None and (not isinstance(self.image_id, str) or not self.image_id):
            raise ResedisError(f"image_id must be an indexed image's id (its path relative to the indexed folder), "
                               f"got {self.image_id!r}")
        box = None if self.box is None else parse_box(self.box)
        return ByExample(self.image_id, self.image, box)

    def label(self) -> str:
        """The result's ``expression``: ``like ID [x0, y0, x1, y1]``."""
        if self.image_id is not None:
            what = self.image_id
        elif isinstance(self.image, (str, os.PathLike)):
            what = os.path.basename(os.fspath(self.image))
        else:
            what = "an image"
        box = "" if self.box is None else " [" + ", ".join(f"{v:g}" for v in self.box) + "]"
        return f"like {what}{box}"


@dataclass
class ExampleQuery:
    """The query an example resolved to: ``vector`` ``[q̂, 1]`` (D,) float32, the chosen
    region's ``box`` (xyxy px of the example image) and where it came from (``source``:
    ``"index"`` with the region's matrix ``row``, or ``"image"`` with its ``patch``)."""

    vector: np.ndarray
    box: tuple[float, float, float, float]
    source: str
    row: int | None = None
    patch: int | None = None

    def to_json(self) -> dict:
        out = {"box": [float(v) for v in self.box], "source": self.source}
        if self.patch is not None:
            out["patch"] = self.patch
        return out


def indexed_example(corpus, example: ByExample, size: tuple[int, int] | None = None) -> ExampleQuery:
    """The query vector of a region of an indexed image (``size``: its (width, height),
    to refuse a box outside it), recovered from its stored vector."""
    if example.image_id not in corpus.image_ids:
        raise ResedisError(f"image {example.image_id!r} is not in the index; give an indexed image id (as in the "
                           "hits' image_id) or use --like-image PATH for an image that is not indexed")
    rows = np.flatnonzero((corpus.region_image == corpus.image_ids.index(example.image_id)) & ~corpus.hidden)
    if len(rows) == 0:
        raise ResedisError(f"image {example.image_id!r} has no stored region to search with")
    if example.box is None:
        row = int(rows[0])  # stored in objectness order
    else:
        if size is not None and not (example.box[0] < size[0] and example.box[1] < size[1] and example.box[2] > 0
                                     and example.box[3] > 0):
            raise ResedisError(f"box {list(example.box)} lies outside image {example.image_id!r} ({size[0]}x{size[1]}); "
                               "give x0,y0,x1,y1 in its pixels")
        row = int(rows[best_match(example.box, corpus.boxes[rows])])  # ties: the first = highest objectness
    v = np.asarray(corpus.row_vectors([row])[0], dtype=np.float64)
    e = v[:-1]
    norm = float(np.linalg.norm(e))
    if not norm > 0.0:
        raise ResedisError(f"region {row} of image {example.image_id!r} has a zero class embedding; pick another box")
    vector = np.concatenate([e / norm, [1.0]]).astype(np.float32)
    return ExampleQuery(vector, tuple(float(x) for x in corpus.boxes[row]), "index", row=row)


def image_example(encoder, example: ByExample) -> ExampleQuery:
    """The query vector of a region of an image that need not be indexed (one forward)."""
    if not hasattr(encoder, "image_query"):
        raise ResedisError(f"{encoder.spec}: this model cannot embed an image region as a query (an OWL model can)")
    image = example.image
    if not isinstance(image, Image.Image):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise ResedisError(f"--like-image {path}: no such file")
        image = open_rgb(path)
    vector, box, patch = encoder.image_query(image, example.box)
    return ExampleQuery(np.asarray(vector, np.float32), tuple(float(x) for x in box), "image", patch=patch)


def example_query(searcher, example: ByExample) -> ExampleQuery:
    """``example`` (validated here) -> its :class:`ExampleQuery` for ``searcher``'s index."""
    example = example.validated()
    if example.image_id is not None:
        corpus = searcher.corpus()
        size = None
        if example.image_id in corpus.image_ids:
            meta = searcher.image_meta(corpus)
            row = corpus.image_ids.index(example.image_id)
            size = (int(meta.widths[row]), int(meta.heights[row]))
        return indexed_example(corpus, example, size)
    return image_example(searcher.encoder, example)


__all__ = ["ByExample", "ExampleQuery", "example_query", "image_example", "indexed_example", "parse_box"]
