"""Synthetic OWL-like region and query vectors for ANN tests and the query benchmark.

A region vector of an OWL-family index is ``v = [s·ê, s·b]`` (ê unit class embedding,
``s > 0`` logit scale, ``b`` logit shift) and a query is ``u = [q̂, 1]``, so ``v·u`` is the
detector logit ``s·(ê·q̂ + b)``. Real class embeddings are clustered (many boxes of the
same kind of object), so ê is drawn from a mixture of ``clusters`` directions with
Gaussian noise (spread drawn per cluster), ``s`` log-normal and ``b`` normal; queries
point near cluster centres. With the defaults a query's own cluster reaches logits
around 0 to +2 (sigmoid 0.5-0.9) while other regions sit near -4 (small-``s`` ones up
to about -1.5): the shape of a detector's output, where a description matches a few
boxes of the corpus. This is a stated model, not measured OWL statistics (no
pretrained weights are available here); ANN recall depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the mixture. ``dim`` = E + 1 (OWLv2/OWL-ViT base: 513)."""

    dim: int = 513
    clusters: int = 1024
    noise_min: float = 0.025  # per-coordinate noise around a cluster direction (before
    noise_max: float = 0.05  # renormalising), drawn per cluster: member-centre cos 0.62-0.85
    query_noise: float = 0.03
    log_scale_mean: float = 2.08  # s ~ 8 (log-normal)
    log_scale_std: float = 0.3
    shift_mean: float = -0.45
    shift_std: float = 0.1
    seed: int = 0

    def centres(self) -> np.ndarray:
        """(clusters, dim - 1) float32 unit vectors (fixed by ``seed``)."""
        rng = np.random.default_rng([self.seed, 0])
        c = rng.standard_normal((self.clusters, self.dim - 1)).astype(np.float32)
        return c / np.linalg.norm(c, axis=1, keepdims=True)

    def spreads(self) -> np.ndarray:
        """(clusters,) per-cluster noise level."""
        rng = np.random.default_rng([self.seed, 3])
        return rng.uniform(self.noise_min, self.noise_max, self.clusters).astype(np.float32)


def region_vectors(
    n: int, spec: SyntheticSpec = SyntheticSpec(), *, chunk: int = 100_000, dtype=np.float16
) -> Iterator[np.ndarray]:
    """Yield (≤ chunk, dim) arrays of region vectors ``[s·ê, s·b]``, ``n`` rows in total.

    Deterministic for a given ``spec`` and ``chunk`` (chunk ``i`` uses seed ``[seed, 1, i]``).
    """
    centres, spreads = spec.centres(), spec.spreads()
    e_dim = spec.dim - 1
    for i, start in enumerate(range(0, n, chunk)):
        m = min(chunk, n - start)
        rng = np.random.default_rng([spec.seed, 1, i])
        which = rng.integers(0, spec.clusters, m)
        e = centres[which] + spreads[which, None] * rng.standard_normal((m, e_dim), dtype=np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        s = np.exp(rng.normal(spec.log_scale_mean, spec.log_scale_std, m)).astype(np.float32)
        b = rng.normal(spec.shift_mean, spec.shift_std, m).astype(np.float32)
        out = np.empty((m, spec.dim), dtype=dtype)
        out[:, :e_dim] = s[:, None] * e
        out[:, e_dim] = s * b
        yield out


def query_vectors(q: int, spec: SyntheticSpec = SyntheticSpec(), *, seed: int = 1) -> np.ndarray:
    """(q, dim) float32 query vectors ``[q̂, 1]`` with q̂ near random cluster centres."""
    centres = spec.centres()
    rng = np.random.default_rng([spec.seed, 2, seed])
    which = rng.integers(0, spec.clusters, q)
    qh = centres[which] + spec.query_noise * rng.standard_normal((q, spec.dim - 1), dtype=np.float32)
    qh /= np.linalg.norm(qh, axis=1, keepdims=True)
    return np.concatenate([qh, np.ones((q, 1), np.float32)], axis=1)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, *, chunk: int = 1 << 18) -> np.ndarray:
    """Reference exact MIPS: (Q, k) row indices of the k largest ``vectors @ query``, best first.

    Computed in float32 chunks (vectors may be float16); ties broken by lower row index.
    """
    queries = np.asarray(queries, np.float32)
    n = vectors.shape[0]
    k = min(k, n)
    best_s = np.full((queries.shape[0], 0), -np.inf, np.float32)
    best_i = np.zeros((queries.shape[0], 0), np.int64)
    for start in range(0, n, chunk):
        block = vectors[start : start + chunk].astype(np.float32, copy=False) @ queries.T  # (m, Q)
        s = np.concatenate([best_s, block.T], axis=1)
        idx = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + block.shape[0]), (queries.shape[0], block.shape[0]))], axis=1)
        keep = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(s, keep, axis=1)
        best_i = np.take_along_axis(idx, keep, axis=1)
    return best_i


def recall_at(truth: np.ndarray, got: np.ndarray, k: int) -> float:
    """Mean over queries of |top-k(truth) ∩ top-k(got)| / k (rows compared as sets)."""
    if truth.shape[0] == 0:
        return float("nan")
    hits = [len(set(t[:k].tolist()) & set(g[:k].tolist())) / min(k, len(t[:k])) for t, g in zip(truth, got)]
    return float(np.mean(hits))
