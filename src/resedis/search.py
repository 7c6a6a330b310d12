"""Query an index: text -> ``[q̂, 1]`` -> exact MIPS over every region vector -> hits.

For OWL-family indexes the inner product of a stored region vector ``[s·ê, s·b]`` with
the query vector ``[q̂, 1]`` *is* the detector's logit for that box and query, so
``score = sigmoid(logit)`` is the detector's own score, computed for the whole corpus
with one text encoding and one matrix product. Hits are then suppressed per image
(greedy NMS at ``nms_iou`` on the hits' own scores, boxes of different images never
interact) and ranked by score. ``present = score >= threshold``; the threshold is the
argument when given, else the calibrated one stored in the index manifest
(``calibration.threshold``), else the model checkpoint's own ``presence_threshold``
(a ``resedis finetune`` output or ``demo``), else :data:`resedis.thresholds.DEFAULT_THRESHOLD` — see
:mod:`resedis.thresholds`.

>>> from resedis.search import Searcher
>>> searcher = Searcher("photos.db")                     # doctest: +SKIP
>>> result = searcher.search("a red mug", top_k=10)      # doctest: +SKIP
>>> [(h.image_id, h.box, round(h.score, 3)) for h in result.hits]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from resedis.boxes import box_iou
from resedis.errors import ResedisError
from resedis.filters import Filters, ImageMeta, image_meta
from resedis.index.ann_search import AnnSearch
from resedis.index.manifest import check_model, check_preprocessing, check_weights, read_manifest
from resedis.index.store import IMAGES, Index, open_index
from resedis.models import load_model
from resedis.models.spec import REGION_TEXT
from resedis.search_corpus import (
    DEFAULT_MATRIX_DTYPE,
    Corpus,
    check_matrix_dtype,
    load_corpus,
)
from resedis.threads import set_threads
from resedis.thresholds import ThresholdChoice, index_threshold
from resedis.types import Dataset, Hit, ImageId, QueryResult

log = logging.getLogger(__name__)

HIT_NMS_IOU = 0.5
#: hits returned per query unless a caller asks for another number
DEFAULT_TOP_K = 20


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def normalize_text(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def rank_hits(
    logits: np.ndarray, region_image: np.ndarray, boxes: np.ndarray, top_k: int, nms_iou: float
) -> list[tuple[int, float]]:
    """Greedy per-image NMS over regions in descending logit order -> [(region, logit)].

    Exactly equal to running greedy NMS inside every image and then taking the global
    top ``top_k`` (a box is decided by higher-scored boxes of its own image only), but
    only a growing prefix of the ranking is examined. ``-inf`` logits are excluded.
    """
    n = logits.shape[0]
    if n == 0 or top_k <= 0:
        return []
    k = min(n, max(4 * top_k, 256))
    while True:
        # candidates in row order, so that the stable sort ranks ties by row whatever the window
        cand = np.sort(np.argpartition(-logits, k - 1)[:k]) if k < n else np.arange(n)
        order = cand[np.argsort(-logits[cand], kind="stable")]
        kept: list[tuple[int, float]] = []
        kept_boxes: dict[int, list[int]] = {}
        for i in order:
            value = float(logits[i])
            if value == -np.inf:  # the window holds every finite logit: no more hits anywhere
                return kept
            img = int(region_image[i])
            prev = kept_boxes.get(img)
            if prev and nms_iou < 1.0 and float(box_iou(boxes[i], boxes[prev], same_box_is_one=True).max()) > nms_iou:
                continue
            kept_boxes.setdefault(img, []).append(int(i))
            kept.append((int(i), value))
            if len(kept) == top_k:
                return kept
        if k == n:
            return kept
        k = min(n, 2 * k)


def rank_rows(rows: np.ndarray, logits: np.ndarray, corpus: Corpus, top_k: int,
              nms_iou: float) -> list[tuple[int, float]]:
    """:func:`rank_hits` over some rows of ``corpus`` only (``rows`` ascending, distinct;
    every other row counts as ``-inf``) -> [(corpus row, logit)]: the hits of ranking the
    whole (N,) vector, in time that grows with ``len(rows)`` rather than N. As on the
    dense path, hidden rows and non-finite logits are never answers."""
    rows = np.asarray(rows, np.int64)
    logits = np.asarray(logits, np.float32)
    logits = np.where(np.isfinite(logits) & ~corpus.hidden[rows], logits, np.float32(-np.inf))
    ranked = rank_hits(logits, corpus.region_image[rows], corpus.boxes[rows], top_k, nms_iou)
    return [(int(rows[i]), value) for i, value in ranked]


def exact_logits(corpus: Corpus, queries: np.ndarray, *keep: np.ndarray | None) -> np.ndarray:
    """(N, Q) float32 exact logits of every region of ``corpus``, ``-inf`` where a row is
    outside any ``keep`` mask (None: no mask), hidden, or not finite (a NaN/inf score is
    never an answer): what :func:`rank_hits` ranks on the exact path."""
    logits = corpus.logits(queries)
    for mask in keep:
        if mask is not None:  # a filter, before the top-k is cut
            logits[~mask] = -np.inf
    if corpus.hidden.any():  # no visible area (indexes from before the encoder dropped them), or damaged
        logits[corpus.hidden] = -np.inf
    logits[~np.isfinite(logits)] = -np.inf  # float32 overflow
    return logits


class Searcher:
    """Holds an index's text encoder and its region matrix; answers text queries.

    ``index``: an :class:`~resedis.index.Index` or a DB path. ``model`` (optional) is
    checked against the index's model, and the loaded weights against the index's weights
    fingerprint (IndexMismatchError). ``encoder``: an already
    loaded text encoder to reuse. The region matrix is loaded on first use and reloaded
    whenever the index's tables change. When the regions table has an ANN index, each
    query's candidates come from it and are re-scored exactly (``ann``: an
    :class:`~resedis.index.ann.AnnConfig`; ``use_ann=False`` forces exact search).

    ``matrix_dtype``: ``"float32"`` (default) keeps the region matrix in float32 for the
    exact product — converted once, ``4 bytes × rows × dim`` of memory; ``"stored"``
    keeps the index's float16 (half the memory, ~15× slower exact search). Same logits
    either way (:mod:`resedis.search_corpus`). ``threads``: bound torch's and numpy's
    BLAS CPU threads of this process to N (:func:`resedis.threads.set_threads`,
    process-wide); None keeps the library defaults.
    """

    def __init__(
        self,
        index: Index | str | os.PathLike,
        *,
        device: str | None = None,
        model: str | None = None,
        encoder=None,
        nms_iou: float = HIT_NMS_IOU,
        ann=None,
        use_ann: bool = True,
        matrix_dtype: str = DEFAULT_MATRIX_DTYPE,
        threads: int | None = None,
    ):
        self.matrix_dtype = check_matrix_dtype(matrix_dtype)
        self.threads = set_threads(threads)["torch"]
        self.index = index if isinstance(index, Index) else open_index(index)
        check_model(self.index.manifest, model, self.index.path)
        if encoder is None:
            encoder = load_model(self.index.manifest.model, device)
        else:
            check_model(self.index.manifest, encoder.spec, self.index.path)
        check_weights(self.index.manifest, encoder, self.index.path)  # same spec, retrained weights?
        if encoder.kind != REGION_TEXT or encoder.vector_dim != self.index.manifest.vector_dim:
            raise ResedisError(
                f"{encoder.spec}: not a text encoder for this index ({encoder.kind} backend, vector dim "
                f"{encoder.vector_dim if encoder.kind == REGION_TEXT else '-'} vs the index's {self.index.manifest.vector_dim})"
            )
        check_preprocessing(self.index.manifest, encoder, self.index.path)  # same processor config?
        if not 0.0 < nms_iou <= 1.0:
            raise ResedisError(f"nms_iou must be in (0, 1] (1 disables NMS), got {nms_iou}")
        self.encoder = encoder
        self.nms_iou = nms_iou
        self._corpus: Corpus | None = None
        self._manifest_mtime = self._stat_manifest()
        # ANN candidates + exact re-scoring when the regions table has a vector index
        # (resedis.index.ann; built above IndexConfig.ann_min_rows rows); ``ann``: an AnnConfig.
        self.ann = AnnSearch(self.index, ann) if use_ann else None
        self._meta: tuple[Corpus, ImageMeta] | None = None

    def _stat_manifest(self) -> object:
        # Local index: the manifest's mtime; object store: a hash of its content (resedis.index.fs).
        return self.index.manifest_stamp()

    def corpus(self) -> Corpus:
        """The region matrix, reloaded when the index changed since it was read."""
        mtime = self._stat_manifest()
        if mtime != self._manifest_mtime:  # e.g. calibration stored a threshold
            self.index.manifest = read_manifest(self.index.path)
            self._manifest_mtime = mtime
        if self._corpus is None or self._corpus.version != self.index.version():
            # With an ANN path the region matrix is read only if an exact product needs it.
            self._corpus = load_corpus(self.index, self.matrix_dtype, lazy=self.ann is not None)
        return self._corpus

    def warm_up(self) -> None:
        """Read now what the first query would otherwise read: the corpus (ids and boxes;
        the region matrix too when there is no ANN path) and, with a vector index, the
        index itself into LanceDB's cache (:attr:`resedis.index.ann.AnnConfig.prewarm_max_bytes`)."""
        corpus = self.corpus()
        if self.ann is None or not self.ann.available():
            corpus.load()

    def image_meta(self, corpus: Corpus | None = None) -> ImageMeta:
        """Id, size and mtime of every image row of ``corpus`` (read once per corpus)."""
        corpus = corpus if corpus is not None else self.corpus()
        if self._meta is None or self._meta[0] is not corpus:
            table = self.index.read(IMAGES, ["image_id", "width", "height", "mtime_ns"])
            self._meta = (corpus, image_meta(table, corpus.image_ids))
        return self._meta[1]

    def region_filter(self, filters: Filters | None, corpus: Corpus | None = None) -> np.ndarray | None:
        """(N,) bool per region of ``corpus``: its image passes ``filters`` (None: no filter)."""
        if filters is None:
            return None
        filters = filters.validated()
        if not filters.active:
            return None
        corpus = corpus if corpus is not None else self.corpus()
        keep = filters.image_mask(self.image_meta(corpus))
        return keep[corpus.region_image] if len(corpus) else np.zeros(0, dtype=bool)

    @property
    def threshold(self) -> float:
        """Default presence threshold (see :attr:`threshold_choice`)."""
        return self.threshold_choice.value

    @property
    def threshold_choice(self) -> ThresholdChoice:
        """Default presence threshold and its source: calibrated (manifest), else the model
        checkpoint's ``presence_threshold``, else :data:`resedis.thresholds.DEFAULT_THRESHOLD`."""
        return index_threshold(self.index.manifest)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (Q, D) float32 query vectors. Empty/whitespace text -> ResedisError."""
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise ResedisError(f"empty query {text!r}: describe the object to search for")
        return np.asarray(self.encoder.encode_texts([normalize_text(t) for t in texts]), dtype=np.float32)

    def ranking_logits(self, corpus: Corpus, queries: np.ndarray, k: int,
                       prefilter: np.ndarray | None = None) -> np.ndarray:
        """(Q, D) query vectors -> (N, Q) float32 logits for finding the top ``k`` regions:
        with a vector index, exact logits on each query's ANN candidates and ``-inf``
        elsewhere (:class:`resedis.index.ann_search.AnnSearch`; ``prefilter`` rows only); without
        one, every region's exact logit (rows outside ``prefilter`` at ``-inf``)."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        logits = self.ann.logits(corpus, queries, k, prefilter) if self.ann is not None else None
        if logits is None:
            logits = corpus.logits(queries)
            if prefilter is not None:
                logits[~prefilter] = -np.inf
        return logits

    def ranking_candidates(self, corpus: Corpus, queries: np.ndarray, k: int,
                           prefilter: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """With a vector index, what :meth:`ranking_logits` holds as finite values, sparse: per
        query its candidate rows (ascending) and their exact logits (``prefilter`` rows
        only; :meth:`resedis.index.ann_search.AnnSearch.candidates`); None without one (rank every
        region: :meth:`ranking_logits`)."""
        if self.ann is None:
            return None
        return self.ann.candidates(corpus, np.atleast_2d(np.asarray(queries, dtype=np.float32)), k, prefilter)

    def search(self, text: str, *, top_k: int = DEFAULT_TOP_K, threshold: float | None = None,
               filters: Filters | None = None) -> QueryResult:
        """One text query -> QueryResult (hits ranked by score, ``query_id`` = the normalised text)."""
        return self.search_many([text], top_k=top_k, threshold=threshold, filters=filters)[0]

    def search_many(
        self,
        texts: Sequence[str],
        *,
        top_k: int = DEFAULT_TOP_K,
        threshold: float | None = None,
        query_ids: Sequence[str] | None = None,
        batch_size: int = 32,
        filters: Filters | None = None,
    ) -> list[QueryResult]:
        """Several queries, text-encoded in batches of ``batch_size``; one QueryResult each.
        ``filters``: only images passing them are searched, before the top-k is cut
        (:mod:`resedis.filters`)."""
        corpus = self.corpus()
        return self._search(texts, top_k=top_k, threshold=threshold, query_ids=query_ids, batch_size=batch_size,
                            corpus=corpus, prefilter=self.region_filter(filters, corpus))

    def search_vectors(
        self,
        vectors: np.ndarray,
        labels: Sequence[str],
        *,
        top_k: int = DEFAULT_TOP_K,
        threshold: float | None = None,
        query_ids: Sequence[str] | None = None,
        filters: Filters | None = None,
    ) -> list[QueryResult]:
        """Queries given as vectors ``[q̂, 1]`` (Q, D), e.g. a region's class embedding
        (query by example, :mod:`resedis.by_example`), searched exactly as text queries;
        ``labels`` are the results' expressions (and ids unless ``query_ids``)."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        dim = self.index.manifest.vector_dim
        if vectors.shape != (len(labels), dim):
            raise ResedisError(f"query vectors of shape {vectors.shape} for {len(labels)} labels; the index needs (Q, {dim})")
        corpus = self.corpus()
        return self._search(list(labels), top_k=top_k, threshold=threshold, query_ids=query_ids, corpus=corpus,
                            prefilter=self.region_filter(filters, corpus), vectors=vectors)

    def _search(self, texts, *, top_k, threshold, query_ids=None, batch_size=32, allowed=None, id_map=None, corpus=None,
                prefilter=None, vectors=None):
        if isinstance(texts, str):
            raise TypeError("search_many takes a list of strings; use search() for one")
        if top_k < 1:
            raise ResedisError(f"top_k must be >= 1, got {top_k}")
        if batch_size < 1:
            raise ResedisError(f"batch_size must be >= 1, got {batch_size}")
        if query_ids is not None and len(query_ids) != len(texts):
            raise ResedisError(f"{len(query_ids)} query ids for {len(texts)} texts")
        corpus = corpus if corpus is not None else self.corpus()  # first: re-reads a changed manifest
        threshold = self.threshold if threshold is None else float(threshold)
        results: list[QueryResult] = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            t0 = time.perf_counter()
            queries = self.encode(chunk) if vectors is None else vectors[start : start + batch_size]
            t1 = time.perf_counter()
            # with a vector index: each query's candidate rows only (nothing of size N per query)
            found = self.ranking_candidates(corpus, queries, top_k, prefilter) if allowed is None else None
            if found is None:  # no vector index (or a dataset run): every region, exactly
                logits = exact_logits(corpus, queries, allowed, prefilter)
            t2 = time.perf_counter()
            for j, text in enumerate(chunk):
                t3 = time.perf_counter()
                if found is None:
                    ranked = rank_hits(logits[:, j], corpus.region_image, corpus.boxes, top_k, self.nms_iou)
                else:  # the prefilter was applied by the candidate search
                    ranked = rank_rows(*found[j], corpus, top_k, self.nms_iou)
                hits = []
                for region, logit in ranked:
                    img = int(corpus.region_image[region])
                    score = float(sigmoid(logit))
                    hits.append(
                        Hit(
                            image_id=corpus.image_ids[img] if id_map is None else id_map[img],
                            box=tuple(float(v) for v in corpus.boxes[region]),
                            score=score,
                            present=score >= threshold,
                            mask=None,
                            path=corpus.paths[img],
                        )
                    )
                qid = query_ids[start + j] if query_ids is not None else normalize_text(text)
                timings = {
                    "encode_ms": 1000 * (t1 - t0) / len(chunk),
                    "search_ms": 1000 * ((t2 - t1) / len(chunk) + time.perf_counter() - t3),
                }
                results.append(QueryResult(query_id=qid, expression=text, hits=hits, timings=timings))
        return results


def search(
    text: str,
    db: str | os.PathLike | Index,
    *,
    top_k: int = DEFAULT_TOP_K,
    threshold: float | None = None,
    device: str | None = None,
) -> QueryResult:
    """One-off query (loads the text encoder each call; keep a :class:`Searcher` for many).

    Keeps the region matrix as stored: for one query a float32 copy would cost the same
    conversion plus twice the memory."""
    return Searcher(db, device=device, matrix_dtype="stored").search(text, top_k=top_k, threshold=threshold)


def map_dataset_images(corpus: Corpus, root: str, dataset: Dataset) -> tuple[list[ImageId | None], int]:
    """Index image rows -> dataset image ids.

    Rule, per dataset image, first that applies: (1) its absolute ``path`` equals the
    indexed file's absolute path (symlinks resolved); (2) its ``file_name`` equals the
    index image id (the POSIX path relative to the indexed folder); (3) exactly one index
    image id ends with ``/<file_name>`` (folder indexed one level above the dataset's
    image root). Returns (dataset id or None per index row, number of dataset images
    not found in the index).
    """
    by_path: dict[str, int] = {}
    for row, p in enumerate(corpus.paths):
        by_path.setdefault(os.path.realpath(p), row)
    by_id = {image_id: row for row, image_id in enumerate(corpus.image_ids)}
    by_suffix: dict[str, list[int]] = {}
    for row, image_id in enumerate(corpus.image_ids):
        parts = image_id.split("/")
        for cut in range(1, len(parts)):
            by_suffix.setdefault("/".join(parts[cut:]), []).append(row)
    mapping: list[ImageId | None] = [None] * len(corpus.image_ids)
    missing = 0
    for ds_id, info in dataset.images.items():
        row = None
        if info.path:
            row = by_path.get(os.path.realpath(info.path))
        name = Path(info.file_name).as_posix() if info.file_name else None
        if row is None and name:
            row = by_id.get(name)
            if row is None and len(by_suffix.get(name, [])) == 1:
                row = by_suffix[name][0]
        if row is None:
            missing += 1
        elif mapping[row] is None:
            mapping[row] = ds_id
    return mapping, missing


def search_dataset(
    db: str | os.PathLike | Index | Searcher,
    dataset: Dataset,
    *,
    top_k: int = DEFAULT_TOP_K,
    threshold: float | None = None,
    device: str | None = None,
    batch_size: int = 32,
) -> list[QueryResult]:
    """Every query of ``dataset`` (in order) -> QueryResults whose hit ``image_id`` are
    the DATASET's ids (see :func:`map_dataset_images` for the matching rule). Only the
    index's images that belong to the dataset are searched. ``db`` may be a ready
    :class:`Searcher` (its encoder is reused). Raises ResedisError when index and
    dataset share no image.
    """
    searcher = db if isinstance(db, Searcher) else Searcher(db, device=device)
    corpus = searcher.corpus()
    mapping, missing = map_dataset_images(corpus, searcher.index.manifest.root, dataset)
    shared = sum(m is not None for m in mapping)
    if shared == 0:
        example_index = corpus.image_ids[0] if corpus.image_ids else "(index is empty)"
        example_ds = next((i.file_name for i in dataset.images.values()), "(no images)")
        raise ResedisError(
            f"index {searcher.index.path} (images of {searcher.index.manifest.root}, e.g. {example_index!r}) and "
            f"dataset {dataset.name!r} (root {dataset.root}, e.g. {example_ds!r}) share no images; "
            "index the dataset's image folder"
        )
    if missing:
        log.warning("%d of %d dataset images are not in the index %s; they can never be found",
                    missing, len(dataset.images), searcher.index.path)
    allowed_rows = np.array([m is not None for m in mapping], dtype=bool)
    allowed = allowed_rows[corpus.region_image] if len(corpus) else np.zeros(0, dtype=bool)
    queries = dataset.queries
    return searcher._search(
        [q.expression for q in queries],
        top_k=top_k,
        threshold=threshold,
        query_ids=[q.query_id for q in queries],
        batch_size=batch_size,
        allowed=allowed,
        id_map=mapping,
        corpus=corpus,
    )
