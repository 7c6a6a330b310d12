"""The ``masks`` table: masks for hits, SAM prompted with each returned hit's box, cached in the index.

:func:`attach_masks` groups a run's hits by image, looks every (image, box) up in the
index's LanceDB table ``masks`` and runs the segmenter only for the missing ones — one
call per image with all its missing boxes (batched per image) — then stores them. A
repeated query therefore costs no segmenter call. Masks are COCO RLE in ``Hit.mask``
(``{"size": [H, W], "counts": str}``, the image's original size).

Cache key: ``(image_id, sha256, box_key, segmenter)`` where ``image_id``/``sha256`` are
the index's (a changed file has a new hash, so stale masks are never served),
``box_key`` the xyxy box rounded to 0.01 px (``"x0,y0,x1,y1"``) and ``segmenter`` the
canonical model spec, followed by ``#`` and the segmenter's ``mask_rule`` when it has one
(how masks are restricted to their box: a changed rule never serves older masks). Hits
whose image is not in the index are keyed by their file's real path and content hash.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Sequence

import numpy as np
import pyarrow as pa

from resedis.models.spec import canonical_spec
from resedis.index.store import IMAGES, Index, in_list, sql_quote
from resedis.io.images import open_rgb, sha256_file
from resedis.masks import encode_mask
from resedis.types import QueryResult

log = logging.getLogger(__name__)

MASKS = "masks"


def masks_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("box_key", pa.string(), nullable=False),
            pa.field("segmenter", pa.string(), nullable=False),
            pa.field("height", pa.int32(), nullable=False),
            pa.field("width", pa.int32(), nullable=False),
            pa.field("counts", pa.string(), nullable=False),
        ]
    )


def box_key(box: Sequence[float]) -> str:
    return ",".join(f"{float(v):.2f}" for v in box)


class MaskCache:
    """The ``masks`` table of an index (created on first write)."""

    def __init__(self, index: Index):
        self.index = index
        rows = index.read(IMAGES, ["image_id", "path", "sha256"]).to_pylist()
        self._by_path = {os.path.realpath(r["path"]): (r["image_id"], r["sha256"]) for r in rows}

    def _table(self, create: bool):
        return self.index.table(MASKS, masks_schema() if create else None)

    def image_key(self, path: str) -> tuple[str, str]:
        """(image_id, sha256) of the file at ``path`` (index row, else real path + hash)."""
        real = os.path.realpath(path)
        if real in self._by_path:
            return self._by_path[real]
        key = (real, sha256_file(real))
        self._by_path[real] = key
        return key

    def lookup(self, keys: list[tuple[str, str]], segmenter: str) -> dict[tuple[str, str, str], dict]:
        """{(image_id, sha256, box_key): RLE} for cached masks of these images."""
        table = self._table(create=False)
        if table is None or not keys:
            return {}
        ids = sorted({k[0] for k in keys})
        out: dict[tuple[str, str, str], dict] = {}
        for start in range(0, len(ids), 500):
            where = f"{in_list('image_id', ids[start:start + 500])} AND segmenter = {sql_quote(segmenter)}"
            for r in table.search().where(where).limit(None).to_arrow().to_pylist():
                out[(r["image_id"], r["sha256"], r["box_key"])] = {"size": [r["height"], r["width"]], "counts": r["counts"]}
        return out

    def store(self, rows: list[dict]) -> None:
        if rows:
            self._table(create=True).add(pa.Table.from_pylist(rows, schema=masks_schema()))


def segmenter_key(segmenter) -> str:
    """The cache's ``segmenter`` value: canonical spec [+ ``#`` + the backend's ``mask_rule``]."""
    spec = canonical_spec(segmenter.spec)
    rule = segmenter.mask_rule
    return f"{spec}#{rule}" if rule else spec


def attach_masks(results: list[QueryResult], index: Index, segmenter, *, progress: bool = False) -> list[QueryResult]:
    """Copies of ``results`` whose hits carry SAM masks (``segmenter.segment(image, boxes)``),
    computed only for (image, box) pairs not in the index's mask cache."""
    from tqdm.auto import tqdm

    spec = segmenter_key(segmenter)
    cache = MaskCache(index)
    wanted: dict[str, list[str]] = {}  # path -> box keys (dedup, first-seen order)
    boxes_of: dict[tuple[str, str], tuple[float, ...]] = {}
    for r in results:
        for h in r.hits:
            if h.path is None:
                raise ValueError(f"hit of query {r.query_id!r} in image {h.image_id!r} has no path; cannot segment it")
            bk = box_key(h.box)
            if (h.path, bk) not in boxes_of:
                boxes_of[(h.path, bk)] = tuple(h.box)
                wanted.setdefault(h.path, []).append(bk)
    image_keys = {p: cache.image_key(p) for p in wanted}
    found = cache.lookup(list(image_keys.values()), spec)
    missing = {p: [bk for bk in bks if (*image_keys[p], bk) not in found] for p, bks in wanted.items()}
    missing = {p: bks for p, bks in missing.items() if bks}
    new_rows = []
    for path, bks in tqdm(missing.items(), desc="masks", unit="img", disable=not (progress and missing), dynamic_ncols=True):
        image = open_rgb(path)
        masks = segmenter.segment(image, np.asarray([boxes_of[(path, bk)] for bk in bks], np.float64))
        image_id, sha = image_keys[path]
        for bk, m in zip(bks, masks):
            rle = encode_mask(np.asarray(m, bool))
            found[(image_id, sha, bk)] = rle
            new_rows.append({"image_id": image_id, "sha256": sha, "box_key": bk, "segmenter": spec,
                             "height": rle["size"][0], "width": rle["size"][1], "counts": rle["counts"]})
    cache.store(new_rows)
    if new_rows:
        log.info("segmented %d boxes in %d images (%d served from the cache)", len(new_rows), len(missing),
                 sum(len(b) for b in wanted.values()) - len(new_rows))
    return [
        replace(r, hits=[replace(h, mask=found[(*image_keys[h.path], box_key(h.box))]) for h in r.hits])
        for r in results
    ]
