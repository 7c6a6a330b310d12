"""The regions-table columns of each storage format (:mod:`resedis.quant`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from resedis.errors import ResedisError
from resedis.index.manifest import MANIFEST_NAME, write_manifest
from resedis.ann_projection import (
    PROJECTION_KEY,
    AnnProjection,
    column_width,
    fit_projection,
    proj_dims,
    projection_from_json,
    projection_to_json,
)
from resedis.quant import FLOAT_FORMATS, check_storage, code_width, quantize

# The stored columns of a compact format, in schema order (codes, scale, exact bias, ANN column).
COMPACT_COLUMNS = ("codes", "step", "bias", "proj")
PROJ_COLUMN = "proj"


def vector_fields(dim: int, storage: str, proj_width: int | None = None) -> list:
    """The regions-table fields that hold the vector in ``storage`` (see the module doc).
    ``proj_width``: the width of a compact index's ANN column (:func:`manifest_proj_width`);
    None: a new index's (:func:`resedis.ann_projection.column_width`)."""
    check_storage(storage)
    if storage in FLOAT_FORMATS:
        typ = pa.float16() if storage == "float16" else pa.float32()
        return [pa.field("vector", pa.list_(typ, dim), nullable=False)]
    code_type = pa.int8() if storage == "int8" else pa.uint8()
    return [
        pa.field("codes", pa.list_(code_type, code_width(storage, dim)), nullable=False),
        pa.field("step", pa.float32(), nullable=False),
        pa.field("bias", pa.float32(), nullable=False),
        pa.field(PROJ_COLUMN, pa.list_(pa.float16(), proj_width or column_width(dim)), nullable=False),
    ]


def vector_columns(vectors: np.ndarray, storage: str, projection: AnnProjection | None = None) -> dict:
    """(N, D) float vectors -> ``{field name: Arrow array}`` for :func:`vector_fields`.
    ``projection``: the index's ANN projection (:func:`resedis.ann_projection.fit_projection`),
    required for the compact formats."""
    check_storage(storage)
    v = np.asarray(vectors)
    n, dim = v.shape
    if storage in FLOAT_FORMATS:
        typ = pa.float16() if storage == "float16" else pa.float32()
        flat = v.astype(np.float16 if storage == "float16" else np.float32).ravel()
        return {"vector": pa.FixedSizeListArray.from_arrays(pa.array(flat, typ), dim)}
    if projection is None or projection.basis.shape != (dim - 1, proj_dims(dim)):
        raise ResedisError(f"{storage} storage needs the index's ANN projection of shape {(dim - 1, proj_dims(dim))}, "
                           f"got {None if projection is None else projection.basis.shape}")
    codes, step, bias = quantize(v, storage)
    code_type = pa.int8() if storage == "int8" else pa.uint8()
    proj = projection.regions(v).astype(np.float16)
    return {
        "codes": pa.FixedSizeListArray.from_arrays(pa.array(codes.ravel(), code_type), codes.shape[1] if n else code_width(storage, dim)),
        "step": pa.array(step, pa.float32()),
        "bias": pa.array(bias, pa.float32()),
        PROJ_COLUMN: pa.FixedSizeListArray.from_arrays(pa.array(proj.ravel(), pa.float16()), projection.width),
    }


def stored_layout(schema: pa.Schema) -> tuple[str, int] | None:
    """``(storage format, width of the stored list)`` of a regions-table schema: the
    ``vector`` column's width for float storage, the ``codes`` width for int8/int4;
    None when the schema holds neither (a damaged or foreign table)."""
    names = schema.names
    if "vector" in names:
        typ = schema.field("vector").type
        storage = {pa.float16(): "float16", pa.float32(): "float32"}.get(getattr(typ, "value_type", None))
        return (storage, typ.list_size) if storage else None
    if "codes" in names:
        typ = schema.field("codes").type
        value = getattr(typ, "value_type", None)
        storage = "int8" if value == pa.int8() else "int4" if value == pa.uint8() else None
        return (storage, typ.list_size) if storage else None
    return None


def layout_fits(storage: str, width: int, dim: int) -> bool:
    """Whether a stored list of ``width`` holds ``dim``-d vectors in ``storage``."""
    return width == (dim if storage in FLOAT_FORMATS else code_width(storage, dim))


def _matrix(column, width: int | None) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], type=column.type)
    if width is None:  # a scalar column
        return np.asarray(column.to_numpy(zero_copy_only=False)).reshape(-1, 1)
    return np.asarray(column.flatten().to_numpy(zero_copy_only=False)).reshape(-1, width)


def stored_vector_arrays(rows: pa.Table) -> list[np.ndarray]:
    """The region vector of each row exactly as stored, as (N, k) arrays in the storage
    format's column order (``vector``; or ``codes``, ``step``, ``bias`` and the ANN
    column of a compact index): what a checksum covers."""
    layout = stored_layout(rows.schema)
    if layout is None:
        raise ValueError(f"regions rows hold no vector column (columns: {rows.schema.names})")
    storage = layout[0]
    names = ["vector"] if storage in FLOAT_FORMATS else [n for n in COMPACT_COLUMNS if n in rows.schema.names]
    out = []
    for name in names:
        typ = rows.schema.field(name).type
        out.append(_matrix(rows[name], typ.list_size if pa.types.is_fixed_size_list(typ) else None))
    return out


def finite_vectors(rows: pa.Table) -> np.ndarray:
    """(N,) bool: the row's stored vector has only finite values (integer codes always do)."""
    ok = np.ones(rows.num_rows, bool)
    for arr in stored_vector_arrays(rows):
        if arr.dtype.kind == "f":
            ok &= np.isfinite(arr).all(axis=1) if arr.shape[1] else ok
    return ok


def manifest_proj_width(manifest) -> int | None:
    """The ``proj`` width of a compact index from its manifest's projection record (a
    legacy record: ``dims``; none yet, or float storage: None, i.e. a new index's)."""
    record = manifest.extra.get(PROJECTION_KEY)
    if manifest.vector_dtype in FLOAT_FORMATS or not isinstance(record, dict):
        return None
    shape = record.get("shape")
    dims = shape[1] if isinstance(shape, list) and len(shape) == 2 and isinstance(shape[1], int) else proj_dims(manifest.vector_dim)
    return dims if record.get("mips_norm") is None else dims + 2


def index_projection(index, vectors: list[np.ndarray] | None = None) -> AnnProjection | None:
    """The ANN projection of a compact index (None for float storage, or while it has none).

    Read from the manifest (``resedis.ann_projection.PROJECTION_KEY``). When the manifest has none
    yet and ``vectors`` are given — the first batch about to be written — it is fitted on
    them (:func:`resedis.ann_projection.fit_projection`) and recorded in the manifest before any
    row that uses it is committed."""
    manifest = index.manifest
    if manifest.vector_dtype in FLOAT_FORMATS:
        return None
    record = manifest.extra.get(PROJECTION_KEY)
    if record is not None:
        return projection_from_json(record, manifest.vector_dim, f"{index.location}/{MANIFEST_NAME}")
    rows = np.concatenate([np.asarray(v, np.float32) for v in vectors]) if vectors else np.zeros((0, 0))
    if rows.shape[0] == 0:
        return None
    projection = fit_projection(rows, proj_dims(manifest.vector_dim))
    manifest.extra[PROJECTION_KEY] = projection_to_json(projection, rows.shape[0])
    write_manifest(index.location, manifest)
    return projection
