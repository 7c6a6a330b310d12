"""The ANN column of a compact index (``proj``): a short float16 vector whose cosine with
a projected query ranks regions by an estimate of their logit.

A region vector is ``v = [a, c]`` with ``a = s·ê`` (``s = ‖a‖`` the logit scale, ê a unit
class embedding) and ``c = s·b`` (the logit shift); a query is ``u = [q̂, 1]`` and the
logit is ``s·(ê·q̂ + b)``. The compact formats store ``a`` as integer codes
(:mod:`resedis.quant`), which LanceDB cannot index; the ANN stage searches this column
instead and re-scores its candidates with the codes.

Column (``dims`` = :data:`PROJ_DIMS` principal directions ``B`` of ``a``, fitted on the
first rows an index writes, and a norm ``M`` fitted with them)::

    region  r = [s·û, c, √(M² − s² − c²)]     û = Bᵀa / ‖Bᵀa‖  (unit, dims wide)
    query   w = [q̃, 1, 0]                    q̃ = Bᵀq̂ / ‖Bᵀq̂‖

so ``r·w = s·(cos(Bᵀa, Bᵀq̂) + b)``: the logit with the full cosine ``ê·q̂`` replaced by the
cosine of the projections, which keeps the two factors a plain cosine index loses, the
region's scale ``s`` and shift ``b``. Every region has ``‖r‖ = M`` (the last component
pads it: the inner-product-to-cosine reduction of Bachrach et al., RecSys 2014), so
``cos(r, w) = r·w / (M·√2)`` and LanceDB's cosine IVF index ranks candidates by that
estimate. A region longer than ``M`` (a scale larger than any in the fitted rows) gets a
zero pad and its estimate divided by ``‖r‖ / M``: still a candidate, ranked a little low.

Measured on OWL-like synthetic vectors (``docs/benchmarks.md``), 200 candidates from the
estimate reach recall@10 0.972 at 10M rows, where the direction-only cosine of an earlier
layout (``[Bᵀa]``, no scale, no shift) needed 0.2% of the table (20,000 at 10M rows). Indexes written with that
layout keep working: their manifest record has no ``mips_norm`` and their column is
``dims`` wide (:attr:`AnnProjection.legacy`).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from resedis.errors import ResedisError

PROJ_DIMS = 32
PROJ_FIT_ROWS = 100_000
PROJECTION_KEY = "ann_projection"  # the manifest's record (extra field)


def proj_dims(dim: int) -> int:
    """Principal directions kept for ``dim``-d vectors ``[a, c]``."""
    return min(PROJ_DIMS, dim - 1)


def column_width(dim: int) -> int:
    """Width of the ``proj`` column of a new compact index of ``dim``-d vectors."""
    return proj_dims(dim) + 2


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


@dataclass(frozen=True, eq=False)
class AnnProjection:
    """``basis`` (E, dims) float32 orthonormal columns; ``norm`` M of the column (None: the
    direction-only layout of indexes written before, ``proj = Bᵀa``)."""

    basis: np.ndarray
    norm: float | None = None

    @property
    def legacy(self) -> bool:
        return self.norm is None

    @property
    def width(self) -> int:
        return self.basis.shape[1] + (0 if self.legacy else 2)

    def regions(self, vectors: np.ndarray) -> np.ndarray:
        """(N, E+1) region vectors ``[a, c]`` -> (N, width) float32 column values."""
        v = np.atleast_2d(np.asarray(vectors, np.float32))
        projected = v[:, :-1] @ self.basis
        if self.legacy:
            return projected
        s = np.linalg.norm(v[:, :-1].astype(np.float64), axis=1)
        c = v[:, -1].astype(np.float64)
        pad = np.sqrt(np.maximum(self.norm**2 - s**2 - c**2, 0.0))
        out = np.empty((v.shape[0], self.width), np.float32)
        out[:, :-2] = s[:, None] * _unit_rows(projected.astype(np.float64))
        out[:, -2] = c
        out[:, -1] = pad
        return out

    def queries(self, queries: np.ndarray) -> np.ndarray:
        """(Q, E+1) queries ``[q̂, 1]`` -> (Q, width) float32 search vectors."""
        q = np.atleast_2d(np.asarray(queries, np.float32))
        projected = q[:, :-1] @ self.basis
        if self.legacy:
            return projected
        out = np.zeros((q.shape[0], self.width), np.float32)
        out[:, :-2] = _unit_rows(projected)
        out[:, -2] = q[:, -1]
        return out

    def estimates(self, vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """(N, Q) float64 ``s·(cos(Bᵀa, Bᵀq̂) + b)`` computed directly (no column): the
        logit estimate the column's cosine ranks by (a reference for tests and benches)."""
        v = np.atleast_2d(np.asarray(vectors, np.float64))
        q = np.atleast_2d(np.asarray(queries, np.float64))
        a, c = v[:, :-1], v[:, -1]
        s = np.linalg.norm(a, axis=1)
        cos = _unit_rows(a @ self.basis) @ _unit_rows(q[:, :-1] @ self.basis).T
        return s[:, None] * cos + c[:, None] * q[None, :, -1]


def fit_projection(vectors: np.ndarray, dims: int = PROJ_DIMS) -> AnnProjection:
    """(N, D) region vectors ``[a, c]`` -> the ANN column map of a new index: the leading
    principal directions of ``a`` (PCA of at most :data:`PROJ_FIT_ROWS` rows, the first
    ones; fewer rows than ``dims`` still give an orthonormal basis) and ``M``, the largest
    ``‖[a, c]‖`` among them."""
    v = np.asarray(vectors, np.float32)
    if v.ndim != 2 or v.shape[1] < 2 or v.shape[0] == 0:
        raise ResedisError(f"fit_projection: vectors must be (N, D) with N >= 1 and D >= 2, got shape {v.shape}")
    a = v[:PROJ_FIT_ROWS, :-1].astype(np.float64)
    dims = min(dims, a.shape[1])
    norm = float(np.linalg.norm(v[:PROJ_FIT_ROWS].astype(np.float64), axis=1).max())
    a = a - a.mean(axis=0)
    _, basis = np.linalg.eigh(a.T @ a)  # ascending eigenvalues
    basis = np.ascontiguousarray(basis[:, ::-1][:, :dims]).astype(np.float32)
    return AnnProjection(basis, norm if norm > 0 else 1.0)


def projection_to_json(projection: AnnProjection, rows: int) -> dict:
    """The manifest record of an index's ANN projection (``rows``: rows it was fitted on)."""
    p = np.ascontiguousarray(projection.basis, np.float32)
    record = {"shape": list(p.shape), "fitted_rows": int(rows), "float32_le_base64": base64.b64encode(p.astype("<f4").tobytes()).decode()}
    if not projection.legacy:
        record["mips_norm"] = float(projection.norm)
    return record


def projection_from_json(record, dim: int, source: str = "manifest") -> AnnProjection:
    """Inverse of :func:`projection_to_json` (a record without ``mips_norm``: the legacy
    direction-only layout); a clear error for a damaged record."""
    try:
        shape = tuple(int(x) for x in record["shape"])
        data = np.frombuffer(base64.b64decode(record["float32_le_base64"]), "<f4")
        if len(shape) != 2 or shape[0] != dim - 1 or data.size != shape[0] * shape[1] or not np.isfinite(data).all():
            raise ValueError(f"shape {shape} for {dim}-d vectors")
        norm = record.get("mips_norm")
        if norm is not None and not (isinstance(norm, (int, float)) and np.isfinite(norm) and norm > 0):
            raise ValueError(f"mips_norm {norm!r}")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ResedisError(
            f"{source}: the ANN projection ('{PROJECTION_KEY}') is damaged ({exc}); the ANN index of this compact "
            "index cannot be searched. Fix: rebuild the index (or search with use_ann=False)"
        ) from None
    return AnnProjection(data.reshape(shape).astype(np.float32), None if norm is None else float(norm))
