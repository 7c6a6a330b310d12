"""The search engine as the service uses it: one model pool, one worker thread, a lock.

Searches run through the library's one query path, :class:`resedis.query.QueryEngine`
(pipeline choice, presence threshold, masks; ``owl`` — the region index — by default,
``default`` accepted as its alias), with one :class:`resedis.pipelines.Models` pool owned
by the service, so each model is loaded once. All model work (text encoding, the matrix product, reranking, masks) runs on a
dedicated single worker thread, never on the event loop, and under ``model_lock`` (also
taken when the index is swapped after an indexing job). So a slow query delays other
queries but never ``/healthz`` or image serving. The number of queries waiting is
bounded: beyond ``max_pending`` the service answers ``429`` instead of queueing without
limit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from resedis.by_example import ByExample, parse_box
from resedis.errors import DamagedIndexError, ResedisError
from resedis.filters import Filters
from resedis.index import open_index
from resedis.index.manifest import MANIFEST_NAME
from resedis.index.store import IMAGES
from resedis.pipelines import DEFAULT_PIPELINE, Models, PipelineConfig, list_pipelines
from resedis.query import QueryEngine, QueryRequest, group_by_image
from resedis.server.images import ImageCatalog, ImageRecord
from resedis.server.security import RequestRefused
from resedis.storage_errors import StorageError

log = logging.getLogger(__name__)

PIPELINE_ALIAS = "default"


def available_pipelines() -> dict[str, dict]:
    """``{name: {description, cost}}`` of the registered pipelines, the default first."""
    return {e.name: {"description": e.description, "cost": e.cost} for e in list_pipelines()}


@dataclass(frozen=True)
class SearchRequest:
    """A validated ``/api/search`` request (ranges already checked by the route)."""

    text: str
    top_k: int
    threshold: float | None
    pipeline: str
    masks: bool
    like_image_id: str | None = None  # query by example: a region of this indexed image ...
    box: str | None = None  # ... best matching this "x0,y0,x1,y1" box (pixels)
    filters: Filters | None = None
    group_by: str = "hit"  # "image": the answer adds ``groups`` (one per image)
    negative: tuple[str, ...] = ()
    explain: bool = False


class SearchService:
    """Owns the opened index, the model pool and the image catalog.

    ``db`` may not exist yet when ``allow_missing`` (indexing enabled): searches are
    then refused with ``409`` until an indexing job has created it. ``segmenter``: the
    model spec used for ``masks=true``; ``grounder``: the ``owl+rerank`` grounding model
    (None: the library defaults of :class:`~resedis.pipelines.PipelineConfig`).
    """

    def __init__(
        self,
        db: Path,
        *,
        device: str | None = None,
        segmenter: str | None = None,
        grounder: str | None = None,
        max_pending: int = 64,
        cache_entries: int = 256,
        allow_missing: bool = False,
    ):
        self.db = Path(db)
        self.device = device
        given = {k: v for k, v in (("segmenter", segmenter), ("grounder", grounder)) if v is not None}
        self.config = PipelineConfig(device=device, **given)
        self.config.validate()
        self.segmenter = self.config.segmenter
        self.grounder = self.config.grounder
        self.max_pending = max_pending
        self.cache_entries = cache_entries
        self.model_lock = threading.Lock()
        self.models = Models(device)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resedis-model")
        self._pending = 0
        self._cache: OrderedDict[tuple, dict] = OrderedDict()
        self._catalog: ImageCatalog = ImageCatalog([])
        self._catalog_version: tuple | None = None
        self._catalog_checked = 0.0
        self._catalog_lock = threading.Lock()
        self.engine: QueryEngine | None = None
        self.open(allow_missing=allow_missing)

    # -- lifecycle -------------------------------------------------------------
    def open(self, *, allow_missing: bool = False) -> None:
        """(Re)open the index and load its text encoder. Holds the model lock."""
        with self.model_lock:
            if allow_missing and not (self.db / MANIFEST_NAME).exists():
                self.engine = None
                return
            engine = QueryEngine(open_index(self.db), self.config, self.models)
            searcher = engine.pipeline("owl").searcher()  # load the text encoder now, not on the first query
            try:  # and what the first query reads: the corpus, the vector index into LanceDB's cache
                searcher.warm_up()
            except (ResedisError, OSError, RuntimeError) as exc:  # a damaged index: each search says so (503)
                log.warning("%s: not warmed up at start: %s", self.db, exc)
            self.engine = engine
            self._cache.clear()
            self._catalog_version = None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def index(self):
        """The opened index (None before an indexing job created it)."""
        return None if self.engine is None else self.engine.index

    @property
    def ready(self) -> bool:
        return self.engine is not None

    @property
    def searcher(self):
        """The index's :class:`resedis.search.Searcher` (the default ``owl`` pipeline's engine)."""
        return None if self.engine is None else self.engine.pipeline("owl").searcher()

    # -- images ---------------------------------------------------------------
    def catalog(self) -> ImageCatalog:
        """The image table as a catalog, re-read when the index changed (checked ≤ 1/s)."""
        if self.index is None:
            return self._catalog
        with self._catalog_lock:
            now = time.monotonic()
            if self._catalog_version is None or now - self._catalog_checked > 1.0:
                self._catalog_checked = now
                version = self.index.version()
                if version != self._catalog_version:
                    self._catalog = _read_catalog(self.index)
                    self._catalog_version = version
            return self._catalog

    # -- search ---------------------------------------------------------------
    async def search(self, request: SearchRequest) -> dict:
        """Run a query on the model thread; the API response body."""
        pipelines = available_pipelines()
        name = DEFAULT_PIPELINE if request.pipeline == PIPELINE_ALIAS else request.pipeline
        if name not in pipelines:
            hint = ""
            if " " in request.pipeline and request.pipeline.replace(" ", "+") in pipelines:
                hint = f" (a '+' in a URL query string means a space: send pipeline={request.pipeline.replace(' ', '%2B')})"
            raise RequestRefused(
                400, f"unknown pipeline {request.pipeline!r}; available: {', '.join(pipelines)} "
                f"({PIPELINE_ALIAS!r} = {DEFAULT_PIPELINE!r}){hint}"
            )
        if not self.ready:
            raise RequestRefused(409, "the index is empty: start indexing with POST /api/index first")
        if self._pending >= self.max_pending:
            raise RequestRefused(429, f"{self._pending} searches already waiting; retry shortly")
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            queued = time.perf_counter()
            return await loop.run_in_executor(self._executor, self._search_sync, request, name, queued)
        finally:
            self._pending -= 1

    def _search_sync(self, request: SearchRequest, name: str, queued: float) -> dict:
        with self.model_lock:
            started = time.perf_counter()
            engine = self.engine
            if engine is None:
                raise RequestRefused(409, "the index is empty: start indexing with POST /api/index first")
            try:
                like = None
                if request.like_image_id is not None:
                    box = None if request.box is None else parse_box(request.box, "box")
                    like = ByExample(image_id=request.like_image_id, box=box)
                    name = "owl"  # the region index answers queries by example
                elif request.box is not None:
                    raise ResedisError("box goes with like_image_id (find more like this region)")
                query = QueryRequest(request.text, pipeline=None if like else name, top_k=request.top_k,
                                     threshold=request.threshold, masks=request.masks, like=like,
                                     filters=request.filters, negative=request.negative, explain=request.explain)
                _, choice = engine.resolve(name, request.threshold)
                key = (request, name, engine.index.version(), choice.value)
                cached = self._cache.get(key)
                if cached is not None:
                    self._cache.move_to_end(key)
                    body = dict(cached)
                    body["timings"] = {**cached["timings"], "queue_ms": 1000 * (started - queued), "cached": True}
                    return body
                answer = engine.run(query)
            except (DamagedIndexError, StorageError) as exc:  # the server's index, not the request: 503
                raise RequestRefused(503, self.redact(str(exc))) from None
            except ResedisError as exc:
                raise RequestRefused(400, self.redact(str(exc))) from None
            body = self._response(request, name, answer.result, answer.threshold.value, answer.threshold.source)
            body["notes"] = [self.redact(n) for n in answer.notes]
            if answer.example is not None:
                body["example"] = {"image_id": request.like_image_id, **answer.example.to_json()}
            if request.filters is not None:
                body["filters"] = request.filters.validated().describe()
            if request.group_by == "image":
                body["groups"] = [{k: v for k, v in g.to_json().items() if k != "path"}
                                  for g in group_by_image(answer.result.hits)]
                for group in body["groups"]:
                    for hit in group["hits"]:
                        hit.pop("path", None)
            body["timings"]["queue_ms"] = 1000 * (started - queued)
            body["timings"]["total_ms"] = 1000 * (time.perf_counter() - started)
            self._cache[key] = body
            while len(self._cache) > self.cache_entries:
                self._cache.popitem(last=False)
            return body

    def redact(self, message: str) -> str:
        """``message`` without the indexed folders' and the index's server paths: a file under
        an indexed root becomes its image id (e.g. an image that no longer decodes), the
        index directory ``<index>``. Model-resolver messages keep their paths (they say
        where weights were looked for, for whoever runs the server)."""
        import os

        roots = set(self.catalog().roots)
        if self.index is not None:
            roots.add(str(self.index.manifest.root))
        for root in sorted({p for r in roots for p in (str(r), os.path.realpath(r))}, key=len, reverse=True):
            message = message.replace(root.rstrip("/") + "/", "").replace(root, "<indexed folder>")
        for db in sorted({str(self.db), os.path.realpath(self.db)}, key=len, reverse=True):
            message = message.replace(db, "<index>")
        return message

    def _response(self, request: SearchRequest, name: str, result, threshold: float, source: str) -> dict:
        catalog = self.catalog()
        hits, images = [], {}
        for hit in result.hits:
            data = hit.to_json()
            data.pop("path", None)  # server paths stay on the server; the id addresses the image
            hits.append(data)
            record = catalog.get(str(hit.image_id))
            if record is not None:
                images[record.image_id] = {"width": record.width, "height": record.height}
        return {
            "query": request.text or result.expression,
            "negative": list(request.negative),
            "pipeline": name,
            "top_k": request.top_k,
            "threshold": threshold,
            "threshold_source": source,
            "hits": hits,
            "images": images,
            "timings": {k: float(v) for k, v in (result.timings or {}).items()},
        }

    # -- stats ----------------------------------------------------------------
    def stats(self) -> dict:
        """Index statistics plus what the service offers (pipelines, default threshold)."""
        out: dict = {"ready": self.ready, "pipelines": available_pipelines(), "default_pipeline": DEFAULT_PIPELINE}
        if not self.ready:
            out.update({"images": 0, "regions": 0, "skipped": 0, "model": None, "calibration": None})
            return out
        stats = self.index.stats()
        stats.pop("root", None)  # server paths stay on the server
        out.update(stats)
        _, choice = self.engine.resolve()
        out["calibration"] = self.index.manifest.calibration
        out["threshold"] = choice.value
        out["threshold_source"] = choice.source  # argument / calibrated / checkpoint / default
        out["threshold_origin"] = self.redact(choice.origin)
        out["segmenter"] = self.segmenter
        out["grounder"] = self.grounder
        return out


def _read_catalog(index) -> ImageCatalog:
    table = index.read(IMAGES, ["image_id", "root", "path", "width", "height"]).to_pylist()
    return ImageCatalog(
        [ImageRecord(r["image_id"], r["path"], int(r["width"]), int(r["height"]), r["root"]) for r in table]
    )
