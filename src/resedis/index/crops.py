"""The ``crops`` side table: crop embeddings for the ``clip-crops`` pipeline (writer, readers, repair).

Each candidate box of an image is cropped and embedded ONCE by a CLIP/SigLIP encoder
(``clip:`` / ``siglip:`` spec) and stored in the index's LanceDB directory, table
``crops`` (one row per crop)::

    image_id  str      the index's image id (POSIX path relative to the root)
    batch     int64    the images row's batch (same consistency rule as ``regions``:
                       a crop whose (image_id, batch) has no images row is ignored)
    crop      int32    rank within the image (proposal score order)
    box       float32[4]  xyxy original-image pixels
    source    str      "owl" (the index's own OWL boxes, top by objectness) or "yolo"
    score     float32  the proposal's objectness logit / detector confidence
    vector    float16[E]  L2-normalised crop embedding

The manifest's ``crops`` entry records ``model``, ``embed_dim``, ``proposals``,
``max_crops`` and ``weights_fingerprint`` (:mod:`resedis.models.fingerprint` of the crop
encoder's weights; absent in indexes built before it was recorded = "unknown": used as
before, one warning). Searching the crops and adding more refuse other weights behind the
same spec (:func:`check_crop_weights`). Crops are written by the index writer in the same batch as the regions
(images decoded once: ``resedis index --crop-model clip:...``), or afterwards for an
existing index by :func:`add_crops` (which has to decode the images again).

:class:`CropWriter` is the index writer's :class:`resedis.index.side.SideTable` for crops.

Proposal sources (:mod:`resedis.index.crop_proposals`): ``owl`` (default),
``yolo[:WEIGHTS]`` (Ultralytics YOLOv8, extra ``[yolo]``, imported lazily; ``WEIGHTS`` a
local ``.pt`` file); the query-time oracle ``gt`` is not stored (``resedis.pipelines.proposals``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

from resedis.errors import IndexMismatchError, ResedisError
from resedis.index.commit import Lock, delete_ids
from resedis.index.crop_proposals import DEFAULT_YOLO_WEIGHTS, load_yolo, owl_boxes, yolo_boxes
from resedis.index.manifest import read_manifest, warn_once, write_manifest
from resedis.index.store import IMAGES, REGIONS, Index, column_matrix, in_list, open_index
from resedis.io.images import open_rgb
from resedis.models import load_model
from resedis.models.fingerprint import encoder_fingerprint, encoder_weights_dir, fingerprint_matches, short_fingerprint
from resedis.models.spec import IMAGE_TEXT, canonical_spec
from resedis.types import ImageRegions

log = logging.getLogger(__name__)

CROPS = "crops"
MANIFEST_KEY = "crops"
DEFAULT_MAX_CROPS = 20


def crops_schema(embed_dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("batch", pa.int64(), nullable=False),
            pa.field("crop", pa.int32(), nullable=False),
            pa.field("box", pa.list_(pa.float32(), 4), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("score", pa.float32(), nullable=False),
            pa.field("vector", pa.list_(pa.float16(), embed_dim), nullable=False),
        ]
    )


@dataclass
class CropConfig:
    """How crops are proposed and embedded at index time.

    model: ``clip:...`` / ``siglip:...`` spec; proposals: ``owl`` or ``yolo[:WEIGHTS]``;
    max_crops: boxes embedded per image (top by proposal score).
    """

    model: str
    proposals: str = "owl"
    max_crops: int = DEFAULT_MAX_CROPS

    def validate(self) -> None:
        if self.max_crops < 1:
            raise ResedisError(f"max_crops must be >= 1, got {self.max_crops}")
        if not (self.proposals == "owl" or self.proposals == "yolo" or self.proposals.startswith("yolo:")):
            raise ResedisError(f"crop proposals must be 'owl' or 'yolo[:WEIGHTS]', got {self.proposals!r} ('gt' is query-time only)")
        family = self.model.partition(":")[0].strip().lower()
        if family not in ("clip", "siglip"):
            raise ResedisError(f"crop model must be a clip: or siglip: spec, got {self.model!r}")


class CropWriter:
    """Embeds and writes one batch's crops (called by the index writer before the batch's
    images rows — the commit point — or by :func:`add_crops`). The writer's
    :class:`~resedis.index.side.SideTable` for crops."""

    name = CROPS

    def __init__(self, index: Index, config: CropConfig, encoder=None, device: str | None = None):
        config.validate()
        self.index = index
        self.config = config
        if encoder is None:
            encoder = load_model(config.model, device)
        if encoder.kind != IMAGE_TEXT:
            raise ResedisError(f"{config.model}: not an image-text encoder (clip:/siglip:)")
        self.encoder = encoder
        self._yolo = None
        if config.proposals != "owl":
            self._yolo = load_yolo(config.proposals.partition(":")[2] or DEFAULT_YOLO_WEIGHTS)
        self.table = open_crops_table(index, int(encoder.embed_dim), create=True)
        self.seconds, self.images = 0.0, 0  # crop cost, see save_stats
        self._check_manifest()

    def _check_manifest(self) -> None:
        spec = canonical_spec(self.encoder.spec)
        entry = {"model": spec, "embed_dim": int(self.encoder.embed_dim), "proposals": self.config.proposals,
                 "max_crops": self.config.max_crops}
        manifest = read_manifest(self.index.path)
        old = manifest.extra.get(MANIFEST_KEY)
        has_rows = bool(self.table.count_rows())
        if old and has_rows and old.get("model") == spec:  # adding to existing crops: same weights?
            check_crop_weights(manifest, self.encoder, self.index.path)
            fingerprint = old.get("weights_fingerprint")  # unknown stays unknown
        else:
            fingerprint = encoder_fingerprint(self.encoder)
        if fingerprint is not None:
            entry["weights_fingerprint"] = fingerprint
        if old:
            entry.update({k: v for k, v in old.items() if k in ("seconds_per_image", "timed_images")})
        if old and (old.get("model"), old.get("proposals"), old.get("max_crops")) != (spec, entry["proposals"], entry["max_crops"]):
            if has_rows:
                raise ResedisError(
                    f"{self.index.path}: its crops were made with {old.get('model')} ({old.get('proposals')}, "
                    f"{old.get('max_crops')} per image), not {spec} ({entry['proposals']}, {entry['max_crops']}); "
                    "use a separate index for another crop model"
                )
        if old != entry:
            manifest.extra[MANIFEST_KEY] = entry
            write_manifest(self.index.path, manifest)
            self.index.manifest = manifest

    def proposals(self, images: Sequence[Image.Image], regions: Sequence[ImageRegions] | None) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._yolo is not None:
            return yolo_boxes(self._yolo, images, self.config.max_crops)
        if regions is None:
            raise ResedisError("owl crop proposals need the images' OWL regions")
        return [owl_boxes(r, self.config.max_crops) for r in regions]

    def rows(self, ids: Sequence[str], images: Sequence[Image.Image], regions: Sequence[ImageRegions] | None, batch: int) -> pa.Table:
        """Crop rows of one batch (images decoded by the caller; regions from the same batch)."""
        source = "owl" if self._yolo is None else "yolo"
        cols: dict[str, list] = {k: [] for k in ("image_id", "crop", "box", "score", "vector")}
        for image_id, image, (boxes, scores) in zip(ids, images, self.proposals(images, regions)):
            vectors = self.encoder.encode_crops(image, boxes) if len(boxes) else np.zeros((0, self.encoder.embed_dim))
            cols["image_id"] += [image_id] * len(boxes)
            cols["crop"] += list(range(len(boxes)))
            cols["box"].append(np.asarray(boxes, np.float32).reshape(-1, 4))
            cols["score"].append(np.asarray(scores, np.float32))
            cols["vector"].append(np.asarray(vectors, np.float16).reshape(-1, self.encoder.embed_dim))
        n = len(cols["image_id"])
        dim = int(self.encoder.embed_dim)
        box = np.concatenate(cols["box"]) if n else np.zeros((0, 4), np.float32)
        vec = np.concatenate(cols["vector"]) if n else np.zeros((0, dim), np.float16)
        return pa.table(
            {
                "image_id": pa.array(cols["image_id"], pa.string()),
                "batch": pa.array(np.full(n, batch, np.int64)),
                "crop": pa.array(np.asarray(cols["crop"], np.int32)),
                "box": pa.FixedSizeListArray.from_arrays(pa.array(box.ravel(), pa.float32()), 4),
                "source": pa.array([source] * n, pa.string()),
                "score": pa.array(np.concatenate(cols["score"]) if n else np.zeros(0, np.float32), pa.float32()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel(), pa.float16()), dim),
            },
            schema=crops_schema(dim),
        )

    def add(self, ids: Sequence[str], images: Sequence[Image.Image], regions: Sequence[ImageRegions] | None, batch: int) -> int:
        """Embed and append one batch's crops; returns the number of rows written."""
        t0 = time.perf_counter()
        rows = self.rows(ids, images, regions, batch)
        if rows.num_rows:
            self.table.add(rows)
        self.seconds += time.perf_counter() - t0
        self.images += len(ids)
        return rows.num_rows

    def save_stats(self) -> None:
        """Record the crop cost (``crops.seconds_per_image``, running mean) in the manifest."""
        if not self.images:
            return
        manifest = read_manifest(self.index.path)
        entry = dict(manifest.extra.get(MANIFEST_KEY) or {})
        n_old = int(entry.get("timed_images", 0))
        old = float(entry.get("seconds_per_image", 0.0))
        entry["timed_images"] = n_old + self.images
        entry["seconds_per_image"] = (old * n_old + self.seconds) / (n_old + self.images)
        manifest.extra[MANIFEST_KEY] = entry
        write_manifest(self.index.path, manifest)
        self.index.manifest = manifest
        self.seconds, self.images = 0.0, 0

    def delete(self, ids: Sequence[str]) -> None:
        """Remove the crops of these image ids (replaced or pruned files)."""
        delete_ids(self.table, "image_id", list(ids))

    def repair(self) -> int:
        """Delete crops left by interrupted batches (:func:`repair_crops`)."""
        return repair_crops(self.index)

    def backfill(self, *, progress: bool = True) -> int:
        """Embed crops for indexed images that have none (:func:`backfill_crops`)."""
        return backfill_crops(self.index, self, progress=progress)


def check_crop_weights(manifest, encoder, db) -> None:
    """Raise IndexMismatchError when the loaded crop ``encoder``'s weights are not those the
    crops of the index (``manifest.extra["crops"]``) were embedded with: new text vectors
    against old crop vectors score nonsense, and adding crops would mix two models. An entry
    without ``weights_fingerprint`` (older index) is "unknown": allowed, with one log warning
    per index and process."""
    entry = manifest.extra.get(MANIFEST_KEY) or {}
    stored, spec = entry.get("weights_fingerprint"), entry.get("model")
    if stored is None:
        warn_once(
            ("crops", str(db)), log,
            "%s: the index records no weights fingerprint for its crop model %s (built before resedis "
            "recorded one), so it cannot be checked that the crops were embedded with the weights it has "
            "now; if those weights changed since, re-embed the crops into a new --db", db, spec,
        )
        return
    matches, current = fingerprint_matches(stored, encoder_weights_dir(encoder))  # v1 or v2
    if not matches:
        raise IndexMismatchError(
            f"{db}: its crops were embedded with crop model {spec!r} weights {short_fingerprint(stored)}, but "
            f"the weights at {encoder_weights_dir(encoder)} are now {short_fingerprint(current)}: they were "
            "retrained or replaced since, and crop vectors of other weights are not comparable with the new "
            "text tower (scores would be meaningless, added crops would mix two models). Re-embed the crops "
            f"into a new index (resedis index {manifest.root} --db NEW_DB --model {manifest.model} --crop-model {spec}), or restore the "
            "weights the crops were embedded with."
        )


def open_crops_table(index: Index, embed_dim: int | None = None, *, create: bool = False):
    """The index's ``crops`` table, or None when it has none (``create``: make it)."""
    return index.table(CROPS, crops_schema(int(embed_dim)) if create else None)


@dataclass
class CropCorpus:
    """Every committed crop of an index (or the GT proposals of a dataset), in memory.

    image_ids / paths / sizes (W, H): per image row; crop_image (N,) int64 image row of each
    crop; boxes (N, 4) float32 xyxy px; vectors (N, E) float32 L2-normalised.
    """

    image_ids: list
    paths: list[str]
    sizes: list[tuple[int, int]]
    crop_image: np.ndarray
    boxes: np.ndarray
    vectors: np.ndarray
    model: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.crop_image.shape[0])


def load_crops(index: Index) -> CropCorpus:
    """The index's crops joined with its images rows (orphans of interrupted batches excluded).
    Raises ResedisError when the index has no crops."""
    entry = index.manifest.extra.get(MANIFEST_KEY)
    table = open_crops_table(index)
    if not entry or table is None:
        raise ResedisError(
            f"{index.path}: the index has no crop embeddings; the clip-crops pipeline needs them: "
            "rebuild with `resedis index IMAGES_DIR --db DB --crop-model clip:SPEC` "
            "(or use --proposals gt with a dataset)"
        )
    images = index.read(IMAGES, ["image_id", "path", "batch", "width", "height"])
    crops = table.search().select(["image_id", "batch", "box", "vector"]).limit(None).to_arrow()
    img_row = {(i, b): r for r, (i, b) in enumerate(zip(images["image_id"].to_pylist(), images["batch"].to_pylist()))}
    rows = [img_row.get(key, -1) for key in zip(crops["image_id"].to_pylist(), crops["batch"].to_pylist())]
    rows = np.asarray(rows, np.int64)
    keep = rows >= 0
    dim = int(entry["embed_dim"])
    vectors = column_matrix(crops["vector"], dim, np.float32)[keep]
    boxes = column_matrix(crops["box"], 4, np.float32)[keep]
    return CropCorpus(
        image_ids=images["image_id"].to_pylist(),
        paths=images["path"].to_pylist(),
        sizes=list(zip(images["width"].to_pylist(), images["height"].to_pylist())),
        crop_image=rows[keep],
        boxes=boxes,
        vectors=vectors,
        model=str(entry["model"]),
        source=str(entry.get("proposals", "")),
    )


def add_crops(db, config: CropConfig, *, device: str | None = None, progress: bool = True, encoder=None) -> int:
    """Embed crops for every image of an existing index that has none yet (decodes those
    images again; index with ``--crop-model`` to avoid that). Returns crops written."""
    index = open_index(db)
    with Lock(index.path):  # the index's writer lock: no concurrent `resedis index`
        writer = CropWriter(index, config, encoder=encoder, device=device)
        repair_crops(index)
        return backfill_crops(index, writer, progress=progress)


def stored_crop_config(index: Index) -> CropConfig | None:
    """The crop settings recorded in the manifest (so incremental index runs keep crops in sync)."""
    entry = index.manifest.extra.get(MANIFEST_KEY)
    if not entry or not entry.get("model"):
        return None
    return CropConfig(model=str(entry["model"]), proposals=str(entry.get("proposals", "owl")),
                      max_crops=int(entry.get("max_crops", DEFAULT_MAX_CROPS)))


def repair_crops(index: Index) -> int:
    """Delete crops whose (image_id, batch) has no images row (interrupted batches, replaced
    files). Returns rows deleted. Call with the index's writer lock held."""
    table = open_crops_table(index)
    if table is None:
        return 0
    done = set(zip(*[index.read(IMAGES, ["image_id", "batch"])[c].to_pylist() for c in ("image_id", "batch")]))
    keys = table.search().select(["image_id", "batch"]).limit(None).to_arrow()
    orphans: dict[int, set[str]] = {}
    for key in zip(keys["image_id"].to_pylist(), keys["batch"].to_pylist()):
        if key not in done:
            orphans.setdefault(int(key[1]), set()).add(key[0])
    before = table.count_rows()
    for batch, ids in orphans.items():
        ids = sorted(ids)
        for start in range(0, len(ids), 500):
            table.delete(f"batch = {batch} AND {in_list('image_id', ids[start:start + 500])}")
    return before - table.count_rows()


def backfill_crops(index: Index, writer: CropWriter, *, progress: bool = True) -> int:
    """Embed crops for indexed images that have none (images with no OWL regions are
    skipped under ``owl`` proposals); records the cost. Returns crops written."""
    from tqdm.auto import tqdm

    images = index.read(IMAGES, ["image_id", "path", "batch", "n_regions"]).to_pylist()
    keys = writer.table.search().select(["image_id", "batch"]).limit(None).to_arrow()
    done = set(zip(keys["image_id"].to_pylist(), keys["batch"].to_pylist()))
    todo = [r for r in images if (r["image_id"], r["batch"]) not in done
            and (writer.config.proposals != "owl" or r["n_regions"] > 0)]
    written = 0
    if todo:
        regions_tbl = index.read(REGIONS, ["image_id", "batch", "box", "objectness"])
        by_key: dict[tuple, list[int]] = {}
        for i, key in enumerate(zip(regions_tbl["image_id"].to_pylist(), regions_tbl["batch"].to_pylist())):
            by_key.setdefault(key, []).append(i)
        all_boxes = column_matrix(regions_tbl["box"], 4, np.float32)
        objectness = regions_tbl["objectness"].to_numpy()
        for r in tqdm(todo, desc="crops", unit="img", disable=not progress, dynamic_ncols=True):
            sel = np.asarray(by_key.get((r["image_id"], r["batch"]), []), np.int64)
            regions = ImageRegions(boxes=all_boxes[sel], objectness=objectness[sel].astype(np.float32),
                                   vectors=np.zeros((len(sel), 0), np.float32))
            written += writer.add([r["image_id"]], [open_rgb(r["path"])], [regions], int(r["batch"]))
    writer.save_stats()
    return written
