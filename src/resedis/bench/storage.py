"""Compact region storage against today's float16: agreement of the hits and bytes on disk.

For a set of region vectors (float32, as the encoder gave them) and query vectors, each
storage format's logits are computed the way the Searcher computes them
(:mod:`resedis.quant` for ``int8``/``int4``, the float product for ``float16``)
and compared with float16's:

* ``top10_identical``: share of queries whose top-10 hits are the same list, in the same
  order (with ``boxes``: the engine's hits, per-image NMS applied; else the top-10 rows);
* ``top10_same_set``: the same, as sets; ``top1_identical``: the first hit only;
* ``max_score_diff``: the largest ``|sigmoid(logit_format) - sigmoid(logit_float16)|``
  over every region and query, and the same for logits;
* ``bound_ok``: every compact logit lies within :func:`~resedis.quant.logit_error_bound`
  of the float32 logit (the documented exactness bound).

:func:`bytes_per_image` writes the regions table of each format (plus the ANN column and
index where one applies) and measures it on disk.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from resedis import quant
from resedis.ann_projection import fit_projection, proj_dims
from resedis.index.columns import vector_columns
from resedis.search import rank_hits, sigmoid


def format_logits(vectors: np.ndarray, queries: np.ndarray, storage: str) -> np.ndarray:
    """(N, Q) float32 logits of ``vectors`` (float32) as stored in ``storage``."""
    if storage == "float32":
        return np.asarray(vectors, np.float32) @ queries.T
    if storage == "float16":
        return np.asarray(vectors, np.float16).astype(np.float32) @ queries.T
    codes, step, bias = quant.quantize(vectors, storage)
    return quant.compact_logits(codes, step, bias, queries, storage, vectors.shape[1])


def _top(logits: np.ndarray, k: int, region_image, boxes, nms_iou: float) -> list[tuple[int, ...]]:
    out = []
    for j in range(logits.shape[1]):
        if boxes is None:
            col = logits[:, j]
            cand = np.argpartition(-col, k - 1)[:k] if k < col.shape[0] else np.arange(col.shape[0])
            out.append(tuple(int(i) for i in cand[np.argsort(-col[cand], kind="stable")]))
        else:
            out.append(tuple(i for i, _ in rank_hits(logits[:, j], region_image, boxes, k, nms_iou)))
    return out


def agreement(
    vectors: np.ndarray,
    queries: np.ndarray,
    formats: tuple[str, ...] = ("int8", "int4"),
    *,
    k: int = 10,
    region_image: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    nms_iou: float = 0.5,
) -> dict:
    """-> ``{format: {top10_identical, top10_same_set, max_score_diff, max_logit_diff,
    max_logit_diff_vs_float32, max_bound, bound_ok}}`` against float16 (see module doc)."""
    vectors = np.asarray(vectors, np.float32)
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    exact = format_logits(vectors, queries, "float32")
    ref = format_logits(vectors, queries, "float16")
    ref_top = _top(ref, k, region_image, boxes, nms_iou)
    ref_sig = sigmoid(ref)
    out: dict = {"queries": int(queries.shape[0]), "regions": int(vectors.shape[0]), "dim": int(vectors.shape[1]), "k": k}
    for storage in formats:
        got = format_logits(vectors, queries, storage)
        top = _top(got, k, region_image, boxes, nms_iou)
        entry = {
            "top1_identical": float(np.mean([a[:1] == b[:1] for a, b in zip(top, ref_top)])),
            "top10_identical": float(np.mean([a == b for a, b in zip(top, ref_top)])),
            "top10_same_set": float(np.mean([set(a) == set(b) for a, b in zip(top, ref_top)])),
            "max_score_diff": float(np.abs(sigmoid(got) - ref_sig).max()),
            "max_logit_diff": float(np.abs(got - ref).max()),
            "max_logit_diff_vs_float32": float(np.abs(got - exact).max()),
            "bytes_per_region_vectors": quant.bytes_per_region(storage, vectors.shape[1]),
        }
        if quant.is_compact(storage):
            _, step, _ = quant.quantize(vectors, storage)
            bound = quant.logit_error_bound(step, queries)
            err = np.abs(got.astype(np.float64) - exact.astype(np.float64))
            entry["max_bound"] = float(bound.max())
            entry["bound_ok"] = bool(np.all(err <= bound + 1e-5 * (1.0 + np.abs(exact))))
            entry["max_err_over_bound"] = float((err / np.maximum(bound, 1e-12)).max())
        out[storage] = entry
    return out


def regions_table(vectors: np.ndarray, storage: str, regions_per_image: int, seed: int = 0) -> pa.Table:
    """An index-schema regions table (:func:`resedis.index.store.regions_schema`) of ``vectors``."""
    from resedis.index.store import regions_schema

    n, dim = vectors.shape
    rng = np.random.default_rng(seed)
    row = np.arange(n)
    xy = rng.uniform(0, 600, (n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(8, 200, (n, 2)).astype(np.float32)], axis=1)
    cols = {
        "image_id": pa.array([f"photos/2024/IMG_{i:07d}.jpg" for i in row // regions_per_image], pa.string()),
        "region": pa.array((row % regions_per_image).astype(np.int32)),
        "box": pa.FixedSizeListArray.from_arrays(pa.array(boxes.ravel(), pa.float32()), 4),
        "objectness": pa.array(rng.normal(0, 1, n).astype(np.float32)),
        "batch": pa.array((row // (8 * regions_per_image)).astype(np.int64)),
    }
    projection = fit_projection(vectors, proj_dims(dim)) if quant.is_compact(storage) else None
    cols.update(vector_columns(vectors, storage, projection))
    return pa.table(cols, schema=regions_schema(dim, storage))


def bytes_per_image(
    vectors: np.ndarray, formats: tuple[str, ...], *, regions_per_image: int = 100, ann: bool = True,
    workdir: str | Path | None = None,
) -> dict:
    """-> ``{format: {"table": B/image, "ann": B/image, "total": B/image}}`` measured on disk
    (Lance files of the regions table; the ANN index when ``ann``: IVF_SQ on ``vector`` for
    the float formats, today's default, and IVF_SQ/cosine on the 34-d ``proj`` column for compact ones)."""
    import lancedb

    from resedis.index.ann import AnnConfig, build_ann_index
    from resedis.index.store import disk_bytes

    scratch = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="resedis-storage-"))
    images = vectors.shape[0] / regions_per_image
    out = {}
    try:
        for storage in formats:
            path = scratch / storage
            shutil.rmtree(path, ignore_errors=True)
            db = lancedb.connect(str(path))
            table = db.create_table("regions", regions_table(vectors, storage, regions_per_image))
            table_bytes = disk_bytes(path)
            ann_bytes = 0
            if ann:
                build_ann_index(table, AnnConfig(min_rows=1))
                ann_bytes = disk_bytes(path) - table_bytes
            out[storage] = {
                "table": round(table_bytes / images),
                "ann": round(ann_bytes / images),
                "total": round((table_bytes + ann_bytes) / images),
            }
    finally:
        if not workdir:
            shutil.rmtree(scratch, ignore_errors=True)
    return out



def run_storage_bench(rows: int, queries: int, bytes_rows: int, workdir: str | Path | None = None,
                      formats: tuple[str, ...] = ("int8", "int4")) -> dict:
    """The ``storage`` section of ``resedis bench``: agreement with float16 on ``rows``
    OWL-sized synthetic regions (:mod:`resedis.bench.synthetic`, 513-d) for ``queries``
    queries, and bytes per image (100 regions) of each format on ``bytes_rows`` regions."""
    from resedis.bench.synthetic import SyntheticSpec, query_vectors, region_vectors

    spec = SyntheticSpec()
    vectors = np.concatenate(list(region_vectors(rows, spec, dtype=np.float32)))
    report = {"vectors": "synthetic OWL-like, 513-d", "agreement_vs_float16": agreement(vectors, query_vectors(queries, spec), formats)}
    report["bytes_per_image"] = bytes_per_image(vectors[:bytes_rows], ("float16", *formats), workdir=workdir)
    return report


def index_agreement(reference_db, other_db, texts: list[str], *, top_k: int = 10, encoder=None) -> dict:
    """Two indexes of the same images (e.g. float16 and int4) searched with the same texts
    through the Searcher's exact path -> share of queries with identical top-1 / top-``k``
    hits (image id and box, in order), the same top-``k`` set, the largest score difference
    of a hit both return, and each index's bytes per image on disk."""
    from resedis.index import open_index
    from resedis.search import Searcher

    ref = Searcher(reference_db, encoder=encoder, use_ann=False)
    other = Searcher(other_db, encoder=encoder or ref.encoder, use_ann=False)
    top1 = same = same_set = 0
    diff = 0.0
    for text in texts:
        a = [((h.image_id, h.box), h.score) for h in ref.search(text, top_k=top_k).hits]
        b = [((h.image_id, h.box), h.score) for h in other.search(text, top_k=top_k).hits]
        top1 += bool(a and b and a[0][0] == b[0][0])
        same += [x for x, _ in a] == [x for x, _ in b]
        same_set += {x for x, _ in a} == {x for x, _ in b}
        scores = dict(b)
        diff = max([diff] + [abs(s - scores[x]) for x, s in a if x in scores])
    out = {"queries": len(texts), "top_k": top_k, "top1_identical": top1 / len(texts),
           "topk_identical": same / len(texts), "topk_same_set": same_set / len(texts), "max_score_diff": diff}
    for name, db in (("reference", reference_db), ("other", other_db)):
        index = open_index(db)
        out[f"{name}_storage"] = index.manifest.vector_dtype
        out[f"{name}_bytes_per_image"] = round(index.stats()["bytes"] / max(1, index.stats()["images"]))
    return out
