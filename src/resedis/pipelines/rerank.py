"""``owl+rerank`` — OWL, then the top-K images re-scored by a grounding model.

1. ``owl`` retrieves ``max(top_k, 5·K)`` hits for the query (more, when those hits lie
   in fewer than K distinct images, until K images are found or the index is exhausted);
2. the first K distinct images of that ranking (``config.rerank_k``) are decoded and
   passed, with the WHOLE expression, to the grounding model (Grounding DINO through
   transformers ``AutoModelForZeroShotObjectDetection``, spec ``config.grounder``) —
   one forward per image, batched; no other image is ever given to it;
3. per image, OWL hits and grounded boxes are fused by :func:`resedis.pipelines.fusion.fuse_image`
   (``f = (1 - λ)·owl + λ·grounding``, λ fitted by ``resedis calibrate``);
4. detections come only from those K images, ranked by fused score.

Cost per query: the ``owl`` query plus K grounding-model forwards (and K image decodes);
nothing extra at index time.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np

from resedis.pipelines.base import QueryText, finalize_hits
from resedis.pipelines.fusion import FusionParams, fuse_image
from resedis.pipelines.owl import OwlPipeline
from resedis.types import Dataset, Hit, QueryResult

WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(11))
_IMAGE_CACHE = 64  # decoded images kept while preparing (queries share top images)


@dataclass
class ImageCandidates:
    """One reranked image of one query: its OWL hits and the grounding model's answer."""

    template: Hit  # image_id / path of the image (box/score are placeholders)
    owl_boxes: np.ndarray  # (M, 4) xyxy px
    owl_scores: np.ndarray  # (M,)
    gd_boxes: np.ndarray  # (G, 4) xyxy px
    gd_scores: np.ndarray  # (G,)


@dataclass
class RerankPrepared:
    queries: list[QueryText]
    images: list[list[ImageCandidates]] = field(default_factory=list)  # per query, OWL order


class RerankPipeline(OwlPipeline):
    name = "owl+rerank"
    description = "owl, then the top-K images re-scored by a grounding model (Grounding DINO) on the whole expression"
    cost = "query: owl + K grounding-model forwards (K = --rerank-k); index: same as owl"
    default_threshold = 0.3
    model_scores = False  # fused OWL + grounder scores: the OWL checkpoint's threshold does not apply

    def default_params(self) -> dict:
        return FusionParams().to_json()

    def param_grid(self) -> list[dict]:
        base = FusionParams()
        return [replace(base, weight=w).to_json() for w in WEIGHT_GRID]

    def calibration(self) -> dict | None:  # no fallback to the OWL top-level threshold
        return super(OwlPipeline, self).calibration()

    def calibration_context(self) -> dict:
        from resedis.models.spec import canonical_spec

        return {"grounder": canonical_spec(self.config.grounder)}

    @property
    def grounder(self):
        return self.models.get(self.config.grounder)

    def warm_up(self, dataset: Dataset | None = None) -> None:
        super().warm_up(dataset)
        self.grounder  # noqa: B018 - loads the grounding model into the pool

    def owl_candidates(self, queries: list[QueryText], dataset: Dataset | None, k: int) -> list[QueryResult]:
        """OWL hits per query covering at least ``k`` distinct images where the index has
        them: ``max(top_k, 5k)`` hits first, then 4x more for the queries whose hits crowd
        into fewer images (e.g. many boxes of one crowded photo), until done or exhausted."""
        n = max(self.config.top_k, 5 * k)
        results = self.owl_results(queries, dataset, n)
        todo = [i for i, r in enumerate(results) if len(r.hits) >= n and len({h.image_id for h in r.hits}) < k]
        while todo:
            n *= 4
            more = self.owl_results([queries[i] for i in todo], dataset, n)
            for i, r in zip(todo, more):
                results[i] = r
            todo = [i for i, r in zip(todo, more) if len(r.hits) >= n and len({h.image_id for h in r.hits}) < k]
        return results

    def prepare(self, queries: list[QueryText], dataset: Dataset | None = None) -> RerankPrepared:
        from tqdm.auto import tqdm

        from resedis.io.images import open_rgb

        k = self.config.rerank_k
        owl = self.owl_candidates(queries, dataset, k)
        grounder = self.grounder
        cache: OrderedDict[str, object] = OrderedDict()
        prepared = RerankPrepared(queries=queries)
        for q, res in tqdm(list(zip(queries, owl)), desc="rerank", unit="query", disable=not self.config.progress):
            order: list = []
            per_image: dict = {}
            for h in res.hits:
                if h.image_id not in per_image:
                    if len(order) == k:
                        continue
                    order.append(h.image_id)
                    per_image[h.image_id] = []
                per_image[h.image_id].append(h)
            images = []
            for image_id in order:
                path = per_image[image_id][0].path
                if path not in cache:
                    cache[path] = open_rgb(path)
                    if len(cache) > _IMAGE_CACHE:
                        cache.popitem(last=False)
                cache.move_to_end(path)
                images.append(cache[path])
            groundings = grounder.ground_pairs(images, [q.text] * len(images)) if images else []
            cands = []
            for image_id, g in zip(order, groundings):
                hits = per_image[image_id]
                cands.append(
                    ImageCandidates(
                        template=hits[0],
                        owl_boxes=np.array([h.box for h in hits], np.float64).reshape(-1, 4),
                        owl_scores=np.array([h.score for h in hits], np.float64),
                        gd_boxes=np.asarray(g.boxes, np.float64),
                        gd_scores=np.asarray(g.scores, np.float64),
                    )
                )
            prepared.images.append(cands)
        return prepared

    def finish(self, prepared: RerankPrepared, params: dict | None = None, threshold: float | None = None) -> list[QueryResult]:
        fp = FusionParams(**{**self.default_params(), **(params or {})})
        threshold = self.default_threshold if threshold is None else threshold
        out = []
        for q, cands in zip(prepared.queries, prepared.images):
            scored: list[tuple[float, Hit]] = []
            for c in cands:
                boxes, fused, _, _ = fuse_image(c.owl_boxes, c.owl_scores, c.gd_boxes, c.gd_scores, fp)
                for box, s in zip(boxes, fused):
                    scored.append((float(s), replace(c.template, box=tuple(float(v) for v in box), mask=None)))
            out.append(QueryResult(q.query_id, q.text, finalize_hits(scored, self.config.top_k, threshold)))
        return out
