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
