"""The search engine as the service uses it: one model, one worker thread, a lock.

All model work (text encoding, the matrix product) runs on a dedicated single worker
thread, never on the event loop, and under ``model_lock`` (also taken when the index is
swapped after an indexing job). So a slow query delays other queries but never
``/healthz`` or image serving. The number of queries waiting is bounded: beyond
``max_pending`` the service answers ``429`` instead of queueing without limit.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from resedis.errors import ResedisError
from resedis.server.images import ImageCatalog, ImageRecord
from resedis.server.security import RequestRefused

DEFAULT_PIPELINE = "default"
PIPELINES = {
    DEFAULT_PIPELINE: "OWL region index: exact maximum-inner-product search over every stored box "
    "(score = the detector's sigmoid score), per-image NMS",
}


@dataclass(frozen=True)
class SearchRequest:
    """A validated ``/api/search`` request (ranges already checked by the route)."""

    text: str
    top_k: int
    threshold: float | None
    pipeline: str
    masks: bool


class SearchService:
    """Owns the opened index, the Searcher (text encoder) and the image catalog.

    ``db`` may not exist yet when ``allow_missing`` (indexing enabled): searches are
    then refused with ``409`` until an indexing job has created it.
    """

    def __init__(
        self,
        db: Path,
        *,
        device: str | None = None,
        max_pending: int = 64,
        cache_entries: int = 256,
        allow_missing: bool = False,
    ):
        self.db = Path(db)
        self.device = device
        self.max_pending = max_pending
        self.cache_entries = cache_entries
        self.model_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resedis-model")
        self._pending = 0
        self._cache: OrderedDict[tuple, dict] = OrderedDict()
        self._catalog: ImageCatalog = ImageCatalog([])
        self._catalog_version: tuple | None = None
        self._catalog_checked = 0.0
        self._catalog_lock = threading.Lock()
        self.index = None
        self.searcher = None
        self.open(allow_missing=allow_missing)

    # -- lifecycle -------------------------------------------------------------
    def open(self, *, allow_missing: bool = False) -> None:
        """(Re)open the index and load its text encoder. Holds the model lock."""
        from resedis.index import open_index
        from resedis.index.store import MANIFEST_NAME
        from resedis.search import Searcher

        with self.model_lock:
            if allow_missing and not (self.db / MANIFEST_NAME).exists():
                self.index, self.searcher = None, None
                return
            index = open_index(self.db)
            encoder = None
            if self.searcher is not None and self.searcher.index.manifest.model == index.manifest.model:
                encoder = self.searcher.encoder  # same model: no reload
            self.searcher = Searcher(index, device=self.device, encoder=encoder)
            self.index = index
            self._cache.clear()
            self._catalog_version = None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return self.searcher is not None

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
        if request.pipeline not in PIPELINES:
            raise RequestRefused(
                400, f"unknown pipeline {request.pipeline!r}; available: {', '.join(sorted(PIPELINES))}"
            )
        if request.masks:
            raise RequestRefused(
                400, f"masks=true needs a pipeline with a segmenter; pipeline {request.pipeline!r} has none"
            )
        if not self.ready:
            raise RequestRefused(409, "the index is empty: start indexing with POST /api/index first")
        if self._pending >= self.max_pending:
            raise RequestRefused(429, f"{self._pending} searches already waiting; retry shortly")
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            queued = time.perf_counter()
            return await loop.run_in_executor(self._executor, self._search_sync, request, queued)
        finally:
            self._pending -= 1

    def _search_sync(self, request: SearchRequest, queued: float) -> dict:
        with self.model_lock:
            started = time.perf_counter()
            searcher = self.searcher
            if searcher is None:
                raise RequestRefused(409, "the index is empty: start indexing with POST /api/index first")
            threshold = searcher.threshold if request.threshold is None else request.threshold
            corpus_version = searcher.corpus().version  # reloads when the index changed
            key = (request, corpus_version, threshold)
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                body = dict(cached)
                body["timings"] = {**cached["timings"], "queue_ms": 1000 * (started - queued), "cached": True}
                return body
            try:
                result = searcher.search(request.text, top_k=request.top_k, threshold=threshold)
            except ResedisError as exc:
                raise RequestRefused(400, str(exc)) from None
            body = self._response(request, result, threshold)
            body["timings"]["queue_ms"] = 1000 * (started - queued)
            body["timings"]["total_ms"] = 1000 * (time.perf_counter() - started)
            self._cache[key] = body
            while len(self._cache) > self.cache_entries:
                self._cache.popitem(last=False)
            return body

    def _response(self, request: SearchRequest, result, threshold: float) -> dict:
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
            "query": request.text,
            "pipeline": request.pipeline,
            "top_k": request.top_k,
            "threshold": threshold,
            "hits": hits,
            "images": images,
            "timings": {k: float(v) for k, v in (result.timings or {}).items()},
        }

    # -- stats ----------------------------------------------------------------
    def stats(self) -> dict:
        """Index statistics plus what the service offers (pipelines, default threshold)."""
        out: dict = {"ready": self.ready, "pipelines": dict(PIPELINES), "default_pipeline": DEFAULT_PIPELINE}
        if not self.ready:
            out.update({"images": 0, "regions": 0, "skipped": 0, "model": None, "calibration": None})
            return out
        stats = self.index.stats()
        stats.pop("root", None)  # server paths stay on the server
        out.update(stats)
        manifest = self.index.manifest
        out["calibration"] = manifest.calibration
        out["threshold"] = self.searcher.threshold
        out["threshold_source"] = "calibrated" if manifest.threshold is not None else "default"
        return out


def _read_catalog(index) -> ImageCatalog:
    from resedis.index.store import IMAGES

    table = index.read(IMAGES, ["image_id", "root", "path", "width", "height"]).to_pylist()
    return ImageCatalog(
        [ImageRecord(r["image_id"], r["path"], int(r["width"]), int(r["height"]), r["root"]) for r in table]
    )
