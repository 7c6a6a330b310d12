"""Named search pipelines: a plain ``name -> entry`` registry and one runner.

======================  =====================================================================
``owl`` (default)       the engine: corpus-scale OWL detection by one inner product
``owl+rerank``          ``owl``, then the top-K images re-scored by Grounding DINO on the whole
                        expression; documented score fusion (:mod:`resedis.pipelines.fusion`)
``clip-crops``          the paper-style baseline: proposals + frozen CLIP/SigLIP crop scores +
                        box-geometry relations (:mod:`resedis.pipelines.relations`)
======================  =====================================================================

Queries are answered through :class:`resedis.query.QueryEngine`, which picks the
pipeline, resolves the presence threshold and attaches masks::

>>> from resedis.query import QueryEngine, QueryRequest
>>> engine = QueryEngine("photos.db", PipelineConfig(rerank_k=10))                # doctest: +SKIP
>>> engine.run(QueryRequest("the mug left of the laptop", pipeline="owl+rerank"))  # doctest: +SKIP

Importing this module is cheap (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass

from resedis.errors import ResedisError
from resedis.index.store import Index, open_index
from resedis.pipelines.base import (
    DEFAULT_GROUNDER,
    DEFAULT_SEGMENTER,
    PROPOSALS,
    Models,
    Pipeline,
    PipelineConfig,
    QueryText,
    as_queries,
)
from resedis.pipelines.clip_crops import ClipCropsPipeline
from resedis.pipelines.owl import OwlPipeline
from resedis.pipelines.rerank import RerankPipeline

DEFAULT_PIPELINE = "owl"


@dataclass(frozen=True)
class PipelineEntry:
    name: str
    description: str
    cost: str
    cls: type


PIPELINES: dict[str, PipelineEntry] = {
    c.name: PipelineEntry(c.name, c.description, c.cost, c) for c in (OwlPipeline, RerankPipeline, ClipCropsPipeline)
}


def list_pipelines() -> list[PipelineEntry]:
    """Every registered pipeline, the default first."""
    return list(PIPELINES.values())


def get_pipeline(name: str, index, config: PipelineConfig | None = None, models: Models | None = None, *,
                 storage_options: dict[str, str] | None = None) -> Pipeline:
    """Instantiate pipeline ``name`` over ``index``: an opened Index, or a local DB path or
    object-store URI (``s3://``, ``gs://``, ``az://``, ``file://``) opened with
    ``storage_options`` (see :mod:`resedis.index.fs`)."""
    if name not in PIPELINES:
        raise ResedisError(f"unknown pipeline {name!r}; available: {', '.join(PIPELINES)} (see `resedis pipelines`)")
    if isinstance(index, Index):
        if storage_options:
            raise ResedisError("storage_options apply when the index is given by its URI, not an opened Index")
    else:
        index = open_index(index, storage_options=storage_options)
    return PIPELINES[name].cls(index, config, models)


__all__ = [
    "DEFAULT_PIPELINE",
    "DEFAULT_GROUNDER",
    "DEFAULT_SEGMENTER",
    "PIPELINES",
    "PROPOSALS",
    "PipelineConfig",
    "PipelineEntry",
    "Pipeline",
    "Models",
    "QueryText",
    "as_queries",
    "get_pipeline",
    "list_pipelines",
]
