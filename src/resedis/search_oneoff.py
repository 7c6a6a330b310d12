"""A one-off search that starts fast: what ``resedis search`` runs (:func:`search_once`).

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
3. **Scoring** — the same exact product (or ANN candidates re-scored exactly), per-image
   NMS, ranking, presence threshold precedence and hit finalisation as the ``owl``
   pipeline of :class:`~resedis.query.QueryEngine` (:func:`rank_corpus`).

:func:`search_once` takes this path only where it gives the engine's answer: a local
index, the ``owl`` pipeline, no masks, and a manifest whose weights fingerprint is of the
current kind (it covers the weights, the processor and the tokenizer files, and must
match them now: :func:`resedis.index.manifest.check_weights`, before any cached vector is
used). Anything else (an object-store index, another pipeline, masks, an index built
before fingerprints covered the processor files) goes through a :class:`QueryEngine`.

>>> from resedis.query import QueryRequest
>>> from resedis.search_oneoff import search_once
>>> search_once("photos.db", QueryRequest("a red mug", top_k=5)).result.hits  # doctest: +SKIP
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
from resedis.index.ann_search import AnnSearch
from resedis.index.manifest import Manifest, check_model, check_weights, read_manifest
from resedis.index.store import open_index
from resedis.index.sidecar import read_sidecar, remove_sidecar, sidecar_allowed, tables_stamp, write_sidecar
from resedis.models import load_model, parse_spec
from resedis.models.fingerprint import VERSION as FINGERPRINT_VERSION, spec_weights_dir, weights_fingerprint
from resedis.models.text_light import LIGHT_VERSION, LightUnsupported, light_unsupported_reason, load_light_text_encoder
from resedis.pipelines.base import PipelineConfig, finalize_hits
from resedis.expressions import parse
from resedis.pipelines.compose import ComposePipeline
from resedis.pipelines.owl import OwlPipeline
from resedis.query import QueryAnswer, QueryEngine, QueryRequest, pipeline_name
from resedis.search import exact_logits, normalize_text, rank_hits, rank_rows, sigmoid
from resedis.search_cache import CachedTextEncoder, QueryCache, cache_key
from resedis.search_corpus import Corpus, load_corpus
from resedis.thresholds import ThresholdChoice, choose_threshold
from resedis.types import Hit, QueryResult

log = logging.getLogger(__name__)


@dataclass
class OneOffInfo:
    """How a one-off search was answered: ``path`` (``"fast"`` or ``"engine"``, and
    ``reason`` why not fast), ``encoder`` (``"cache"``, ``"light"`` or ``"transformers"``),
    ``regions`` (``"sidecar"`` or ``"lance"``), ``fallback`` (why the light encoder was not
    used, if it was not) and ``sidecar_written``."""

    path: str = ""
    reason: str | None = None
    encoder: str = ""
    regions: str = ""
    fallback: str | None = None
    sidecar_written: bool = False


def rank_corpus(corpus: Corpus, logits: np.ndarray | list, query_ids: list[str], texts: list[str], *, top_k: int,
                threshold: float, nms_iou: float) -> list[QueryResult]:
    """(N, Q) ``logits`` over ``corpus`` (or, per query, the ``(rows, logits)`` of its ANN
    candidates: :meth:`resedis.index.ann_search.AnnSearch.candidates`) -> one QueryResult per
    query: per-image NMS and the ranking of :meth:`resedis.search.Searcher.search_many`,
    then the ``owl`` pipeline's finalisation (:func:`resedis.pipelines.base.finalize_hits`:
    top ``top_k`` by score, ``present = score >= threshold``)."""
    results = []
    for j, text in enumerate(texts):
        if isinstance(logits, list):
            ranked = rank_rows(*logits[j], corpus, top_k, nms_iou)
        else:
            ranked = rank_hits(logits[:, j], corpus.region_image, corpus.boxes, top_k, nms_iou)
        scored = []
        for region, logit in ranked:
            img = int(corpus.region_image[region])
            score = float(sigmoid(logit))
            scored.append((score, Hit(image_id=corpus.image_ids[img], box=tuple(float(v) for v in corpus.boxes[region]),
                                      score=score, present=False, mask=None, path=corpus.paths[img])))
        results.append(QueryResult(query_id=query_ids[j], expression=text, hits=finalize_hits(scored, top_k, threshold)))
    return results


def owl_threshold(manifest: Manifest, explicit: float | None, pipeline: str = OwlPipeline.name) -> ThresholdChoice:
    """The presence threshold the ``owl`` pipeline uses on an index with this manifest
    (:meth:`resedis.pipelines.base.Pipeline.resolved_choice` with ``OwlPipeline.calibration``:
    argument > its stored calibration or the top-level one > checkpoint > default); named
    after ``pipeline`` (``owl+compose`` without a calibration of its own uses ``owl``'s)."""
    cal = manifest.calibration
    entry = cal.get(OwlPipeline.name) if isinstance(cal, dict) else None
    if not isinstance(entry, dict) and manifest.threshold is not None:
        entry = {"threshold": manifest.threshold}
    calibrated = None
    if isinstance(entry, dict) and isinstance(entry.get("threshold"), (int, float)):
        calibrated = float(entry["threshold"])
    return choose_threshold(explicit=explicit, calibrated=calibrated, model=manifest.model,
                            default=OwlPipeline.default_threshold,
                            calibrated_origin=f"index manifest calibration of pipeline {pipeline}")


def text_encoder_for(manifest: Manifest, db: Path, device: str | None = None, *, use_cache: bool = True,
                     info: OneOffInfo | None = None) -> CachedTextEncoder:
    """The cheapest exact text encoder for an index's model: cache, then light, then full.
    The caller has checked the weights (:func:`fast_path_refusal`)."""
    info = info if info is not None else OneOffInfo()
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


def plain_compose(db, request: QueryRequest, name: str) -> bool:
    """``owl+compose`` answering as ``owl`` does: an expression without cues (the parser
    finds no position, size, relation or negation), no negative terms, no explain, and no
    calibration of its own stored in a local index (it then uses the ``owl`` threshold).
    Its hits are then exactly ``owl``'s (tests/test_compose_pipeline.py)."""
    if name != ComposePipeline.name or request.negative or request.explain or request.like is not None:
        return False
    if "://" in str(db) or parse(request.text).has_cues:
        return False
    try:
        calibration = read_manifest(Path(db)).calibration or {}
    except (OSError, ResedisError):
        return False  # the engine reports it
    return ComposePipeline.name not in calibration


def fast_path_refusal(db, request: QueryRequest, storage_options: dict | None) -> str | None:
    """Why :func:`search_once` must use a :class:`QueryEngine` for this query (None: it need not)."""
    if storage_options or "://" in str(db):
        return "not a local index"
    name = pipeline_name(request.pipeline)
    if name != OwlPipeline.name and not plain_compose(db, request, name):
        return f"pipeline {name!r}"
    if request.masks:
        return "masks asked for"
    if request.like is not None:
        return "a query by example"
    if request.filters is not None:
        return "filters"
    return None


def search_once(
    db: str | os.PathLike,
    request: QueryRequest,
    config: PipelineConfig | None = None,
    *,
    model: str | None = None,
    storage_options: dict[str, str] | None = None,
    use_cache: bool = True,
    info: OneOffInfo | None = None,
) -> QueryAnswer:
    """One query in a fresh process: :meth:`QueryEngine.run`'s answer for ``request`` over
    the index ``db`` (``model``: refuse unless the index was built with it), through the
    fast path where it gives that answer (see the module docstring), else through a
    :class:`QueryEngine`. ``info`` (optional) is filled with how it was answered."""
    info = info if info is not None else OneOffInfo()
    config = config or PipelineConfig()
    config.validate()
    if request.like is None and (not isinstance(request.text, str) or not request.text.strip()):
        raise ResedisError(f"empty query {request.text!r}: describe the object to search for")
    reason = fast_path_refusal(db, request, storage_options)
    manifest = None
    if reason is None:
        root = Path(db)
        if not root.is_dir():
            raise ResedisError(f"{db}: no such index directory; build one with: resedis index IMAGES_DIR --db {db}")
        manifest = read_manifest(root)
        check_model(manifest, model, root)
        check_weights(manifest, None, root)  # as the engine would: refuse retrained weights first
        if manifest.weights_fingerprint != weights_fingerprint(spec_weights_dir(manifest.model), FINGERPRINT_VERSION):
            reason = "the index's weights fingerprint predates processor files (the engine checks its preprocessing record)"
    if reason is not None:
        info.path, info.reason = "engine", reason
        engine = QueryEngine(open_index(db, model=model, storage_options=storage_options), config)
        return engine.run(request)
    info.path = "fast"
    return _answer_fast(root, manifest, request, config, use_cache, info)


def _answer_fast(root: Path, manifest: Manifest, request: QueryRequest, config: PipelineConfig, use_cache: bool,
                 info: OneOffInfo) -> QueryAnswer:
    top_k = config.top_k if request.top_k is None else request.top_k
    if top_k < 1:
        raise ResedisError(f"top_k must be >= 1, got {top_k}")
    choice = owl_threshold(manifest, config.threshold if request.threshold is None else request.threshold,
                           pipeline_name(request.pipeline))
    encoder = text_encoder_for(manifest, root, config.device, use_cache=use_cache, info=info)
    query_id = request.query_id or normalize_text(request.text)
    t0 = time.perf_counter()
    sidecar = read_sidecar(root)
    if sidecar is not None:
        info.regions = "sidecar"
        corpus = Corpus(version=sidecar.versions, image_ids=sidecar.image_ids, paths=sidecar.paths,
                        region_image=sidecar.region_image, boxes=sidecar.boxes, vectors=sidecar.vectors,
                        matrix_dtype="stored", hidden=sidecar.hidden, storage=sidecar.storage, step=sidecar.step,
                        bias=sidecar.bias, dim=manifest.vector_dim)
        ann = None
    else:
        info.regions = "lance"
        stamp = tables_stamp(root)  # before the tables are read: a commit meanwhile -> not written
        index = open_index(root)
        corpus = load_corpus(index, "stored")
        ann = AnnSearch(index)
        if stamp is not None:
            info.sidecar_written = write_sidecar(
                root, stamp=stamp, versions=corpus.version, image_ids=corpus.image_ids, paths=corpus.paths,
                region_image=corpus.region_image, boxes=corpus.boxes, vectors=corpus.vectors, hidden=corpus.hidden,
                storage=corpus.storage, step=corpus.step, bias=corpus.bias,
            ) is not None
    t1 = time.perf_counter()
    queries = encoder.encode_texts([normalize_text(request.text)])
    t2 = time.perf_counter()
    logits = ann.candidates(corpus, queries, top_k) if ann is not None else None  # ranked as the Searcher does
    if logits is None:
        logits = exact_logits(corpus, queries)  # as the Searcher: hidden and non-finite rows never answer
    result = rank_corpus(corpus, logits, [query_id], [request.text], top_k=top_k, threshold=choice.value,
                         nms_iou=config.nms_iou)[0]
    result.timings = {"encode_ms": 1000 * (t2 - t1), "search_ms": 1000 * (time.perf_counter() - t2 + t1 - t0)}
    if not info.encoder:
        info.encoder = "cache" if encoder.misses == 0 else info.encoder
    return QueryAnswer(result, pipeline_name(request.pipeline), choice)


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
                         region_image=corpus.region_image, boxes=corpus.boxes, vectors=corpus.vectors,
                         hidden=corpus.hidden, storage=corpus.storage, step=corpus.step, bias=corpus.bias) is not None


__all__ = ["OneOffInfo", "fast_path_refusal", "owl_threshold", "rank_corpus", "refresh_sidecar", "search_once",
           "text_encoder_for"]
