"""The region matrix a :class:`~resedis.search.Searcher` scores: every committed region of
an index in memory, and the exact matrix product ``logits = vectors @ queries.T``.

Memory vs speed (``matrix_dtype``):

* ``"float32"`` (default): the region matrix is held in float32. A float16 index's
  vectors are converted **once**, at the first exact product (the ANN path never
  needs it), and the float32 matrix replaces the float16 one: it holds
  ``4 bytes × rows × dim`` (2.05 GB for a million 513-d OWL-B regions; 6 bytes × rows
  × dim at the moment of conversion). Every float16 value is exactly representable in
  float32, so the logits are bit-identical to the ``"stored"`` mode's.
* ``"stored"``: keep the vectors as stored (``2 bytes × rows × dim`` for a float16
  index) and convert each chunk of ``_CHUNK_ROWS`` rows to float32 during every query:
  half the memory, ~15× slower exact search (1M regions: 1675 vs 112 ms measured,
  ``docs/benchmarks.md``).

Both modes run the same chunked float32 product, so they return the same numbers.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from resedis.boxes import visible
from resedis.errors import ResedisError
from resedis.index.sane import sane_regions
from resedis.index.store import IMAGES, REGIONS, Index, column_matrix

log = logging.getLogger(__name__)

MATRIX_DTYPES = ("float32", "stored")
DEFAULT_MATRIX_DTYPE = "float32"
# Region rows multiplied per matrix-product chunk (bounds the float32 temporary of "stored").
_CHUNK_ROWS = 1 << 18


def check_matrix_dtype(matrix_dtype: str) -> str:
    if matrix_dtype not in MATRIX_DTYPES:
        raise ResedisError(
            f"matrix_dtype must be one of {', '.join(MATRIX_DTYPES)} (float32: fast exact search, "
            f"4 bytes x rows x dim; stored: the index's own dtype, converted per query), got {matrix_dtype!r}"
        )
    return matrix_dtype


@dataclass
class Corpus:
    """Every committed region of an index, in memory (orphans of interrupted batches excluded).

    image_ids / paths: per image row; region_image (N,) int64 image row of each region;
    boxes (N, 4) float32 xyxy original px; vectors (N, D) as stored (float16/float32)
    until the first exact product under ``matrix_dtype="float32"``, then the same
    values in float32 (see the module docstring); hidden (N,) bool: regions whose box,
    clipped to its image, has zero area (never returned as hits; None: none hidden);
    image_sizes (I, 2) float64 ``(W, H)`` pixels per image row (used by compositional search).
    """

    version: tuple[int, int]
    image_ids: list[str]
    paths: list[str]
    region_image: np.ndarray
    boxes: np.ndarray
    vectors: np.ndarray
    matrix_dtype: str = DEFAULT_MATRIX_DTYPE
    hidden: np.ndarray | None = None
    image_sizes: np.ndarray | None = None  # (I, 2) float64 (W, H) px per image row (None: not loaded)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_matrix_dtype(self.matrix_dtype)
        if self.hidden is None:
            self.hidden = np.zeros(len(self), dtype=bool)
        elif self.hidden.shape != (len(self),):
            raise ResedisError(f"hidden must have one flag per region ({len(self)}), got shape {self.hidden.shape}")

    def __len__(self) -> int:
        return int(self.region_image.shape[0])

    def matrix(self) -> np.ndarray:
        """(N, D) region matrix for the product: float32 under ``matrix_dtype="float32"``
        (converted once, exactly, replacing the stored float16), else ``vectors`` as stored."""
        if self.matrix_dtype == "float32" and self.vectors.dtype != np.float32:
            with self._lock:  # the service may search from several threads
                if self.vectors.dtype != np.float32:
                    gb = 4 * self.vectors.size / 1e9
                    log.info("region matrix %s -> float32 (%.2f GB), once per loaded index", self.vectors.shape, gb)
                    self.vectors = self.vectors.astype(np.float32)
        return self.vectors

    def logits(self, queries: np.ndarray) -> np.ndarray:
        """(Q, D) query vectors -> (N, Q) float32 logits, computed in float32 chunks."""
        queries = np.asarray(queries, dtype=np.float32)
        matrix = self.matrix()
        out = np.empty((len(self), queries.shape[0]), dtype=np.float32)
        for start in range(0, len(self), _CHUNK_ROWS):
            block = matrix[start : start + _CHUNK_ROWS].astype(np.float32, copy=False)
            out[start : start + _CHUNK_ROWS] = block @ queries.T
        return out

    def rows_logits(self, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """(M,) region rows, (Q, D) query vectors -> (M, Q) float32 logits of those rows
        only, from the stored vectors converted exactly to float32 (never the whole
        matrix: a compositional query scores its chosen images' regions this way)."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        rows = np.asarray(rows, dtype=np.int64)
        return self.vectors[rows].astype(np.float32, copy=False) @ queries.T


def load_corpus(index: Index, matrix_dtype: str = DEFAULT_MATRIX_DTYPE) -> Corpus:
    """Read images + regions and keep regions whose ``(image_id, batch)`` has an images row.
    Regions whose box has no visible area in its image are kept as rows (the ANN path
    addresses rows by position) and flagged ``hidden``."""
    version = index.version()
    images = index.read(IMAGES, ["image_id", "path", "batch", "width", "height"])
    regions = index.read(REGIONS, ["image_id", "batch", "box", "vector"])
    keys_img = pa.table(
        {"image_id": images["image_id"], "batch": images["batch"], "img_row": pa.array(np.arange(images.num_rows, dtype=np.int64))}
    )
    keys_reg = pa.table(
        {"image_id": regions["image_id"], "batch": regions["batch"], "reg_row": pa.array(np.arange(regions.num_rows, dtype=np.int64))}
    )
    joined = keys_reg.join(keys_img, keys=["image_id", "batch"], join_type="inner").sort_by("reg_row")
    reg_rows = joined["reg_row"].to_numpy()
    dtype = np.float16 if index.manifest.vector_dtype == "float16" else np.float32
    vectors = column_matrix(regions["vector"], index.manifest.vector_dim, dtype)
    boxes = column_matrix(regions["box"], 4, np.float32)
    if len(reg_rows) != regions.num_rows:
        vectors, boxes = vectors[reg_rows], boxes[reg_rows]
    region_image = joined["img_row"].to_numpy().astype(np.int64)
    widths = images["width"].to_numpy(zero_copy_only=False).astype(np.float64)
    heights = images["height"].to_numpy(zero_copy_only=False).astype(np.float64)
    hidden = ~visible(boxes, widths[region_image], heights[region_image])
    if hidden.any():
        log.info("%d of %d regions have no visible area in their image and are never returned", hidden.sum(), len(hidden))
    damaged = ~sane_regions(boxes, vectors, np.stack([widths[region_image], heights[region_image]], axis=1))
    if damaged.any():  # never a wrong answer in silence: left out, said once per loaded index
        log.warning(
            "%s: %d regions of %d images hold non-finite values or impossible boxes (the index is damaged) and are "
            "left out of every answer; see: resedis verify --db %s, then run: resedis repair --db %s",
            index.location, int(damaged.sum()), len(np.unique(region_image[damaged])), index.location, index.location,
        )
        hidden = hidden | damaged
    return Corpus(
        version=version,
        image_ids=images["image_id"].to_pylist(),
        paths=images["path"].to_pylist(),
        region_image=region_image,
        boxes=boxes,
        vectors=np.ascontiguousarray(vectors),
        matrix_dtype=matrix_dtype,
        hidden=hidden,
        image_sizes=np.stack([widths, heights], axis=1) if len(widths) else np.zeros((0, 2)),
    )
