"""Training examples for referring detection, built from a :class:`Dataset`.

An example is one image with

* its annotated **objects**: (K, 4) xyxy boxes in original-image pixels — every
  target instance of every query in that image, plus (when the dataset root holds a
  COCO ``instances.json``) every annotated object of the image, duplicates merged
  (IoU >= 0.95). All of them are targets of the box and objectness losses;
* its **positive** texts: the dataset expressions with a target in the image, each
  with the indices of the objects it denotes;
* **negative** texts, sampled per step from the dataset's expressions whose targets
  do NOT lie in this image (absent queries included): their class targets are 0 on
  every patch, which is how the model learns presence, not only location. A share of
  them are *hard* negatives: among the image's absent texts, the HARD_POOL with the
  highest word overlap (Jaccard of lower-cased word sets) with one of its positives —
  "the red circle on the left" for an image whose red circle is on the right.

A query's instance list is taken as exhaustive over the corpus (true of ReSeDis and
the synthetic benchmark): an expression with no instance in an image is absent there.
Several datasets can be trained on together; exhaustiveness then only holds inside
each one, so an (image, text) pair from two different datasets is *unlabelled* and
left out of the class loss (``None`` in :attr:`Batch.refs`).

Boxes given to the model are normalised to its square input: OWLv2 pads each image to
a square at the bottom/right before resizing, so ``box / max(W, H)``; OWL-ViT resizes
without padding, so ``x / W``, ``y / H``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from resedis.boxes import box_iou
from resedis.types import Dataset, ImageId, Skipped

log = logging.getLogger(__name__)

DUPLICATE_IOU = 0.95
HARD_POOL = 32


@dataclass
class TrainImage:
    """One image and its targets. ``objects`` (K, 4) float32 xyxy original pixels;
    ``positives`` maps a text index (into :attr:`TrainingSet.texts`) to object indices."""

    image_id: ImageId
    path: str
    width: int
    height: int
    objects: np.ndarray
    positives: dict[int, list[int]] = field(default_factory=dict)
    group: int = 0  # index of the dataset the image comes from


@dataclass
class TrainingSet:
    """All examples of one or more datasets plus their expression pools (texts, unique
    per dataset, in query order; ``text_groups[t]`` = the dataset of text t)."""

    texts: list[str]
    images: list[TrainImage]
    skipped: list[Skipped] = field(default_factory=list)
    text_groups: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.text_groups:
            self.text_groups = [0] * len(self.texts)
        groups = np.asarray(self.text_groups, dtype=np.int64)
        self._group_texts = {int(g): np.flatnonzero(groups == g) for g in np.unique(groups)}

    def negatives_for(self, index: int) -> np.ndarray:
        """Indices of the texts of the image's own dataset that are absent from it."""
        img = self.images[index]
        pool = self._group_texts.get(img.group, np.zeros(0, dtype=np.int64))
        return np.array([t for t in pool if int(t) not in img.positives], dtype=np.int64)

    def hard_negatives_for(self, index: int) -> np.ndarray:
        """Up to HARD_POOL absent texts most similar in words to one of the image's
        positives (best first; empty for an image without positives). Cached."""
        cache = self.__dict__.setdefault("_hard", {})
        if index not in cache:
            img = self.images[index]
            if not img.positives:
                cache[index] = np.zeros(0, dtype=np.int64)
            else:
                words = self.__dict__.setdefault("_words", {})
                def ws(t: int) -> frozenset:
                    if t not in words:
                        words[t] = frozenset(self.texts[t].lower().split())
                    return words[t]
                pos = [ws(t) for t in img.positives]
                neg = self.negatives_for(index)
                sim = np.array([max(len(ws(int(t)) & p) / max(len(ws(int(t)) | p), 1) for p in pos) for t in neg])
                order = np.argsort(-sim, kind="stable")[:HARD_POOL]
                cache[index] = neg[order]
        return cache[index]

    @classmethod
    def concat(cls, parts: list["TrainingSet"]) -> "TrainingSet":
        """Several datasets as one training set; part i becomes group i."""
        texts, groups, images, skipped = [], [], [], []
        for g, part in enumerate(parts):
            offset = len(texts)
            texts += part.texts
            groups += [g] * len(part.texts)
            skipped += part.skipped
            for img in part.images:
                images.append(TrainImage(img.image_id, img.path, img.width, img.height, img.objects,
                                         {t + offset: v for t, v in img.positives.items()}, group=g))
        return cls(texts=texts, images=images, skipped=skipped, text_groups=groups)


def _all_annotated_objects(dataset: Dataset) -> dict[ImageId, list[tuple[list[float], str | None]]]:
    """Every annotated object of each image from ``ROOT/instances.json``, when present:
    image id -> [(xyxy box, category name or None)]."""
    if not dataset.root:
        return {}
    path = Path(dataset.root) / "instances.json"
    if not path.is_file():
        return {}
    from resedis.io.coco import load_coco_instances

    coco = load_coco_instances(path)
    out: dict[ImageId, list] = {}
    for ann in coco.annotations.values():
        bbox = ann.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
            continue
        x, y, w, h = (float(v) for v in bbox)
        out.setdefault(ann.get("image_id"), []).append(([x, y, x + w, y + h], coco.categories.get(ann.get("category_id"))))
    return out


def _add_object(objects: list[list[float]], box: tuple | list) -> int:
    """Index of ``box`` among ``objects``, appending it unless a duplicate exists."""
    if objects:
        iou = box_iou(np.asarray([box], dtype=np.float64), np.asarray(objects, dtype=np.float64))[0]
        j = int(np.argmax(iou))
        if iou[j] >= DUPLICATE_IOU:
            return j
    objects.append([float(v) for v in box])
    return len(objects) - 1


def build_training_set(dataset: Dataset, *, use_all_objects: bool = True, category_texts: bool = False) -> TrainingSet:
    """Turn a dataset into training examples (see the module docstring).

    ``category_texts``: also train on the COCO category names of ``instances.json`` as
    expressions, each denoting every annotated object of its category (exhaustive: the
    way OWL detectors learn from detection data); needs ``use_all_objects``.

    Images whose file is missing are left out and listed in ``skipped`` (and logged).
    Expressions are unique in ``texts``; two queries with the same expression text
    share one text whose positives are the union of their instances.
    """
    texts: list[str] = []
    text_index: dict[str, int] = {}
    for q in dataset.queries:
        if q.expression not in text_index:
            text_index[q.expression] = len(texts)
            texts.append(q.expression)

    extra = _all_annotated_objects(dataset) if use_all_objects else {}
    objects: dict[ImageId, list[list[float]]] = {}
    positives: dict[ImageId, dict[int, list[int]]] = {}
    for image_id, annotated in extra.items():
        if image_id not in dataset.images:
            continue
        for box, category in annotated:
            k = _add_object(objects.setdefault(image_id, []), box)
            if category_texts and category:
                name = " ".join(category.split())
                if name not in text_index:
                    text_index[name] = len(texts)
                    texts.append(name)
                ks = positives.setdefault(image_id, {}).setdefault(text_index[name], [])
                if k not in ks:
                    ks.append(k)
    for q in dataset.queries:
        t = text_index[q.expression]
        for inst in q.instances:
            k = _add_object(objects.setdefault(inst.image_id, []), inst.box)
            ks = positives.setdefault(inst.image_id, {}).setdefault(t, [])
            if k not in ks:
                ks.append(k)

    images: list[TrainImage] = []
    skipped: list[Skipped] = []
    for image_id, info in dataset.images.items():
        if not info.path or not Path(info.path).is_file():
            skipped.append(Skipped(source=str(info.path or info.file_name), reason="image file not found"))
            continue
        objs = np.asarray(objects.get(image_id, []), dtype=np.float32).reshape(-1, 4)
        images.append(
            TrainImage(
                image_id=image_id,
                path=str(info.path),
                width=int(info.width),
                height=int(info.height),
                objects=objs,
                positives=positives.get(image_id, {}),
            )
        )
    if skipped:
        log.warning("%d image(s) left out of training (file not found), e.g. %s", len(skipped), skipped[0].source)
    if not images:
        raise ValueError(f"dataset {dataset.name!r}: no image file found, nothing to train on")
    return TrainingSet(texts=texts, images=images, skipped=skipped)


def normalised_boxes(image: TrainImage, pad_to_square: bool) -> torch.Tensor:
    """The image's objects as (K, 4) float32 cxcywh normalised to the model input."""
    b = torch.as_tensor(image.objects, dtype=torch.float32).reshape(-1, 4)
    if pad_to_square:
        scale = torch.tensor([max(image.width, image.height)] * 4, dtype=torch.float32)
    else:
        scale = torch.tensor([image.width, image.height, image.width, image.height], dtype=torch.float32)
    b = (b / scale).clamp(0.0, 1.0)
    return torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], -1)


@dataclass
class Batch:
    """One training step's inputs.

    indices:   image indices into the training set, length B
    texts:     the step's texts (indices into ``TrainingSet.texts``), length T
    refs:      refs[b][j] = object indices of image b that text j denotes ([] = absent,
               None = unlabelled: text and image come from different datasets)
    """

    indices: list[int]
    texts: list[int]
    refs: list[list[list[int] | None]]


def make_batch(ts: TrainingSet, indices: list[int], negatives_per_image: int, rng: np.random.Generator,
               hard_fraction: float = 0.0) -> Batch:
    """Texts = positives of every image + ``negatives_per_image`` sampled negatives per
    image (``round(hard_fraction * n)`` of them from the image's hard negatives, the
    rest uniformly from all its negatives); every (image, text) pair of the batch from
    the same dataset is labelled, so another image's positive is a further negative
    wherever it is absent."""
    chosen: dict[int, None] = {}
    for i in indices:
        for t in ts.images[i].positives:
            chosen.setdefault(t, None)
    for i in indices:
        if negatives_per_image <= 0:
            continue
        picked: set[int] = set()
        n_hard = int(round(hard_fraction * negatives_per_image))
        hard = ts.hard_negatives_for(i) if n_hard > 0 else np.zeros(0, dtype=np.int64)
        if len(hard):
            picked.update(int(v) for v in rng.choice(hard, size=min(n_hard, len(hard)), replace=False))
        neg = ts.negatives_for(i)
        rest = np.array([t for t in neg if int(t) not in picked], dtype=np.int64)
        n_rest = min(negatives_per_image - len(picked), len(rest))
        if n_rest > 0:
            picked.update(int(v) for v in rng.choice(rest, size=n_rest, replace=False))
        for t in sorted(picked):
            chosen.setdefault(t, None)
    texts = list(chosen)
    refs = [
        [list(ts.images[i].positives.get(t, [])) if ts.text_groups[t] == ts.images[i].group else None for t in texts]
        for i in indices
    ]
    return Batch(indices=list(indices), texts=texts, refs=refs)


class PixelStore:
    """Model inputs of the training images, computed with the checkpoint's own
    processor (so training sees exactly what indexing will) from images decoded as
    the indexer decodes them (``resedis.io.images.open_rgb``: EXIF-rotated RGB).

    ``get(indices)`` -> (B, 3, S, S) float32. Results are kept in memory as float16 up
    to ``cache_bytes`` (default 3 GiB); beyond that images are re-processed per batch.
    """

    def __init__(self, processor, images: list[TrainImage], cache_bytes: int = 3 << 30):
        self.processor = processor
        self.images = images
        self.cache_bytes = cache_bytes
        self._cache: dict[int, torch.Tensor] = {}
        self._used = 0

    def _process(self, indices: list[int]) -> torch.Tensor:
        from resedis.io.images import open_rgb

        pil = []
        for i in indices:
            img = open_rgb(self.images[i].path)
            if img.size != (self.images[i].width, self.images[i].height):
                raise ValueError(
                    f"{self.images[i].path}: decoded size {img.size} differs from the dataset's "
                    f"width/height {(self.images[i].width, self.images[i].height)}; boxes would be wrong"
                )
            pil.append(img)
        return self.processor(images=pil, return_tensors="pt")["pixel_values"].float()

    def get(self, indices: list[int]) -> torch.Tensor:
        missing = [i for i in indices if i not in self._cache]
        if missing:
            # rounded through float16 always, so cached and fresh inputs are identical
            fresh = self._process(missing).to(torch.float16).float()
            for i, t in zip(missing, fresh):
                size = t.numel() * 2
                if self._used + size <= self.cache_bytes:
                    self._cache[i] = t.to(torch.float16)
                    self._used += size
            got = dict(zip(missing, fresh))
        else:
            got = {}
        return torch.stack([got[i] if i in got else self._cache[i].float() for i in indices])
