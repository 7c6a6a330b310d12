"""The regions-table columns of each storage format (:mod:`resedis.quant`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from resedis.quant import (
    FLOAT_FORMATS,
    SIGN_BYTES,
    check_storage,
    code_width,
    dequantize,
    quantize,
    sign_codes,
)


# The stored columns of a compact format, in schema order (codes, scale, exact bias, ANN column).
COMPACT_COLUMNS = ("codes", "step", "bias", "signs")


def vector_fields(dim: int, storage: str) -> list:
    """The regions-table fields that hold the vector in ``storage`` (see the module doc)."""
    check_storage(storage)
    if storage in FLOAT_FORMATS:
        typ = pa.float16() if storage == "float16" else pa.float32()
        return [pa.field("vector", pa.list_(typ, dim), nullable=False)]
    code_type = pa.int8() if storage == "int8" else pa.uint8()
    return [
        pa.field("codes", pa.list_(code_type, code_width(storage, dim)), nullable=False),
        pa.field("step", pa.float32(), nullable=False),
        pa.field("bias", pa.float32(), nullable=False),
        pa.field("signs", pa.list_(pa.uint8(), SIGN_BYTES), nullable=False),
    ]


def vector_columns(vectors: np.ndarray, storage: str) -> dict:
    """(N, D) float vectors -> ``{field name: Arrow array}`` for :func:`vector_fields`."""
    check_storage(storage)
    v = np.asarray(vectors)
    n, dim = v.shape
    if storage in FLOAT_FORMATS:
        typ = pa.float16() if storage == "float16" else pa.float32()
        flat = v.astype(np.float16 if storage == "float16" else np.float32).ravel()
        return {"vector": pa.FixedSizeListArray.from_arrays(pa.array(flat, typ), dim)}
    codes, step, bias = quantize(v, storage)
    code_type = pa.int8() if storage == "int8" else pa.uint8()
    signs = sign_codes(dequantize(codes, step, bias, storage, dim))
    return {
        "codes": pa.FixedSizeListArray.from_arrays(pa.array(codes.ravel(), code_type), codes.shape[1] if n else code_width(storage, dim)),
        "step": pa.array(step, pa.float32()),
        "bias": pa.array(bias, pa.float32()),
        "signs": pa.FixedSizeListArray.from_arrays(pa.array(signs.ravel(), pa.uint8()), SIGN_BYTES),
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
