"""Compact region storage: per-row scaled integer codes with the bias kept exactly.

A region vector of an OWL-family index is ``v = [a, c]`` with ``a = s·ê`` (E dims) and
``c = s·b`` (the logit shift); a query is ``u = [q̂, 1]`` and the logit is
``a·q̂ + c``. The compact formats keep ``c`` exactly (one float32 column ``bias``)
and quantise only ``a``, row by row, with round-to-nearest on a uniform grid:

    step = max_i |a_i| / L        (L = 127 for ``int8``, 7 for ``int4``)
    code_i = round(a_i / step)    (|code_i| ≤ L)
    â_i = step · code_i

so ``|a_i - â_i| ≤ step / 2`` for every component, and the logit error is bounded:

    |Δlogit| = |Σ_i (a_i - â_i)·q_i| ≤ (step / 2) · ‖q̂‖₁   (≤ (step/2)·√E for a unit q̂)

:func:`logit_error_bound` returns that bound per region; ``tests/test_quant.py`` checks it
on real encoder outputs. Sizes per region (E = 512, OWLv2-base): ``float16`` 1026 B,
``int8`` 520 B (512 codes + step + bias), ``int4`` 264 B (256 bytes of packed nibbles +
step + bias). ``float32``/``float16`` store ``v`` itself (column ``vector``) as before.

Stored columns of the compact formats (see :mod:`resedis.index.columns`): ``codes``
(fixed-size list of ``int8`` [E] or ``uint8`` [ceil(E/2)], low nibble = even
component, value + 8), ``step`` float32, ``bias`` float32. For the ANN stage they add the ``proj`` column
(:mod:`resedis.ann_projection`, 68 bytes), indexed by LanceDB (IVF_SQ, cosine);
candidates from it are re-scored with the codes.
"""

from __future__ import annotations

import numpy as np

from resedis.errors import ResedisError

FLOAT_FORMATS = ("float32", "float16")
COMPACT_FORMATS = ("int8", "int4")
STORAGE_FORMATS = FLOAT_FORMATS + COMPACT_FORMATS
DEFAULT_STORAGE = "float16"  # of a new index; decided from docs/benchmarks.md "Compact storage"
LEVELS = {"int8": 127, "int4": 7}
# Rows decoded per chunk when scoring (bounds the float32 temporary: 64k × E × 4 bytes).
CHUNK_ROWS = 1 << 16


def check_storage(storage: str) -> str:
    if storage not in STORAGE_FORMATS:
        raise ResedisError(
            f"storage must be one of {', '.join(STORAGE_FORMATS)} (float16: 2 bytes per component, "
            f"int8: 1 byte + a per-row scale, int4: half a byte + a per-row scale), got {storage!r}"
        )
    return storage


def is_compact(storage: str) -> bool:
    return storage in COMPACT_FORMATS


def code_width(storage: str, dim: int) -> int:
    """Bytes of ``codes`` per region for a ``dim``-d vector (``dim - 1`` quantised components)."""
    e = dim - 1
    return e if storage == "int8" else (e + 1) // 2


def bytes_per_region(storage: str, dim: int) -> int:
    """Bytes of the vector data of one region (codes + step + bias, or the float vector)."""
    if storage == "float32":
        return 4 * dim
    if storage == "float16":
        return 2 * dim
    return code_width(storage, dim) + 8


def quantize(vectors: np.ndarray, storage: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D) vectors ``[a, c]`` -> (codes, step (N,) float32, bias (N,) float32).

    codes: (N, D-1) int8 for ``int8``; (N, ceil((D-1)/2)) uint8 packed nibbles for ``int4``.
    A zero row gets step 0 (and decodes to zeros exactly).
    """
    if storage not in COMPACT_FORMATS:
        raise ResedisError(f"quantize: storage must be one of {COMPACT_FORMATS}, got {storage!r}")
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[1] < 2:
        raise ResedisError(f"quantize: vectors must be (N, D) with D >= 2, got shape {v.shape}")
    a, bias = v[:, :-1], np.ascontiguousarray(v[:, -1])
    levels = LEVELS[storage]
    peak = np.abs(a).max(axis=1) if a.shape[0] else np.zeros(0, np.float32)
    step = (peak / levels).astype(np.float32)
    safe = np.where(step > 0, step, 1.0).astype(np.float32)
    codes = np.clip(np.rint(a / safe[:, None]), -levels, levels).astype(np.int8)
    if storage == "int8":
        return codes, step, bias.astype(np.float32)
    return pack_nibbles(codes), step, bias.astype(np.float32)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """(N, E) int8 in [-8, 7] -> (N, ceil(E/2)) uint8; low nibble = even column, stored + 8."""
    n, e = codes.shape
    u = (codes.astype(np.int16) + 8).astype(np.uint8)
    if e % 2:
        u = np.concatenate([u, np.full((n, 1), 8, np.uint8)], axis=1)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, e: int) -> np.ndarray:
    """Inverse of :func:`pack_nibbles`: (N, ceil(E/2)) uint8 -> (N, E) int8."""
    packed = np.asarray(packed, dtype=np.uint8)
    out = np.empty((packed.shape[0], 2 * packed.shape[1]), np.int8)
    out[:, 0::2] = (packed & 0x0F).astype(np.int8) - 8
    out[:, 1::2] = (packed >> 4).astype(np.int8) - 8
    return out[:, :e]


def int_codes(codes: np.ndarray, storage: str, dim: int) -> np.ndarray:
    """Stored codes -> (N, dim-1) int8 codes."""
    return np.asarray(codes, np.int8) if storage == "int8" else unpack_nibbles(codes, dim - 1)


def dequantize(codes: np.ndarray, step: np.ndarray, bias: np.ndarray, storage: str, dim: int) -> np.ndarray:
    """-> (N, dim) float32 ``[â, c]``: the vectors the compact scores are computed from."""
    q = int_codes(codes, storage, dim).astype(np.float32)
    out = np.empty((q.shape[0], dim), np.float32)
    out[:, :-1] = q * np.asarray(step, np.float32)[:, None]
    out[:, -1] = bias
    return out


def compact_logits(codes, step, bias, queries: np.ndarray, storage: str, dim: int, *, chunk: int = CHUNK_ROWS) -> np.ndarray:
    """(N, Q) float32 logits ``step·(codes·q̂) + bias·u_last`` for (Q, dim) queries ``[q̂, 1]``,
    decoded ``chunk`` rows at a time (memory: the codes plus one float32 chunk)."""
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    n = int(np.asarray(step).shape[0])
    out = np.empty((n, queries.shape[0]), np.float32)
    qa, qc = queries[:, :-1].T, queries[:, -1]
    step = np.asarray(step, np.float32)
    bias = np.asarray(bias, np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        block = int_codes(codes[start:stop], storage, dim).astype(np.float32)
        out[start:stop] = (block @ qa) * step[start:stop, None] + bias[start:stop, None] * qc[None, :]
    return out


def logit_error_bound(step: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(N, Q) worst-case ``|logit(v) - logit(v̂)|`` from rounding: ``(step/2)·‖q̂‖₁``.

    Holds for every region and query exactly (round-to-nearest on a grid of ``step``);
    float32 arithmetic adds a relative ~1e-6 on top, which callers allow for."""
    queries = np.atleast_2d(np.asarray(queries, np.float64))
    l1 = np.abs(queries[:, :-1]).sum(axis=1)
    return 0.5 * np.asarray(step, np.float64)[:, None] * l1[None, :]
