"""A one-off search that starts fast: what ``resedis search`` runs for the ``owl`` pipeline.

A one-off process pays for its imports, not for the search (milliseconds). This path
avoids the heavy ones wherever it can prove the answer is the same:

1. **Text vector** — from the index's query cache (:mod:`resedis.search_cache`) when
   this query was answered before with the same weights, tokenizer and encoder; else the
   light numpy text encoder (:mod:`resedis.models.text_light`, no torch/transformers);
   else, with the reason logged, the full backend (:func:`resedis.models.load_model`).
2. **Region matrix** — from the index's region sidecar (:mod:`resedis.index.sidecar`,
   numpy only) when it matches the tables' current state; else through LanceDB (a
   :class:`~resedis.search.Searcher`, with its ANN path where the index has one), after
   which the sidecar is refreshed for the next search.
3. **Scoring** — the same exact product, per-image NMS and ranking as
   :class:`~resedis.search.Searcher` (:func:`rank_corpus`).

The weights check is the Searcher's: the index's model must still have the weights its
vectors were encoded with (:func:`resedis.index.manifest.check_weights`), before any
cached vector is used.

>>> from resedis.search_oneoff import oneoff_search
>>> oneoff_search("photos.db", "a red mug", top_k=5).hits  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from resedis.errors import ResedisError
from resedis.index.manifest import Manifest, check_model, check_weights, read_manifest
from resedis.index.store import open_index
from resedis.index.sidecar import read_sidecar, remove_sidecar, sidecar_allowed, tables_stamp, write_sidecar
from resedis.models import load_model, parse_spec
from resedis.models.fingerprint import spec_weights_dir, weights_fingerprint
from resedis.models.text_light import LIGHT_VERSION, LightUnsupported, light_unsupported_reason, load_light_text_encoder
from resedis.search import DEFAULT_NMS_IOU, Searcher, normalize_text, rank_hits, sigmoid
from resedis.search_cache import CachedTextEncoder, QueryCache, cache_key
from resedis.search_corpus import Corpus, load_corpus
from resedis.thresholds import index_threshold
from resedis.types import Hit, QueryResult

log = logging.getLogger(__name__)


@dataclass
class OneOffInfo:
    """How a one-off search was answered: ``encoder`` (``"cache"``, ``"light"`` or
    ``"transformers"``), ``regions`` (``"sidecar"`` or ``"lance"``), ``fallback`` (why the
    light encoder was not used, if it was not), ``sidecar_written`` and the presence
    ``threshold`` applied."""

    encoder: str = ""
    regions: str = ""
    fallback: str | None = None
    sidecar_written: bool = False
    threshold: float | None = None


def rank_corpus(corpus: Corpus, queries: np.ndarray, texts: list[str], *, top_k: int, threshold: float,
                nms_iou: float) -> list[QueryResult]:
    """Exact search of (Q, D) ``queries`` over ``corpus``: the logits, per-image NMS,
    ranking and presence of :meth:`resedis.search.Searcher.search_many`."""
    logits = corpus.logits(queries)
    results = []
    for j, text in enumerate(texts):
        ranked = rank_hits(logits[:, j], corpus.region_image, corpus.boxes, top_k, nms_iou)
        hits = []
        for region, logit in ranked:
            img = int(corpus.region_image[region])
            score = float(sigmoid(logit))
            hits.append(Hit(image_id=corpus.image_ids[img], box=tuple(float(v) for v in corpus.boxes[region]),
                            score=score, present=score >= threshold, mask=None, path=corpus.paths[img]))
        results.append(QueryResult(query_id=normalize_text(text), expression=text, hits=hits))
    return results


def text_encoder_for(manifest: Manifest, db: Path, device: str | None = None, *, use_cache: bool = True,
                     info: OneOffInfo | None = None) -> CachedTextEncoder:
    """The cheapest exact text encoder for an index's model: cache, then light, then full.

    Checks first that the model's weights are still those the index was built with."""
    info = info if info is not None else OneOffInfo()
    check_weights(manifest, None, db)
    spec = manifest.model
    weights_dir = spec_weights_dir(spec)
    family = parse_spec(spec).family
    reason = light_unsupported_reason(weights_dir, family)
    if reason is None:
        implementation = f"light:{LIGHT_VERSION}"

        def load_inner():
            try:
                encoder = load_light_text_encoder(spec, weights_dir, family)
            except LightUnsupported as exc:  # found only when reading the weights
                info.fallback = str(exc)
                wrapper.cache = _NoCache(manifest.vector_dim)  # the key names the light encoder: store nothing
                log.info("light text encoder not used: %s; loading %s with transformers", exc, spec)
                return _full(spec, device, info)
            info.encoder = "light"
            return encoder
    else:
        info.fallback = reason
        implementation = f"transformers:{_version('transformers')}:torch:{_version('torch')}"

        def load_inner():
            log.info("light text encoder not used: %s; loading %s with transformers", reason, spec)
            return _full(spec, device, info)

    fingerprint = manifest.weights_fingerprint or weights_fingerprint(weights_dir)
    key = cache_key(fingerprint, weights_dir, implementation)
    cache = QueryCache(db, key, manifest.vector_dim) if use_cache else _NoCache(manifest.vector_dim)
    wrapper = CachedTextEncoder(spec, manifest.vector_dim, cache, load_inner)
    return wrapper


def _full(spec: str, device: str | None, info: OneOffInfo):
    info.encoder = "transformers"
    return load_model(spec, device)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


class _NoCache(QueryCache):
    def __init__(self, dim: int):
        self.dim, self.key, self._entries, self.path = dim, "", {}, Path(os.devnull)

    def put_many(self, texts, vectors) -> None:
        return None


def oneoff_search(
    db: str | os.PathLike,
    text: str,
    *,
    top_k: int = 20,
    threshold: float | None = None,
    nms_iou: float = DEFAULT_NMS_IOU,
    model: str | None = None,
    device: str | None = None,
    use_cache: bool = True,
    info: OneOffInfo | None = None,
) -> QueryResult:
    """One query against a LOCAL index directory, as :meth:`Searcher.search` answers it
    (same hits; the text vector equal to float32 tolerance when the light encoder made it),
    with as few imports as possible (see the module docstring). ``info`` (optional) is
    filled with how it was answered."""
    info = info if info is not None else OneOffInfo()
    if not isinstance(text, str) or not text.strip():
        raise ResedisError(f"empty query {text!r}: describe the object to search for")
    if top_k < 1:
        raise ResedisError(f"top_k must be >= 1, got {top_k}")
    if not 0.0 < nms_iou <= 1.0:
        raise ResedisError(f"nms_iou must be in (0, 1] (1 disables NMS), got {nms_iou}")
    root = Path(db)
    if not root.is_dir():
        raise ResedisError(f"{db}: no such index directory; build one with: resedis index IMAGES_DIR --db {db}")
    manifest = read_manifest(root)
    check_model(manifest, model, root)
    encoder = text_encoder_for(manifest, root, device, use_cache=use_cache, info=info)
    t0 = time.perf_counter()
    sidecar = read_sidecar(root)
    if sidecar is not None:
        info.regions = "sidecar"
        corpus = Corpus(version=sidecar.versions, image_ids=sidecar.image_ids, paths=sidecar.paths,
                        region_image=sidecar.region_image, boxes=sidecar.boxes, vectors=sidecar.vectors,
                        matrix_dtype="stored")
        chosen = index_threshold(manifest).value if threshold is None else float(threshold)
        info.threshold = chosen
        t1 = time.perf_counter()
        queries = encoder.encode_texts([normalize_text(text)])
        t2 = time.perf_counter()
        result = rank_corpus(corpus, queries, [text], top_k=top_k, threshold=chosen, nms_iou=nms_iou)[0]
        result.timings = {"encode_ms": 1000 * (t2 - t1), "search_ms": 1000 * (time.perf_counter() - t2 + t1 - t0)}
    else:
        info.regions = "lance"
        stamp = tables_stamp(root)  # before the tables are read: a commit meanwhile -> not written
        searcher = Searcher(root, encoder=encoder, nms_iou=nms_iou, matrix_dtype="stored")
        result = searcher.search(text, top_k=top_k, threshold=threshold)
        info.threshold = searcher.threshold if threshold is None else float(threshold)
        if stamp is not None:
            corpus = searcher.corpus()
            info.sidecar_written = write_sidecar(
                root, stamp=stamp, versions=corpus.version, image_ids=corpus.image_ids, paths=corpus.paths,
                region_image=corpus.region_image, boxes=corpus.boxes, vectors=corpus.vectors,
            ) is not None
    if not info.encoder:
        info.encoder = "cache" if encoder.misses == 0 else info.encoder
    return result


def refresh_sidecar(db: str | os.PathLike) -> bool:
    """Write (or remove, for an index with an ANN index) the region sidecar of a local index
    from its tables now; True when a current one is there afterwards. Called at the end of
    ``resedis index``."""
    root = Path(db)
    stamp = tables_stamp(root)
    if stamp is None:
        return False
    if not sidecar_allowed(root):  # ANN-sized: searches go through the ANN path
        remove_sidecar(root)
        return False
    if read_sidecar(root) is not None:  # already the tables' current state
        return True
    corpus = load_corpus(open_index(root), matrix_dtype="stored")
    return write_sidecar(root, stamp=stamp, versions=corpus.version, image_ids=corpus.image_ids, paths=corpus.paths,
                         region_image=corpus.region_image, boxes=corpus.boxes, vectors=corpus.vectors) is not None


__all__ = ["OneOffInfo", "oneoff_search", "rank_corpus", "refresh_sidecar", "text_encoder_for"]
