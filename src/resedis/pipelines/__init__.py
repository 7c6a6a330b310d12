"""Named search pipelines: a plain ``name -> entry`` registry and one runner.

======================  =====================================================================
``owl`` (default)       the engine: corpus-scale OWL detection by one inner product
``owl+rerank``          ``owl``, then the top-K images re-scored by Grounding DINO on the whole
                        expression; documented score fusion (:mod:`resedis.pipelines.fusion`)
``clip-crops``          the paper-style baseline: proposals + frozen CLIP/SigLIP crop scores +
                        box-geometry relations (:mod:`resedis.pipelines.relations`)
======================  =====================================================================

>>> from resedis.pipelines import run_pipeline, PipelineConfig
>>> results = run_pipeline("owl+rerank", "photos.db", texts=["the mug left of the laptop"],
...                        config=PipelineConfig(rerank_k=10))        # doctest: +SKIP

Importing this module is cheap (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from resedis.errors import ResedisError
from resedis.pipelines.base import (
    DEFAULT_GROUNDER,
    DEFAULT_SEGMENTER,
    Models,
    Pipeline,
    PipelineConfig,
    QueryText,
    as_queries,
)
from resedis.types import Dataset, QueryResult

DEFAULT_PIPELINE = "owl"


@dataclass(frozen=True)
class PipelineEntry:
    name: str
    description: str
    cost: str
    cls: type


def _entries() -> dict[str, PipelineEntry]:
    from resedis.pipelines.clip_crops import ClipCropsPipeline
    from resedis.pipelines.owl import OwlPipeline
    from resedis.pipelines.rerank import RerankPipeline

    return {c.name: PipelineEntry(c.name, c.description, c.cost, c) for c in (OwlPipeline, RerankPipeline, ClipCropsPipeline)}


PIPELINES: dict[str, PipelineEntry] = _entries()


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
    from resedis.index.store import Index, open_index

    if isinstance(index, Index):
        if storage_options:
            raise ResedisError("storage_options apply when the index is given by its URI, not an opened Index")
    else:
        index = open_index(index, storage_options=storage_options)
    return PIPELINES[name].cls(index, config, models)


def run_pipeline(
    name: str,
    db,
    *,
    texts: Sequence[str] | None = None,
    dataset: Dataset | None = None,
    config: PipelineConfig | None = None,
    models: Models | None = None,
    masks: bool = False,
    segmenter: str = DEFAULT_SEGMENTER,
    storage_options: dict[str, str] | None = None,
) -> list[QueryResult]:
    """Run pipeline ``name`` over the index ``db`` (an Index, a local path or an object-store
    URI opened with ``storage_options``) for ``texts`` or every query of ``dataset`` (hit
    ids then are the dataset's). ``masks``: attach SAM masks to the returned hits (cached
    in the index's ``masks`` table, on the object store too)."""
    pipeline = get_pipeline(name, db, config, models, storage_options=storage_options)
    results = pipeline.run(as_queries(texts, dataset), dataset)
    if masks:
        from resedis.index.masks import attach_masks

        results = attach_masks(results, pipeline.index, pipeline.models.get(segmenter), progress=pipeline.config.progress)
    return results


__all__ = [
    "DEFAULT_PIPELINE",
    "DEFAULT_GROUNDER",
    "DEFAULT_SEGMENTER",
    "PIPELINES",
    "PipelineConfig",
    "PipelineEntry",
    "Pipeline",
    "Models",
    "QueryText",
    "as_queries",
    "get_pipeline",
    "list_pipelines",
    "run_pipeline",
]
