"""The FastAPI application: routes over :class:`SearchService`, the guards, the page.

Routes (OpenAPI at ``/docs`` and ``/openapi.json``):

* ``GET /`` the web page (static files under ``/static``), ``GET /docs`` the API
  reference (rendered from ``/openapi.json`` by a local script: no CDN), ``GET /healthz``;
* ``GET /api/search?q=&top_k=&threshold=&pipeline=&masks=`` ->
  ``{query, pipeline, top_k, threshold, threshold_source, hits: [Hit JSON], images: {id: {width, height}},
  timings}`` (``threshold_source``: argument / calibrated / checkpoint / default, see
  :mod:`resedis.thresholds`);
* ``GET /api/images/{image_id}`` and ``GET /api/images/{image_id}/thumb?size=``: image
  ids are POSIX paths relative to the indexed folder and contain ``/``; the route takes
  the rest of the URL path (Starlette ``path`` converter), so ids are sent as is, each
  segment percent-encoded (``encodeURIComponent`` per segment). ``/thumb`` is matched
  first: an id can never end in ``/thumb`` because indexed files have image extensions;
* ``GET /api/stats``; ``POST /api/index`` + ``GET /api/jobs/{id}`` (with
  ``--allow-index-root``).

Errors are JSON ``{"detail": message}`` with a 4xx status; request-validation errors
(422) add ``errors`` (field locations, without echoing the input).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from resedis.version import __version__
from resedis.server.config import ServeConfig
from resedis.server.engine import PIPELINE_ALIAS, SearchRequest, SearchService
from resedis.server.images import ThumbnailCache, browser_bytes
from resedis.server.jobs import JobManager
from resedis.server.security import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    RequestRefused,
    SecurityHeadersMiddleware,
    check_query_text,
    resolve_index_folder,
)

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
IMAGE_CACHE = "private, max-age=3600"


class IndexRequest(BaseModel):
    """Body of ``POST /api/index``."""

    folder: str = Field(..., min_length=1, max_length=4096, description="folder under an allowed index root")
    prune: bool = Field(False, description="remove entries of files that no longer exist")


class ErrorBody(BaseModel):
    """Every error answer: a message for the client."""

    detail: str


def _errors(*codes: int) -> dict:
    """OpenAPI ``responses`` entries for the 4xx answers a route can give."""
    meaning = {
        400: "bad request (e.g. an image id that could name a file, an empty query, an unknown pipeline)",
        401: "missing or wrong X-API-Key (only when the server runs with --api-key)",
        403: "refused (a file outside the indexed folders, indexing disabled or outside the allowed roots)",
        404: "unknown image or job id",
        409: "not possible now (index not built yet, an indexing job already running)",
        413: "request body too large",
        429: "too many searches waiting; retry shortly",
    }
    return {c: {"model": ErrorBody, "description": meaning[c]} for c in codes}


def _validation_message(exc: RequestValidationError) -> tuple[str, list]:
    errors = []
    for err in exc.errors():
        errors.append({"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")})
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    name = ".".join(str(p) for p in first["loc"] if p not in ("query", "body", "path")) or "request"
    return f"{name}: {first['msg']}", errors


def create_app(config: ServeConfig, *, service: SearchService | None = None) -> FastAPI:
    """Build the app. ``service`` (optional) reuses an already opened :class:`SearchService`
    (tests share one loaded model between apps); by default one is opened on ``config.db``."""
    if config.threads is not None:
        from resedis.threads import set_threads

        set_threads(config.threads)  # process-wide, before the models load and run
    owns_service = service is None
    if service is None:
        service = SearchService(
            config.db,
            device=config.device,
            segmenter=config.segmenter,
            grounder=config.grounder,
            max_pending=config.max_pending_searches,
            cache_entries=config.result_cache_entries,
            allow_missing=config.indexing_enabled,
        )
    jobs = JobManager(service, model=config.index_model, device=config.device)
    thumbs = ThumbnailCache(config.thumb_cache_bytes)
    thumb_lo, thumb_hi = config.thumb_sizes

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        if owns_service:  # a service passed in belongs to the caller
            service.close()

    app = FastAPI(
        title="resedis",
        version=__version__,
        description="Referring search and discovery over an indexed image collection.",
        lifespan=lifespan,
        redirect_slashes=False,  # a traversal attempt gets a 4xx, never a redirect to follow
        docs_url=None,  # FastAPI's /docs and /redoc load their scripts from a CDN: blank offline
        redoc_url=None,
    )
    app.state.service = service
    app.state.jobs = jobs
    app.state.thumbs = thumbs
    app.state.config = config

    @app.exception_handler(RequestRefused)
    async def refused(_request: Request, exc: RequestRefused):
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        message, errors = _validation_message(exc)
        return JSONResponse({"detail": message, "errors": errors}, status_code=422)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"content-security-policy": PAGE_CSP})

    @app.get("/docs", include_in_schema=False)
    async def docs():
        """The API reference, rendered from /openapi.json by a local script (works offline)."""
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html", headers={"content-security-policy": PAGE_CSP})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", tags=["service"], summary="Liveness: answers without touching the model")
    async def healthz():
        return {"status": "ok", "ready": service.ready, "version": __version__}

    @app.get("/api/search", tags=["search"], summary="Find every image region matching a description",
             responses=_errors(400, 401, 409, 429))
    async def api_search(
        q: str = Query(..., min_length=1, max_length=config.max_query_chars, description="the description"),
        top_k: int = Query(config.default_top_k, ge=1, le=config.max_top_k, description="hits to return"),
        threshold: float | None = Query(
            None, ge=0.0, le=1.0, description="presence threshold (default: the index's calibrated one, else the "
            "model checkpoint's presence_threshold (owl), else the pipeline's default; the answer's "
            "threshold_source says which)"
        ),
        pipeline: str = Query(
            PIPELINE_ALIAS, max_length=64, description="pipeline name (see /api/stats); 'default' = the index's engine"
        ),
        masks: bool = Query(False, description="attach a SAM mask (COCO RLE) to every hit; cached in the index"),
    ):
        check_query_text(q)
        request = SearchRequest(text=q, top_k=top_k, threshold=threshold, pipeline=pipeline, masks=masks)
        return await service.search(request)

    @app.get(
        "/api/images/{image_id:path}/thumb",
        tags=["images"],
        summary="A JPEG thumbnail (EXIF-oriented) fitted inside size x size",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, **_errors(400, 401, 403, 404)},
    )
    def api_thumb(image_id: str, size: int = Query(config.default_thumb_size, ge=thumb_lo, le=thumb_hi)):
        path = service.catalog().open_path(image_id)
        data = thumbs.get(path, size)
        return Response(data, media_type="image/jpeg", headers={"cache-control": IMAGE_CACHE})

    @app.get(
        "/api/images/{image_id:path}",
        tags=["images"],
        summary="The image file of an indexed image, by id",
        response_class=Response,
        responses={200: {"content": {"image/*": {}}}, **_errors(400, 401, 403, 404)},
    )
    def api_image(image_id: str):
        path = service.catalog().open_path(image_id)
        converted, media = browser_bytes(path)
        if converted is not None:
            return Response(converted, media_type=media, headers={"cache-control": IMAGE_CACHE})
        return FileResponse(path, media_type=media, headers={"cache-control": IMAGE_CACHE})

    @app.get("/api/stats", tags=["service"], summary="Index size, model, pipelines, calibration", responses=_errors(401))
    def api_stats():
        with_catalog = service.stats()
        with_catalog["indexing_enabled"] = config.indexing_enabled
        with_catalog["limits"] = {
            "max_query_chars": config.max_query_chars,
            "max_top_k": config.max_top_k,
            "default_top_k": config.default_top_k,
            "thumb_sizes": [thumb_lo, thumb_hi],
            "max_body_bytes": config.max_body_bytes,
        }
        return with_catalog

    @app.post("/api/index", tags=["indexing"], status_code=202, summary="Index (or update) a folder in the background",
              responses=_errors(400, 401, 403, 409, 413))
    def api_index(body: IndexRequest):
        if not config.indexing_enabled:
            raise RequestRefused(403, "indexing over HTTP is disabled; start the server with --allow-index-root DIR")
        folder = resolve_index_folder(body.folder, config.allow_index_roots)
        job = jobs.submit(folder, prune=body.prune)
        return jobs.to_json(job)

    @app.get("/api/jobs/{job_id}", tags=["indexing"], summary="State of an indexing job", responses=_errors(400, 401, 404))
    def api_job(job_id: str):
        return jobs.to_json(jobs.get(job_id))

    # Middleware, innermost first: key check, body limit, host check, headers on everything.
    if config.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=config.api_key)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=config.effective_trusted_hosts())
    app.add_middleware(SecurityHeadersMiddleware)
    return app
