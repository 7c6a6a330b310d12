"""``owl`` — the engine's corpus-scale OWL detection (the default pipeline).

One text encoding per query and one inner product with every stored region vector
(:mod:`resedis.search`); ``score`` = the detector's own sigmoid score. Cost per query:
one text-encoder forward + a (regions x D) matrix product; per image at index time: one
OWL forward (the region index every pipeline shares).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from resedis.pipelines.base import Pipeline, QueryText, finalize_hits, subset_dataset
from resedis.search import Searcher, search_dataset
from resedis.types import Dataset, QueryResult


@dataclass
class OwlPrepared:
    results: list[QueryResult]  # every hit with its score; ``present`` decided in finish


class OwlPipeline(Pipeline):
    name = "owl"
    description = "OWL region index: one text encoding + one inner product over all stored region vectors"
    cost = "query: 1 text forward + MIPS over regions; index: 1 OWL forward per image"
    model_scores = True  # scores are the index model's sigmoid scores: its checkpoint threshold applies

    def calibration(self) -> dict | None:
        entry = super().calibration()
        if entry is None and self.index.manifest.threshold is not None:
            # a threshold stored at the top level (the engine's own convention)
            return {"threshold": self.index.manifest.threshold}
        return entry

    def searcher(self) -> Searcher:
        """The exact MIPS engine over this index (from the model pool, per NMS / matrix option)."""
        return self.models.searcher(self.index, nms_iou=self.config.nms_iou, matrix_dtype=self.config.matrix_dtype)

    def warm_up(self, dataset: Dataset | None = None) -> None:
        self.searcher().corpus()  # text encoder + region matrix

    def owl_results(self, queries: list[QueryText], dataset: Dataset | None, top_k: int) -> list[QueryResult]:
        """Raw OWL hits (``top_k`` per query, present unset) in the order of ``queries``."""
        searcher = self.searcher()
        if dataset is not None:
            sub = subset_dataset(dataset, [q.query_id for q in queries])
            by_id = {r.query_id: r for r in search_dataset(searcher, sub, top_k=top_k, threshold=0.0,
                                                           batch_size=self.config.batch_size)}
            return [by_id[q.query_id] for q in queries]
        return searcher.search_many([q.text for q in queries], top_k=top_k, threshold=0.0,
                                    query_ids=[q.query_id for q in queries], batch_size=self.config.batch_size)

    def prepare(self, queries: list[QueryText], dataset: Dataset | None = None) -> OwlPrepared:
        return OwlPrepared(self.owl_results(queries, dataset, self.config.top_k))

    def finish(self, prepared: OwlPrepared, params: dict | None = None, threshold: float | None = None) -> list[QueryResult]:
        threshold = self.default_threshold if threshold is None else threshold
        return [
            replace(r, hits=finalize_hits([(h.score, h) for h in r.hits], self.config.top_k, threshold))
            for r in prepared.results
        ]
