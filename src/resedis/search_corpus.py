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

Compact storage (``int8``/``int4``, :mod:`resedis.quant`): ``vectors`` holds the
codes (with ``step`` and ``bias``); ``"float32"`` decodes them once into a float32 matrix,
``"stored"`` keeps the codes and decodes each chunk per query. The two differ only by
float32 round-off; both lie within the storage's logit error bound.

``load_corpus(..., lazy=True)`` reads the matrix only at the first exact product: a
Searcher with an ANN index (:class:`resedis.index.ann_search.AnnSearch`) re-scores candidates
from the rows LanceDB returns and never loads it (``vectors_loaded`` tells).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa

from resedis.boxes import visible
from resedis import quant
from resedis.errors import ResedisError
from resedis.index.sane import finite_rows, possible_boxes
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
    vectors: np.ndarray | None
    matrix_dtype: str = DEFAULT_MATRIX_DTYPE
    hidden: np.ndarray | None = None
    image_sizes: np.ndarray | None = None  # (I, 2) float64 (W, H) px per image row (None: not loaded)
    storage: str = "float16"  # of ``vectors``: float32/float16 vectors, or int8/int4 codes
    step: np.ndarray | None = None  # compact storage: per-row step and exact bias
    bias: np.ndarray | None = None
    dim: int = 0
    loader: Callable[[], tuple] | None = field(default=None, repr=False, compare=False)
    row_loader: Callable[[np.ndarray], tuple] | None = field(default=None, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _by_image: tuple | None = field(default=None, init=False, repr=False, compare=False)  # (rows by image, starts)

    def __post_init__(self) -> None:
        check_matrix_dtype(self.matrix_dtype)
        if self.vectors is None and self.loader is None:
            raise ResedisError("Corpus needs vectors or a loader")
        if quant.is_compact(self.storage) and not self.dim:
            raise ResedisError(f"Corpus of {self.storage} codes needs the vector dimension (dim)")
        if self.vectors is not None and not self.dim:
            self.dim = int(self.vectors.shape[1])
        if self.hidden is None:
            self.hidden = np.zeros(len(self), dtype=bool)
        elif self.hidden.shape != (len(self),):
            raise ResedisError(f"hidden must have one flag per region ({len(self)}), got shape {self.hidden.shape}")

    def __len__(self) -> int:
        return int(self.region_image.shape[0])

    @property
    def vectors_loaded(self) -> bool:
        return self.vectors is not None

    def load(self) -> None:
        """Read the region matrix now (a no-op when it is in memory). Rows the loader
        reports damaged (non-finite values) join ``hidden``: never an answer."""
        with self._lock:
            if self.vectors is None:
                self.vectors, self.step, self.bias, damaged = self.loader()
                if damaged is not None and damaged.any():
                    self.hidden = self.hidden | damaged

    def matrix(self) -> np.ndarray:
        """(N, D) region matrix for the product: float32 under ``matrix_dtype="float32"``
        (converted once, exactly for float16, replacing the stored vectors or codes), else
        ``vectors`` as stored (codes for compact storage). Loads the matrix on first use."""
        if self.vectors is None:
            self.load()
        if self.matrix_dtype == "float32" and self.vectors.dtype != np.float32:
            with self._lock:  # the service may search from several threads
                if self.vectors.dtype != np.float32:
                    gb = 4 * len(self) * self.dim / 1e9
                    log.info("region matrix (%d, %d) %s -> float32 (%.2f GB), once per loaded index",
                             len(self), self.dim, self.storage, gb)
                    if quant.is_compact(self.storage):
                        self.vectors = quant.dequantize(self.vectors, self.step, self.bias, self.storage, self.dim)
                        self.storage, self.step, self.bias = "float32", None, None
                    else:
                        self.vectors = self.vectors.astype(np.float32)
        return self.vectors

    def _rows(self, rows: np.ndarray) -> tuple:
        """(vectors or codes, step, bias, storage) of ``rows``: sliced from the matrix when it
        is in memory (or there is no row loader), else read for those rows only (a lazy
        corpus: the region matrix of a large library is never read whole for a few rows)."""
        if self.vectors is None and self.row_loader is not None:
            data, step, bias = self.row_loader(rows)
            return data, step, bias, self.storage
        matrix = self.matrix()
        if quant.is_compact(self.storage):
            return matrix[rows], self.step[rows], self.bias[rows], self.storage
        return matrix[rows], None, None, self.storage

    def row_vectors(self, rows) -> np.ndarray:
        """(M,) corpus rows -> (M, D) float32 region vectors (decoded from the codes of a
        compact index). A lazy corpus reads only those rows."""
        data, step, bias, storage = self._rows(np.asarray(rows, np.int64))
        if quant.is_compact(storage):
            return quant.dequantize(data, step, bias, storage, self.dim)
        return data.astype(np.float32)

    def row_logits(self, rows, queries: np.ndarray) -> np.ndarray:
        """(M,) corpus rows, (Q, D) queries -> (M, Q) float32 logits of those rows (the
        arithmetic of :meth:`logits`). A lazy corpus reads only those rows; a non-finite
        logit there (a damaged row the full read would have hidden) is ``-inf``."""
        rows = np.asarray(rows, np.int64)
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        lazy = self.vectors is None and self.row_loader is not None
        data, step, bias, storage = self._rows(rows)
        if quant.is_compact(storage):
            out = quant.compact_logits(data, step, bias, queries, storage, self.dim)
        else:
            out = data.astype(np.float32, copy=False) @ queries.T
        if lazy:
            out[~np.isfinite(out)] = -np.inf
        return out

    def _image_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows sorted by image, stable; where each image row's regions start in it, plus
        the end): built once per corpus."""
        if self._by_image is None:
            order = np.argsort(self.region_image, kind="stable")
            starts = np.searchsorted(self.region_image[order], np.arange(len(self.image_ids) + 1))
            self._by_image = (order, starts)
        return self._by_image

    def first_rows(self) -> np.ndarray:
        """(I,) int64: the first region row of each image row, -1 for an image without regions."""
        order, starts = self._image_index()
        first = np.full(len(self.image_ids), -1, np.int64)
        has = starts[1:] > starts[:-1]
        first[has] = order[starts[:-1][has]]
        return first

    def image_rows(self, images) -> np.ndarray:
        """Image rows -> the rows of their regions, ascending (an index of the rows by image
        is built once per corpus; then the cost follows the images' regions, not N)."""
        order, starts = self._image_index()
        images = np.asarray(images, np.int64)
        if not len(images):
            return np.zeros(0, np.int64)
        return np.sort(np.concatenate([order[starts[i]:starts[i + 1]] for i in images]))

    def logits(self, queries: np.ndarray) -> np.ndarray:
        """(Q, D) query vectors -> (N, Q) float32 logits, computed in float32 chunks."""
        queries = np.asarray(queries, dtype=np.float32)
        matrix = self.matrix()
        if quant.is_compact(self.storage):
            return quant.compact_logits(matrix, self.step, self.bias, queries, self.storage, self.dim)
        out = np.empty((len(self), queries.shape[0]), dtype=np.float32)
        for start in range(0, len(self), _CHUNK_ROWS):
            block = matrix[start : start + _CHUNK_ROWS].astype(np.float32, copy=False)
            out[start : start + _CHUNK_ROWS] = block @ queries.T
        return out


def _warn_damaged(index: Index, damaged: np.ndarray, region_image: np.ndarray) -> None:
    if damaged.any():  # never a wrong answer in silence: left out, said once per loaded index
        log.warning(
            "%s: %d regions of %d images hold non-finite values or impossible boxes (the index is damaged) and are "
            "left out of every answer; see: resedis verify --db %s, then run: resedis repair --db %s",
            index.location, int(damaged.sum()), len(np.unique(region_image[damaged])), index.location, index.location,
        )


def load_corpus(index: Index, matrix_dtype: str = DEFAULT_MATRIX_DTYPE, *, lazy: bool = False) -> Corpus:
    """Read images + regions and keep regions whose ``(image_id, batch)`` has an images row.
    Regions whose box has no visible area in its image are kept as rows (the ANN path
    addresses rows by position) and flagged ``hidden``. ``lazy``: read ids and boxes now
    and the region matrix (vectors or codes) only at the first exact product."""
    version = index.version()
    images = index.read(IMAGES, ["image_id", "path", "batch", "width", "height"])
    regions = index.read(REGIONS, ["image_id", "batch", "box"])
    keys_img = pa.table(
        {"image_id": images["image_id"], "batch": images["batch"], "img_row": pa.array(np.arange(images.num_rows, dtype=np.int64))}
    )
    keys_reg = pa.table(
        {"image_id": regions["image_id"], "batch": regions["batch"], "reg_row": pa.array(np.arange(regions.num_rows, dtype=np.int64))}
    )
    joined = keys_reg.join(keys_img, keys=["image_id", "batch"], join_type="inner").sort_by("reg_row")
    reg_rows = joined["reg_row"].to_numpy()
    boxes = column_matrix(regions["box"], 4, np.float32)
    subset = len(reg_rows) != regions.num_rows
    if subset:
        boxes = boxes[reg_rows]
    storage, dim = index.manifest.vector_dtype, index.manifest.vector_dim

    def load_vectors() -> tuple:
        """-> (vectors or codes, step, bias, damaged rows) of the committed rows, in ``reg_rows`` order."""
        # The rows of the version the ids and boxes came from (a fresh handle: checkout
        # pins the handle it is called on, and the index's own must follow new writes).
        table = index.location.connect().open_table(REGIONS)
        table.checkout(version[1])
        names = ["vector"] if not quant.is_compact(storage) else ["codes", "step", "bias"]
        data = table.search().select(names).limit(None).to_arrow()
        step = bias = None
        if not quant.is_compact(storage):
            vectors = column_matrix(data["vector"], dim, np.float16 if storage == "float16" else np.float32)
        else:
            vectors = column_matrix(data["codes"], quant.code_width(storage, dim), np.int8 if storage == "int8" else np.uint8)
            step, bias = data["step"].to_numpy().astype(np.float32), data["bias"].to_numpy().astype(np.float32)
            if subset:
                step, bias = step[reg_rows], bias[reg_rows]
        if subset:
            vectors = vectors[reg_rows]
        vectors = np.ascontiguousarray(vectors)
        finite = finite_rows(vectors) if step is None else np.isfinite(step) & np.isfinite(bias)  # codes are integers
        damaged = box_damaged | ~finite
        _warn_damaged(index, damaged & ~box_damaged if lazy else damaged, region_image)  # lazy: boxes said already
        return vectors, step, bias, damaged

    def load_rows(rows: np.ndarray) -> tuple:
        """-> (vectors or codes, step, bias) of corpus ``rows`` only, in that order (read by
        table offset from the version the ids and boxes came from)."""
        table = index.location.connect().open_table(REGIONS)
        table.checkout(version[1])
        offsets = reg_rows[rows]
        wanted, back = np.unique(offsets, return_inverse=True)
        names = ["vector"] if not quant.is_compact(storage) else ["codes", "step", "bias"]
        data = table.take_offsets([int(o) for o in wanted]).select([*names, "_rowoffset"]).to_arrow() \
            if len(wanted) else None
        if data is None:
            width = quant.code_width(storage, dim) if quant.is_compact(storage) else dim
            empty = np.zeros((0, width), np.float32)
            return empty, (np.zeros(0, np.float32) if quant.is_compact(storage) else None), \
                (np.zeros(0, np.float32) if quant.is_compact(storage) else None)
        got = data["_rowoffset"].to_numpy()
        if not np.array_equal(np.sort(got), wanted):
            raise ResedisError(f"{index.location}: reading {len(wanted)} region rows by offset returned other rows")
        order = np.argsort(got)[back]  # rows as asked (take may return them in any order)
        if not quant.is_compact(storage):
            vectors = column_matrix(data["vector"], dim, np.float16 if storage == "float16" else np.float32)
            return vectors[order], None, None
        codes = column_matrix(data["codes"], quant.code_width(storage, dim), np.int8 if storage == "int8" else np.uint8)
        step, bias = data["step"].to_numpy().astype(np.float32), data["bias"].to_numpy().astype(np.float32)
        return codes[order], step[order], bias[order]

    region_image = joined["img_row"].to_numpy().astype(np.int64)
    widths = images["width"].to_numpy(zero_copy_only=False).astype(np.float64)
    heights = images["height"].to_numpy(zero_copy_only=False).astype(np.float64)
    hidden = ~visible(boxes, widths[region_image], heights[region_image])
    if hidden.any():
        log.info("%d of %d regions have no visible area in their image and are never returned", hidden.sum(), len(hidden))
    # damaged rows (resedis.index.sane): impossible boxes now, non-finite vectors when they are read
    box_damaged = ~possible_boxes(boxes, np.stack([widths[region_image], heights[region_image]], axis=1))
    hidden = hidden | box_damaged
    if lazy:  # the vectors are checked when (if) they are read
        _warn_damaged(index, box_damaged, region_image)
    corpus = Corpus(
        version=version,
        image_ids=images["image_id"].to_pylist(),
        paths=images["path"].to_pylist(),
        region_image=region_image,
        boxes=boxes,
        vectors=None,
        matrix_dtype=matrix_dtype,
        hidden=hidden,
        image_sizes=np.stack([widths, heights], axis=1) if len(widths) else np.zeros((0, 2)),
        storage=storage,
        dim=dim,
        loader=load_vectors,
        row_loader=load_rows,
    )
    if not lazy:
        corpus.load()
    return corpus
