"""How to build an index (:class:`IndexConfig`) and what a build did (:class:`IndexReport`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from resedis.errors import ResedisError
from resedis.quant import check_storage
from resedis.index.ann import DEFAULT_MIN_ROWS as DEFAULT_ANN_MIN_ROWS
from resedis.index.crops import CropConfig
from resedis.index.skips import FILE, RETRY, TRANSIENT, skip_kind
from resedis.io.images import DEFAULT_MAX_PIXELS
from resedis.types import Skipped

DEFAULT_MAX_REGIONS = 100
# Index-time NMS over one image's region proposals (stored in the manifest as ``nms_iou``);
# not the search-time NMS over an image's hits (resedis.search.HIT_NMS_IOU).
REGION_NMS_IOU = 0.5


@dataclass
class IndexConfig:
    """How to build an index. ``model``, ``max_regions``, ``nms_iou`` and ``vector_dtype``
    left at None mean: the index's own setting, or for a new index the default model,
    100 regions, NMS IoU 0.5 and float16 storage. An explicit value must match an existing index.

    vector_dtype: storage format of region vectors (:mod:`resedis.quant`): ``float16``
    (logits within about 1e-3 relative, see tests/index/test_index.py), ``float32``, ``int8`` or
    ``int4`` (per-row scaled codes + exact bias; logit error within the tested bound
    ``(step/2)·‖q̂‖₁``). None: the index's own, or :data:`resedis.quant.DEFAULT_STORAGE`.
    max_pixels: decompression-bomb guard (images with more pixels are skipped).
    rehash: hash every file even when its size and mtime are unchanged.
    retry_skipped: read every recorded skip again, also those caused by the file itself
    (without it those wait until the file changes; skips whose cause may pass — the model
    or device failed, a read error — are retried on every run: :mod:`resedis.index.skips`).
    crops: also embed crops for the clip-crops pipeline (:class:`resedis.index.crops.CropConfig`),
    written in the same batches from the same decoded images; an index that has crops keeps
    them in sync on later runs even without it (the crops side table,
    :class:`resedis.index.side.SideTable`).
    ann_min_rows: build an ANN index over the region vectors once the index holds this
    many regions (``resedis.index.ann``; searches then re-score ANN candidates exactly).
    follow_symlinks: also index symlinks (files, folders) leading outside the image folder;
    by default they are recorded as skips (``resedis.io.images.walk_images``).
    """

    model: str | None = None
    batch_size: int = 8
    max_regions: int | None = None
    nms_iou: float | None = None
    device: str | None = None
    prune: bool = False
    vector_dtype: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    workers: int = 4
    rehash: bool = False
    retry_skipped: bool = False
    crops: CropConfig | None = None
    ann_min_rows: int = DEFAULT_ANN_MIN_ROWS
    follow_symlinks: bool = False

    def validate(self) -> None:
        if self.crops is not None:
            self.crops.validate()
        if self.batch_size < 1:
            raise ResedisError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_regions is not None and self.max_regions < 1:
            raise ResedisError(f"max_regions must be >= 1, got {self.max_regions}")
        if self.nms_iou is not None and not 0.0 < self.nms_iou <= 1.0:
            raise ResedisError(f"nms_iou must be in (0, 1] (1 disables NMS), got {self.nms_iou}")
        if self.vector_dtype is not None:
            check_storage(self.vector_dtype)
        if self.max_pixels < 1:
            raise ResedisError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.workers < 1:
            raise ResedisError(f"workers must be >= 1, got {self.workers}")
        if self.ann_min_rows < 1:
            raise ResedisError(f"ann_min_rows must be >= 1, got {self.ann_min_rows}")


@dataclass
class IndexReport:
    """What a build did. ``skipped`` lists every file currently recorded as unusable."""

    db: str
    root: str
    model: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    new_skipped: int = 0
    seconds: float = 0.0
    encoded: int = 0

    @property
    def images_per_s(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "db": self.db,
            "root": self.root,
            "model": self.model,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "skipped": [
                {"path": s.source, "reason": s.reason, "kind": skip_kind(s.reason), "retry": RETRY[skip_kind(s.reason)]}
                for s in self.skipped
            ],
            "new_skipped": self.new_skipped,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 3),
        }

    def summary(self) -> str:
        kinds = [skip_kind(s.reason) for s in self.skipped]
        transient, bad = kinds.count(TRANSIENT), kinds.count(FILE)
        why = ""
        if self.skipped:
            why = (f"; {transient} transient: {RETRY[TRANSIENT]}, {bad} file: {RETRY[FILE]}")
        return (
            f"{self.added} added, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.removed} removed, {len(self.skipped)} skipped ({self.new_skipped} new{why}) "
            f"in {self.seconds:.1f} s"
        )
