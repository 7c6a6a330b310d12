"""Approximate nearest-neighbour search over the ``regions`` table, re-scored exactly.

Above :attr:`AnnConfig.min_rows` region rows, a LanceDB vector index over the
``vector`` column (``[s·ê, s·b]``, see :mod:`resedis.models.owl`) narrows a query to a
generous candidate set; every candidate is then re-scored with its stored full vector
(``vector.astype(float32) @ [q̂, 1]``, the same arithmetic as exact search), so the
logits — and therefore the scores — of returned regions are exact. Only *which* regions
make the candidate set is approximate; recall against exact MIPS is measured in
``tests/index/test_ann.py`` and by ``resedis bench``.

Why cosine partitions for an inner-product search: the true score is the inner product,
but an IVF index trained with LanceDB's ``dot`` metric puts most vectors in a few
partitions (k-means under an inner product rewards long centroids; LanceDB logs empty
partitions) and recall collapses, while under ``cosine`` the scale ``s`` cancels and the
partition of a region is decided by its direction ``[ê, b]``, which is what separates
objects. Candidates ranked by cosine and re-scored by the exact inner product reach
recall@10 ≥ 0.95 on OWL-like clustered vectors (figures in ``docs/benchmarks.md``).

The Searcher's use of it (candidates placed at corpus rows, filters, prewarming) is
:class:`resedis.index.ann_search.AnnSearch`.

Rows added after the index was built are not lost: LanceDB searches the unindexed
fragments exhaustively and merges them with the indexed candidates;
:func:`optimize_ann` folds them into the index (``rebuild=True`` retrains it).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from resedis.errors import ResedisError
from resedis import quant
from resedis.ann_projection import AnnProjection

log = logging.getLogger(__name__)

VECTOR_COLUMN = "vector"
PROJ_COLUMN = "proj"  # the ANN column of the compact formats (resedis.ann_projection)
INDEX_NAME = "vector_idx"
INDEX_TYPES = ("IVF_FLAT", "IVF_SQ", "IVF_PQ", "IVF_HNSW_SQ")
METRICS = ("cosine", "dot", "l2")
DEFAULT_MIN_ROWS = 200_000


@dataclass
class AnnConfig:
    """How the ANN index is built and queried.

    min_rows: build an ANN index only when the regions table has at least this many rows
        (below it exact search is fast enough and exact by construction).
    index_type / metric: the LanceDB index (see :data:`INDEX_TYPES`) and its partitioning
        metric. Candidates are always re-scored by the exact inner product.
    num_partitions: IVF partitions; None = about ``sqrt(rows) / 2``.
    nprobes: partitions searched per query; None = ``max(8, num_partitions // 5)``, and
        for a compact index (its logit-estimate column, :mod:`resedis.ann_projection`)
        ``max(48, num_partitions // 32)`` (tuned at 1M and 10M rows, docs/benchmarks.md).
    candidate_factor / min_candidates: candidates per query = ``max(min_candidates,
        candidate_factor * k)`` for a top-``k`` request; min_candidates None = 500, and
        200 for a compact index.
    refine_factor: LanceDB re-reads ``refine_factor × limit`` full vectors when the index
        stores quantised ones (PQ/SQ); None leaves LanceDB's default.
    sample_rate / max_iterations: k-means training sample (rows per partition) and rounds.
    prewarm_max_bytes: the Searcher asks LanceDB to load a vector index of at most this many
        bytes into its index cache when it first finds it (:func:`prewarm_ann_index`);
        otherwise each IVF partition is read from disk the first time a query probes it,
        and the first queries of a fresh process are 2–3× slower (10M compact regions: a
        385 MB index, loaded in 0.7 s; docs/benchmarks.md). 0: never.
    compact_candidate_share: the ANN column of a compact index written before the logit
        estimate (:mod:`resedis.ann_projection`, legacy layout: a 32-d direction only) ranks
        the members of a tight cluster of regions only roughly, so its candidates grow with
        the table: at least ``share × rows`` (1M rows: 2,000; measured in docs/benchmarks.md).
        A current compact index needs no more than a float one (``min_candidates``).
    """

    min_rows: int = DEFAULT_MIN_ROWS
    index_type: str = "IVF_SQ"
    metric: str = "cosine"
    num_partitions: int | None = None
    nprobes: int | None = None
    candidate_factor: int = 10
    min_candidates: int | None = None
    refine_factor: int | None = None
    sample_rate: int = 256
    max_iterations: int = 50
    num_sub_vectors: int | None = None
    compact_candidate_share: float = 0.002
    prewarm_max_bytes: int = 2 << 30

    def validate(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise ResedisError(f"ANN index_type must be one of {INDEX_TYPES}, got {self.index_type!r}")
        if self.metric not in METRICS:
            raise ResedisError(f"ANN metric must be one of {METRICS}, got {self.metric!r}")
        if not 0.0 <= self.compact_candidate_share <= 1.0:
            raise ResedisError(f"ANN compact_candidate_share must be in [0, 1], got {self.compact_candidate_share}")
        if self.prewarm_max_bytes < 0:
            raise ResedisError(f"ANN prewarm_max_bytes must be >= 0, got {self.prewarm_max_bytes}")
        for name in ("min_rows", "candidate_factor", "sample_rate", "max_iterations"):
            if getattr(self, name) < 1:
                raise ResedisError(f"ANN {name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_partitions", "nprobes", "min_candidates", "refine_factor", "num_sub_vectors"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ResedisError(f"ANN {name} must be >= 1 or None, got {value}")

    def partitions_for(self, rows: int) -> int:
        if self.num_partitions is not None:
            return self.num_partitions
        return max(1, min(4096, int(round(math.sqrt(max(rows, 1)) / 2))))

    def nprobes_for(self, partitions: int, compact: bool = False) -> int:
        """Partitions probed (``compact``: a compact index with the logit-estimate column)."""
        if self.nprobes is not None:
            return self.nprobes
        if compact:
            return max(1, min(partitions, max(48, partitions // 32)))
        return max(1, min(partitions, max(8, partitions // 5)))

    def candidates_for(self, k: int) -> int:
        return self._candidates(k, 500)

    def _candidates(self, k: int, default_min: int) -> int:
        """``max(min_candidates, candidate_factor * k)``, ``default_min`` when min_candidates is None."""
        return max(default_min if self.min_candidates is None else self.min_candidates, self.candidate_factor * k)

    def compact_candidates_for(self, k: int, rows: int, legacy: bool = False) -> int:
        """Candidates of a top-``k`` query on a compact table of ``rows`` rows (``legacy``:
        its ANN column has the direction-only layout, see ``compact_candidate_share``)."""
        if not legacy:
            return self._candidates(k, 200)
        return max(self.candidates_for(k), int(self.compact_candidate_share * rows))


@dataclass
class AnnBuild:
    """What :func:`build_ann_index` did."""

    rows: int
    index_type: str
    metric: str
    num_partitions: int
    seconds: float
    index_bytes: int | None = None
    params: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "rows": self.rows,
            "index_type": self.index_type,
            "metric": self.metric,
            "num_partitions": self.num_partitions,
            "seconds": round(self.seconds, 3),
            "index_bytes": self.index_bytes,
            "params": self.params,
        }


def ann_column(table, schema: pa.Schema | None = None) -> str:
    """The column the ANN index covers: ``vector`` (float storage) or ``proj`` (the
    low-dimensional float16 logit-estimate column of the compact formats, :mod:`resedis.ann_projection`).
    ``schema``: the table's, when the caller has it (each read of ``table.schema`` asks LanceDB)."""
    return VECTOR_COLUMN if VECTOR_COLUMN in (schema or table.schema).names else PROJ_COLUMN


def vector_index(table, schema: pa.Schema | None = None):
    """The table's vector index entry (LanceDB ``list_indices``) on its ANN column, or None."""
    column = ann_column(table, schema)
    for idx in table.list_indices():
        if column in list(idx.columns):
            return idx
    return None


def has_ann_index(table) -> bool:
    """True when the table has a vector index on ``vector``."""
    return vector_index(table) is not None


def prewarm_ann_index(table, max_bytes: int) -> int:
    """Load the vector index of ``table`` into LanceDB's index cache now, when it is at
    most ``max_bytes`` (LanceDB otherwise reads each IVF partition at the first query
    that probes it) -> the index's bytes loaded, 0 when none was (no index, too large,
    or its size unknown)."""
    idx = vector_index(table)
    size = getattr(idx, "size_bytes", None) if idx is not None else None
    if size is None or size > max_bytes:
        return 0
    table.prewarm_index(idx.name)
    return int(size)


def ann_status(table) -> dict | None:
    """``{"name", "index_type", "metric", "indexed_rows", "unindexed_rows"}`` or None (no index)."""
    idx = vector_index(table)
    if idx is None:
        return None
    stats = table.index_stats(idx.name)
    return {
        "name": idx.name,
        "index_type": stats.index_type if stats else str(idx.index_type),
        "metric": stats.distance_type if stats else None,
        "indexed_rows": int(stats.num_indexed_rows) if stats else None,
        "unindexed_rows": int(stats.num_unindexed_rows) if stats else None,
    }


def _index_config(config: AnnConfig, partitions: int, dim: int):
    from lancedb.index import HnswSq, IvfFlat, IvfPq, IvfSq

    common = dict(
        distance_type=config.metric,
        num_partitions=partitions,
        sample_rate=config.sample_rate,
        max_iterations=config.max_iterations,
    )
    if config.index_type == "IVF_FLAT":
        return IvfFlat(**common)
    if config.index_type == "IVF_SQ":
        return IvfSq(**common)
    if config.index_type == "IVF_PQ":
        sub = config.num_sub_vectors or _default_sub_vectors(dim)
        if dim % sub:
            raise ResedisError(f"ANN num_sub_vectors={sub} must divide the vector dimension {dim}")
        return IvfPq(num_sub_vectors=sub, **common)
    return HnswSq(**common)


def _default_sub_vectors(dim: int) -> int:
    """The divisor of ``dim`` closest to ``dim / 8`` (about 8 dimensions per PQ code)."""
    target = max(1, dim // 8)
    divisors = [d for d in range(1, dim + 1) if dim % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), d))


def compact_storage(table, schema: pa.Schema | None = None) -> str | None:
    """``int8``/``int4`` for a regions table in a compact format, None for float vectors."""
    schema = schema or table.schema
    if VECTOR_COLUMN in schema.names:
        return None
    return "int8" if pa.types.is_int8(schema.field("codes").type.value_type) else "int4"


def _vector_dim(table, schema: pa.Schema | None = None) -> int:
    typ = (schema or table.schema).field(VECTOR_COLUMN).type
    if not pa.types.is_fixed_size_list(typ):
        raise ResedisError(f"table {table.name}: column {VECTOR_COLUMN!r} is {typ}, not a fixed-size list")
    return typ.list_size


def should_build(rows: int, config: AnnConfig | None = None) -> bool:
    """The threshold rule: an ANN index pays off from ``config.min_rows`` rows."""
    return rows >= (config or AnnConfig()).min_rows


def build_ann_index(table, config: AnnConfig | None = None) -> AnnBuild:
    """(Re)train the vector index of ``table`` over all its current rows (replaces any old one).

    ``table``: a LanceDB table with a fixed-size-list ``vector`` column (the ``regions``
    table of an index). Raises ResedisError for an empty table (k-means needs rows).
    """
    config = config or AnnConfig()
    config.validate()
    rows = table.count_rows()
    if rows == 0:
        raise ResedisError(f"table {table.name}: no rows to build a vector index on")
    partitions = max(1, min(config.partitions_for(rows), rows))
    started = time.perf_counter()
    if compact_storage(table) is not None:
        # Compact storage: IVF_SQ (cosine) over the float16 proj column (resedis.ann_projection);
        # candidates are re-scored with the codes (resedis.quant). index_type/metric apply to float storage.
        from lancedb.index import IvfSq

        index_config = IvfSq(distance_type="cosine", num_partitions=partitions,
                             sample_rate=config.sample_rate, max_iterations=config.max_iterations)
        table.create_index(PROJ_COLUMN, config=index_config, replace=True, name=INDEX_NAME)
        dim = None
    else:
        dim = _vector_dim(table)
        table.create_index(VECTOR_COLUMN, config=_index_config(config, partitions, dim), replace=True, name=INDEX_NAME)
    seconds = time.perf_counter() - started
    status = None
    index_bytes = None
    idx = vector_index(table)
    if idx is not None:
        status = idx
        index_bytes = getattr(idx, "size_bytes", None)
    kind = ("IVF_SQ", "cosine") if dim is None else (config.index_type, config.metric)
    log.info("built %s (%s) ANN index over %d rows in %.1f s", kind[0], kind[1], rows, seconds)
    params = {"sample_rate": config.sample_rate, "max_iterations": config.max_iterations}
    if dim is None:
        params["column"] = PROJ_COLUMN
    elif config.index_type == "IVF_PQ":
        params["num_sub_vectors"] = config.num_sub_vectors or _default_sub_vectors(dim)
    return AnnBuild(
        rows=rows,
        index_type=kind[0],
        metric=kind[1],
        num_partitions=partitions,
        seconds=seconds,
        index_bytes=int(index_bytes) if index_bytes is not None and status is not None else None,
        params=params,
    )


def optimize_ann(
    table, config: AnnConfig | None = None, *, rebuild: bool = False, fold_new_rows: bool = True
) -> AnnBuild | None:
    """Bring the ANN index up to date with the threshold rule.

    * no index and ``rows >= min_rows`` (or ``rebuild``): build it;
    * an index and ``rebuild``: retrain it over all rows (new partitions);
    * an index otherwise: fold rows added since into it (``table.optimize``, no
      retraining) when ``fold_new_rows``; until then LanceDB scans them exhaustively;
    * below ``min_rows`` without ``rebuild``: nothing (exact search is used).

    Returns the :class:`AnnBuild` when an index was (re)trained, else None.
    """
    config = config or AnnConfig()
    config.validate()
    indexed = has_ann_index(table)
    if rebuild or (not indexed and should_build(table.count_rows(), config)):
        if table.count_rows() == 0:
            return None
        return build_ann_index(table, config)
    if indexed and fold_new_rows:
        table.optimize()
    return None


@dataclass
class Candidates:
    """Re-scored ANN candidates of one query, best first.

    rows: dict of the requested columns (each a numpy array or list, length M);
    logits (M,) float32: exact ``vector @ query`` for each candidate.
    """

    columns: dict
    logits: np.ndarray

    def __len__(self) -> int:
        return int(self.logits.shape[0])


def _column_matrix(column, width: int) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], type=column.type)
    return np.asarray(column.flatten().to_numpy(zero_copy_only=False)).reshape(-1, width)


def ann_candidates(
    table,
    queries: np.ndarray,
    k: int,
    *,
    config: AnnConfig | None = None,
    columns: tuple[str, ...] = ("image_id", "region", "batch", "box"),
    limit: int | None = None,
    projection: AnnProjection | None = None,
) -> list[Candidates]:
    """Top candidates of each query from the vector index, re-scored exactly.

    ``queries`` (Q, D) float32 ``[q̂, 1]``; for each query, ``config.candidates_for(k)``
    rows are taken from the index (``nprobes`` partitions, plus every unindexed row) and
    re-scored with their stored full vectors in float32. Returns Q :class:`Candidates`,
    each sorted by exact logit, descending (ties: the index's order). ``columns`` are
    returned alongside (``box`` as (M, 4) float32, ``vector`` as (M, D) when asked).
    Works on a table without a vector index too (then LanceDB scans every row).
    ``limit`` replaces ``config.candidates_for(k)`` (a filtered search widens it).
    ``projection``: the ANN projection of a compact index (:func:`resedis.index.columns.index_projection`),
    required for one.
    """
    config = config or AnnConfig()
    config.validate()
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    schema = table.schema  # once: every read asks LanceDB (about a millisecond)
    storage = compact_storage(table, schema)
    if storage is None:
        dim = _vector_dim(table, schema)
    else:
        dim = queries.shape[1]
        width = schema.field("codes").type.list_size
        if quant.code_width(storage, dim) != width:
            raise ResedisError(f"query vectors have dimension {dim}, table {table.name} stores {storage} codes of width {width}")
        if projection is None:
            raise ResedisError(f"table {table.name} stores {storage} codes: its ANN search needs the index's projection")
    if queries.shape[1] != dim:
        raise ResedisError(f"query vectors have dimension {queries.shape[1]}, table {table.name} stores {dim}")
    if k < 1:
        raise ResedisError(f"k must be >= 1, got {k}")
    rows = table.count_rows()
    if limit is None:
        limit = (config.candidates_for(k) if storage is None
                 else config.compact_candidates_for(k, rows, projection.legacy))
    limit = int(limit)
    if limit < 1:
        raise ResedisError(f"limit must be >= 1, got {limit}")
    idx = vector_index(table, schema)
    metric, hnsw = config.metric, False
    if idx is not None:
        stats = table.index_stats(idx.name)
        if stats is not None:
            metric = stats.distance_type or metric
            hnsw = "HNSW" in str(stats.index_type).upper()
    # The partition count of the index is not exposed; the rule that built it gives it.
    nprobes = config.nprobes_for(config.partitions_for(rows), compact=storage is not None and not projection.legacy)
    stored = [VECTOR_COLUMN] if storage is None else ["codes", "step", "bias"]
    select = list(dict.fromkeys([*[c for c in columns if c != VECTOR_COLUMN], *stored, "_distance"]))
    if storage is not None:
        metric = "cosine"
        projected = projection.queries(queries)
    out: list[Candidates] = []
    for j, query in enumerate(queries):
        if storage is None:
            builder = table.search(query, vector_column_name=VECTOR_COLUMN).distance_type(metric).limit(limit)
        else:
            builder = table.search(projected[j], vector_column_name=PROJ_COLUMN).distance_type(metric).limit(limit)
        if idx is not None:
            builder = builder.nprobes(nprobes)
            if hnsw:
                builder = builder.ef(2 * limit)  # HNSW beam width; must be >= limit
            if config.refine_factor is not None:
                builder = builder.refine_factor(config.refine_factor)
        result = builder.select(select).to_arrow()
        if storage is None:
            vectors = _column_matrix(result[VECTOR_COLUMN], dim).astype(np.float32, copy=False)
            logits = vectors @ query
        else:  # the compact path's own arithmetic (resedis.quant.compact_logits)
            codes = _column_matrix(result["codes"], quant.code_width(storage, dim))
            step, bias = result["step"].to_numpy(), result["bias"].to_numpy()
            logits = quant.compact_logits(codes, step, bias, query[None, :], storage, dim)[:, 0]
            vectors = quant.dequantize(codes, step, bias, storage, dim) if VECTOR_COLUMN in columns else None
        order = np.argsort(-logits, kind="stable")
        cols: dict = {}
        for name in columns:
            if name == "box":
                cols[name] = _column_matrix(result[name], 4).astype(np.float32, copy=False)[order]
            elif name == VECTOR_COLUMN:
                cols[name] = vectors[order]
            else:
                cols[name] = result[name].to_numpy(zero_copy_only=False)[order]
        out.append(Candidates(columns=cols, logits=logits[order].astype(np.float32, copy=False)))
    return out
