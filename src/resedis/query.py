"""The one query path: a :class:`QueryRequest` in, ranked hits with presence (and masks) out.

``resedis search``, the HTTP service (``/api/search``), ``resedis eval --db``, the
ablation and the Python API all answer queries through :class:`QueryEngine`, so the
pipeline choice (:mod:`resedis.pipelines`, ``owl`` by default: the exact region index of
:class:`resedis.search.Searcher`), the presence threshold (:mod:`resedis.thresholds`:
argument > stored calibration > checkpoint > default) and the masks (SAM, cached in the
index) are decided here and nowhere else.

>>> from resedis.query import QueryEngine, QueryRequest
>>> engine = QueryEngine("photos.db")                            # doctest: +SKIP
>>> answer = engine.run(QueryRequest("a red mug", top_k=10))      # doctest: +SKIP
>>> [(h.image_id, h.box, round(h.score, 3), h.present) for h in answer.result.hits]  # doctest: +SKIP

A request names *what* to find and how many; a field left ``None`` takes the engine's
:class:`~resedis.pipelines.PipelineConfig` value (``top_k``) or the library rule
(``pipeline``: :data:`~resedis.pipelines.DEFAULT_PIPELINE`; ``threshold``: the precedence
above). Later query features (parsed expressions, negative terms, query by example,
filters) are further fields of :class:`QueryRequest`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Sequence

from resedis.errors import ResedisError
from resedis.index.store import Index, open_index
from resedis.index.masks import attach_masks
from resedis.pipelines import DEFAULT_PIPELINE, PIPELINES, get_pipeline
from resedis.pipelines.base import Models, Pipeline, PipelineConfig, QueryText
from resedis.search import normalize_text
from resedis.thresholds import ThresholdChoice
from resedis.types import Dataset, QueryResult


@dataclass(frozen=True)
class QueryRequest:
    """One query.

    text: the description (non-empty); query_id: the result's id (None: the normalised
    text); pipeline: a name of :data:`resedis.pipelines.PIPELINES` (None: the default);
    top_k: hits kept (None: the engine's ``config.top_k``); threshold: presence threshold
    on the score (None: calibrated, else checkpoint, else the pipeline's default); masks:
    attach a SAM mask (COCO RLE) to every returned hit.
    """

    text: str
    query_id: str | None = None
    pipeline: str | None = None
    top_k: int | None = None
    threshold: float | None = None
    masks: bool = False


@dataclass
class QueryAnswer:
    """The answer to one :class:`QueryRequest`: ``result`` (hits ranked by score, ``present``
    decided by ``threshold``), the pipeline that produced it, and the threshold with its source."""

    result: QueryResult
    pipeline: str
    threshold: ThresholdChoice


def pipeline_name(name: str | None) -> str:
    """``name`` checked against the registry (None: the default pipeline)."""
    name = DEFAULT_PIPELINE if name is None else name
    if name not in PIPELINES:
        raise ResedisError(f"unknown pipeline {name!r}; available: {', '.join(PIPELINES)} (see `resedis pipelines`)")
    return name


class QueryEngine:
    """An opened index, the loaded models (a :class:`~resedis.pipelines.Models` pool, kept
    across queries) and the engine options (``config``: device, batch size, per-image NMS,
    re-ranking and crop options, segmenter; its ``top_k`` / ``threshold`` are the defaults
    of requests that leave them None).

    ``index``: an opened :class:`~resedis.index.Index`, or a local path / object-store URI
    opened with ``storage_options``.
    """

    def __init__(
        self,
        index: Index | str | os.PathLike,
        config: PipelineConfig | None = None,
        models: Models | None = None,
        *,
        storage_options: dict[str, str] | None = None,
    ):
        if isinstance(index, Index):
            if storage_options:
                raise ResedisError("storage_options apply when the index is given by its URI, not an opened Index")
            self.index = index
        else:
            self.index = open_index(index, storage_options=storage_options)
        self.config = config or PipelineConfig()
        self.config.validate()
        self.models = models or Models(self.config.device)

    # -- the pieces ----------------------------------------------------------------
    def pipeline(self, name: str | None = None, *, top_k: int | None = None, threshold: float | None = None) -> Pipeline:
        """Pipeline ``name`` (None: the default) over this index and model pool, with
        ``top_k`` / ``threshold`` replacing the config's where given."""
        changes = {k: v for k, v in (("top_k", top_k), ("threshold", threshold)) if v is not None}
        return get_pipeline(pipeline_name(name), self.index, replace(self.config, **changes), self.models)

    def resolve(self, pipeline: str | None = None, threshold: float | None = None) -> tuple[str, ThresholdChoice]:
        """(pipeline name, the presence threshold it would use and where that comes from)."""
        p = self.pipeline(pipeline, threshold=threshold)
        return p.name, p.resolved_choice()[1]

    def attach_masks(self, results: list[QueryResult]) -> list[QueryResult]:
        """``results`` with a SAM mask on every hit (``config.segmenter``, cached in the index's
        ``masks`` table); ``masks_ms`` (per query) added to each result's timings."""
        segmenter = self.models.get(self.config.segmenter)  # loading is not mask time
        t0 = time.perf_counter()
        results = attach_masks(results, self.index, segmenter, progress=self.config.progress)
        per_query = 1000 * (time.perf_counter() - t0) / max(1, len(results))
        return [replace(r, timings={**(r.timings or {}), "masks_ms": per_query}) for r in results]

    # -- answering -----------------------------------------------------------------
    def run(self, request: QueryRequest) -> QueryAnswer:
        """One query -> its answer."""
        return self.run_many([request])[0]

    def run_many(self, requests: Sequence[QueryRequest], dataset: Dataset | None = None) -> list[QueryAnswer]:
        """Several queries (answers in request order). Requests that share pipeline, top_k,
        threshold and masks run as one batch. With ``dataset``, only the dataset's images
        are searched and hit ids are the dataset's (the requests' ``query_id`` must be its
        query ids)."""
        if isinstance(requests, QueryRequest):
            raise TypeError("run_many takes a list of QueryRequest; use run() for one")
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            if not isinstance(req.text, str) or not req.text.strip():
                raise ResedisError(f"empty query {req.text!r}: describe the object to search for")
            key = (pipeline_name(req.pipeline), req.top_k, req.threshold, bool(req.masks))
            groups.setdefault(key, []).append(i)
        answers: list[QueryAnswer | None] = [None] * len(requests)
        for (name, top_k, threshold, masks), members in groups.items():
            pipeline = self.pipeline(name, top_k=top_k, threshold=threshold)
            queries = [QueryText(requests[i].query_id or normalize_text(requests[i].text), requests[i].text)
                       for i in members]
            results = pipeline.run(queries, dataset)
            if masks:
                results = self.attach_masks(results)
            for i, result in zip(members, results):
                answers[i] = QueryAnswer(result, name, pipeline.last_choice)
        return answers  # type: ignore[return-value]

    def run_dataset(self, dataset: Dataset, *, pipeline: str | None = None, top_k: int | None = None,
                    threshold: float | None = None, masks: bool = False) -> list[QueryResult]:
        """Every query of ``dataset`` (in order) -> its result; hit ids are the dataset's."""
        requests = [QueryRequest(q.expression, query_id=q.query_id, pipeline=pipeline, top_k=top_k,
                                 threshold=threshold, masks=masks) for q in dataset.queries]
        return [a.result for a in self.run_many(requests, dataset)]


def run_query(index: Index | str | os.PathLike, request: QueryRequest, models: Models | None = None,
              config: PipelineConfig | None = None) -> QueryAnswer:
    """One-off :meth:`QueryEngine.run` (give ``models`` to reuse loaded backends)."""
    return QueryEngine(index, config, models).run(request)


__all__ = ["QueryAnswer", "QueryEngine", "QueryRequest", "pipeline_name", "run_query"]
