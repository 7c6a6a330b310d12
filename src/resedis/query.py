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
from dataclasses import dataclass, field, replace
from typing import Sequence

from resedis.by_example import ByExample, ExampleQuery, example_query
from resedis.errors import ResedisError
from resedis.filters import Filters
from resedis.index.store import Index, open_index
from resedis.index.masks import attach_masks
from resedis.pipelines import DEFAULT_PIPELINE, PIPELINES, get_pipeline
from resedis.pipelines.base import Models, Pipeline, PipelineConfig, QueryText
from resedis.search import normalize_text
from resedis.thresholds import ThresholdChoice
from resedis.types import Dataset, Hit, QueryResult

#: the pipeline that answers queries by example (a vector over the region index)
EXAMPLE_PIPELINE = "owl"


@dataclass(frozen=True)
class QueryRequest:
    """One query.

    text: the description (non-empty); query_id: the result's id (None: the normalised
    text); pipeline: a name of :data:`resedis.pipelines.PIPELINES` (None: the default);
    top_k: hits kept (None: the engine's ``config.top_k``); threshold: presence threshold
    on the score (None: calibrated, else checkpoint, else the pipeline's default); masks:
    attach a SAM mask (COCO RLE) to every returned hit.

    like: query by example instead of ``text`` (:class:`~resedis.by_example.ByExample`: a
    region of an indexed image, or of an image file; answered by the ``owl`` region index,
    see :mod:`resedis.by_example`); filters: search only the images passing these metadata
    filters, applied before the top-k is cut (:class:`~resedis.filters.Filters`).
    negative: texts to exclude (each
    suppresses regions that match it, see ``docs/queries.md``; pipelines that take them:
    ``owl+compose``); explain: each hit carries ``explain`` (the subject logit and each cue's
    contribution; ``owl+compose``).
    """

    text: str = ""
    query_id: str | None = None
    pipeline: str | None = None
    top_k: int | None = None
    threshold: float | None = None
    masks: bool = False
    like: ByExample | None = None
    filters: Filters | None = None
    negative: tuple[str, ...] = ()
    explain: bool = False


@dataclass
class QueryAnswer:
    """The answer to one :class:`QueryRequest`: ``result`` (hits ranked by score, ``present``
    decided by ``threshold``), the pipeline that produced it, and the threshold with its source."""

    result: QueryResult
    pipeline: str
    threshold: ThresholdChoice
    #: what the caller should know about an answer (e.g. filters that match no image)
    notes: list[str] = field(default_factory=list)
    #: the resolved example region of a query by example
    example: ExampleQuery | None = None


def pipeline_name(name: str | None) -> str:
    """``name`` checked against the registry (None: the default pipeline)."""
    name = DEFAULT_PIPELINE if name is None else name
    if name not in PIPELINES:
        raise ResedisError(f"unknown pipeline {name!r}; available: {', '.join(PIPELINES)} (see `resedis pipelines`)")
    return name


def check_features(request: QueryRequest, pipeline: str) -> None:
    """A request's ``negative`` / ``explain`` need a pipeline that honours them."""
    if isinstance(request.negative, str):
        raise ResedisError("QueryRequest.negative is a list of texts, e.g. ['a hat'], not one string")
    asked = [f for f, on in (("negative", bool(request.negative)), ("explain", request.explain)) if on]
    missing = [f for f in asked if f not in PIPELINES[pipeline].cls.query_features]
    if missing:
        able = [n for n, e in PIPELINES.items() if set(missing) <= e.cls.query_features]
        raise ResedisError(f"pipeline {pipeline} does not support {' / '.join(missing)}; use "
                           f"{' or '.join(able) or 'another pipeline'}")


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
    def pipeline(self, name: str | None = None, *, top_k: int | None = None, threshold: float | None = None,
                 filters: Filters | None = None) -> Pipeline:
        """Pipeline ``name`` (None: the default) over this index and model pool, with
        ``top_k`` / ``threshold`` / ``filters`` replacing the config's where given."""
        changes = {k: v for k, v in (("top_k", top_k), ("threshold", threshold), ("filters", filters)) if v is not None}
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
        answers: list[QueryAnswer | None] = [None] * len(requests)
        examples: list[int] = []
        for i, req in enumerate(requests):
            filters = self.check_filters(req)
            if req.like is not None:
                if not isinstance(req.like, ByExample):
                    raise ResedisError(f"like must be a resedis.by_example.ByExample, got {type(req.like).__name__}")
                if dataset is not None:
                    raise ResedisError("query by example searches the index, not a dataset run")
                if req.text and req.text.strip():
                    raise ResedisError("give a text or an example region (like), not both")
                if req.pipeline is not None and pipeline_name(req.pipeline) != EXAMPLE_PIPELINE:
                    raise ResedisError(f"query by example is answered by the {EXAMPLE_PIPELINE} pipeline (the region "
                                       f"index), not {req.pipeline}; leave the pipeline unset")
                examples.append(i)
                continue
            if not isinstance(req.text, str) or not req.text.strip():
                raise ResedisError(f"empty query {req.text!r}: describe the object to search for")
            key = (pipeline_name(req.pipeline), req.top_k, req.threshold, bool(req.masks), filters)
            check_features(req, key[0])
            if filters is not None and not PIPELINES[key[0]].cls.supports_filters:
                able = [n for n, e in PIPELINES.items() if e.cls.supports_filters]
                raise ResedisError(f"pipeline {key[0]} does not support filters; use {' or '.join(able)}")
            groups.setdefault(key, []).append(i)
        for i in examples:
            answers[i] = self.run_example(requests[i])
        for (name, top_k, threshold, masks, filters), members in groups.items():
            pipeline = self.pipeline(name, top_k=top_k, threshold=threshold, filters=filters)
            queries = [QueryText(requests[i].query_id or normalize_text(requests[i].text), requests[i].text,
                                 tuple(requests[i].negative), bool(requests[i].explain))
                       for i in members]
            results = pipeline.run(queries, dataset)
            if masks:
                results = self.attach_masks(results)
            notes = self.filter_notes(filters)
            for i, result in zip(members, results):
                answers[i] = QueryAnswer(result, name, pipeline.last_choice, notes=list(notes))
        return answers  # type: ignore[return-value]

    def check_filters(self, request: QueryRequest) -> Filters | None:
        """The request's filters, validated (None when absent or empty)."""
        if request.filters is None:
            return None
        if not isinstance(request.filters, Filters):
            raise ResedisError(f"filters must be a resedis.filters.Filters, got {type(request.filters).__name__}")
        filters = request.filters.validated()
        return filters if filters.active else None

    def filter_notes(self, filters: Filters | None) -> list[str]:
        """A note when ``filters`` match no indexed image (the answer is then empty)."""
        if filters is None:
            return []
        searcher = self.pipeline(EXAMPLE_PIPELINE).searcher()
        meta = searcher.image_meta()
        if filters.image_mask(meta).any():
            return []
        return [f"the filters ({filters.describe()}) match none of the {len(meta.image_ids)} indexed images"]

    def run_example(self, request: QueryRequest) -> QueryAnswer:
        """A query by example (``request.like``): the example region's class embedding,
        searched over the region index by the ``owl`` pipeline's exact inner product."""
        filters = self.check_filters(request)
        pipeline = self.pipeline(EXAMPLE_PIPELINE, top_k=request.top_k, threshold=request.threshold)
        _, choice = pipeline.resolved_choice()
        searcher = pipeline.searcher()
        example = request.like.validated()
        resolved = example_query(searcher, example)
        label = example.label()
        result = searcher.search_vectors(resolved.vector[None], [label], top_k=pipeline.config.top_k,
                                         threshold=choice.value, query_ids=[request.query_id or label],
                                         filters=filters)[0]
        if request.masks:
            result = self.attach_masks([result])[0]
        return QueryAnswer(result, EXAMPLE_PIPELINE, choice, notes=self.filter_notes(filters), example=resolved)

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


@dataclass
class ImageGroup:
    """The hits of one image (results by image): ``score`` the best hit's, ``present``
    whether any hit is, ``hits`` in their ranking order."""

    image_id: object
    path: str | None
    score: float
    present: bool
    hits: list[Hit]

    def to_json(self) -> dict:
        out = {"image_id": self.image_id, "score": self.score, "present": self.present,
               "hits": [h.to_json() for h in self.hits]}
        if self.path is not None:
            out["path"] = self.path
        return out


def group_by_image(hits: Sequence[Hit]) -> list[ImageGroup]:
    """Ranked hits -> one :class:`ImageGroup` per image, images in the order of their best
    (first) hit, each hit once, in its ranking order within its image."""
    groups: dict[str, ImageGroup] = {}
    for hit in hits:
        key = str(hit.image_id)
        group = groups.get(key)
        if group is None:
            groups[key] = ImageGroup(hit.image_id, hit.path, float(hit.score), bool(hit.present), [hit])
        else:
            group.hits.append(hit)
            group.score = max(group.score, float(hit.score))
            group.present = group.present or bool(hit.present)
    return list(groups.values())


__all__ = ["EXAMPLE_PIPELINE", "ImageGroup", "QueryAnswer", "QueryEngine", "QueryRequest", "group_by_image",
           "pipeline_name", "run_query"]
