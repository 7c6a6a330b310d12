"""``owl+compose`` — compositional search on the exact region index.

Each query is parsed (:func:`resedis.expressions.parse`; ``--not`` terms are added as
excluded phrases, :func:`resedis.expressions.with_negatives`). A query with no cue (no
position, superlative, relation or negation: e.g. a plain noun phrase, or an expression
the parser cannot structure) is answered by ``owl`` itself: the same hits, boxes and
scores. Otherwise:

1. the whole expression and every phrase of the parse (subject, anchors, excluded
   phrases) are encoded with the index's text encoder in one batch. The subject term
   (rule 2) picks the images to compose (below) from every stored region: by the exact
   inner product (:meth:`Corpus.logits`), or, when the regions table has a vector index,
   by its candidate rows re-scored exactly (:meth:`resedis.search.Searcher.ranking_candidates`,
   as ``owl`` ranks: a library too large for a full scan). Every phrase is then scored
   exactly on the chosen images' regions (:meth:`Corpus.row_logits`): each phrase's
   value at a region is the detector's own logit for that phrase and box;
2. the subject term is the WHOLE expression's logit (today's ``owl`` score: it keeps
   the attributes and the detector's own reading of the sentence), except when the
   expression itself contains a negation, whose words the detector would read as a bag
   of words ("the circle that is not red" ~ "red circle"): then the parsed subject phrase;
3. per image, :func:`resedis.expressions.compose` adds the cue contributions (formulas in
   :mod:`resedis.expressions.fusion`; weights :class:`~resedis.expressions.FusionWeights`,
   the cue weights fitted by ``resedis calibrate``). Every contribution is <= 0, so a
   composed score never exceeds the ``owl`` score of the whole expression;
4. per-image NMS, ranking and presence exactly as ``owl`` (:func:`resedis.search.rank_hits`).

Speed: composition costs O(regions of the composed images), pairwise within each image.
Only the ``config.compose_images`` images (default 256) with the highest subject logit
(their best region; with a vector index, their best candidate region) are composed; a region of any other image is never returned for a
query with cues. The returned scores are exact for the images composed (composition
only looks inside an image). Below that many images, every image is composed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from resedis.errors import ResedisError
from resedis.expressions import FusionWeights, ParsedQuery, compose, parse, with_negatives
from resedis.pipelines.base import QueryText, finalize_hits
from resedis.pipelines.owl import OwlPipeline
from resedis.search import map_dataset_images, normalize_text, rank_hits, sigmoid
from resedis.types import Dataset, Hit, QueryResult

#: the cue weights ``resedis calibrate`` fits (the other FusionWeights fields stay at their defaults)
CUE_WEIGHTS = ("position", "position_relative", "size", "relation", "negation")
#: calibration grid: the four geometric cue weights scaled together x CUE_SCALES, negation weight x NEGATION_GRID.
#: The defaults come first: calibration keeps the first of equal-F1 settings, so a labelled set
#: without negated queries (every negation weight ties) keeps the default negation weight.
CUE_SCALES = (1.0, 0.5, 2.0)
NEGATION_GRID = (2.0, 0.0, 4.0, 8.0)


def subject_text(parsed: ParsedQuery) -> str | None:
    """None when the whole expression is the subject term (rule 2 of the module docstring),
    else the subject phrase's text (the expression itself contains a negation)."""
    inline = [n for n in parsed.negations if not n.words.startswith("--not")]
    return parsed.subject.text if inline else None


@dataclass
class ComposedQuery:
    """One query with cues: its parse and everything :func:`compose` needs, over the
    regions of its candidate images (local image rows ``0..k-1``)."""

    query: QueryText
    parsed: ParsedQuery  # subject replaced by the subject term's text
    logits: dict[str, np.ndarray]  # phrase text -> (r,) float64 logits
    boxes: np.ndarray  # (r, 4)
    region_image: np.ndarray  # (r,) local image rows
    sizes: np.ndarray  # (k, 2)
    images: list[tuple[object, str]]  # local row -> (image id, path)


@dataclass
class ComposePrepared:
    queries: list[QueryText]
    plain: dict[int, QueryResult] = field(default_factory=dict)  # query position -> owl result
    composed: dict[int, ComposedQuery] = field(default_factory=dict)


class ComposePipeline(OwlPipeline):
    name = "owl+compose"
    description = ("owl with the expression parsed: subject, anchor and excluded phrases each scored by the exact "
                   "inner product, combined per image with position / size / relation / negation priors")
    cost = "query: 1 text forward (all phrases in one batch) + MIPS + per-image composition; index: same as owl"
    model_scores = True  # plain queries are owl's scores; cues only lower them
    query_features = frozenset({"negative", "explain"})

    def calibration(self) -> dict | None:
        """Its own stored calibration; else the ``owl`` threshold (its scores are owl's for
        queries without cues, and cues only lower them), with the default cue weights."""
        entry = super(OwlPipeline, self).calibration()
        if entry is not None:
            return entry
        cal = self.index.manifest.calibration
        owl = cal.get("owl") if isinstance(cal, dict) else None
        if isinstance(owl, dict) and isinstance(owl.get("threshold"), (int, float)):
            return {"threshold": owl["threshold"]}
        return super().calibration()

    def default_params(self) -> dict:
        w = FusionWeights()
        return {k: getattr(w, k) for k in CUE_WEIGHTS}

    def param_grid(self) -> list[dict]:
        base = self.default_params()
        grid = []
        for scale in CUE_SCALES:
            for neg in NEGATION_GRID:
                p = {k: base[k] * scale for k in CUE_WEIGHTS if k != "negation"}
                p["negation"] = neg
                grid.append(p)
        return grid

    def weights(self, params: dict | None) -> FusionWeights:
        unknown = set(params or {}) - set(CUE_WEIGHTS)
        if unknown:
            raise ResedisError(f"owl+compose parameters are {', '.join(CUE_WEIGHTS)}; got {', '.join(sorted(unknown))}")
        return replace(FusionWeights(), **{**self.default_params(), **(params or {})})

    def parse(self, q: QueryText) -> ParsedQuery:
        return with_negatives(parse(q.text), list(q.negative))

    def prepare(self, queries: list[QueryText], dataset: Dataset | None = None) -> ComposePrepared:
        prepared = ComposePrepared(queries=list(queries))
        parsed = [self.parse(q) for q in queries]
        plain = [i for i, p in enumerate(parsed) if not p.has_cues]
        if plain:
            for i, r in zip(plain, self.owl_results([queries[i] for i in plain], dataset, self.config.top_k)):
                prepared.plain[i] = r
        todo = [i for i, p in enumerate(parsed) if p.has_cues]
        if not todo:
            return prepared
        searcher = self.searcher()
        corpus = searcher.corpus()
        ids: list = list(corpus.image_ids)
        valid = ~corpus.hidden
        allowed = searcher.region_filter(self.config.filters, corpus)  # metadata filters, before any top-k
        if allowed is not None:
            valid &= allowed
        if dataset is not None:
            mapping, _ = map_dataset_images(corpus, searcher.index.manifest.root, dataset)
            if not any(m is not None for m in mapping):
                raise ResedisError(f"index {searcher.index.path} and dataset {dataset.name!r} share no images; "
                                   "index the dataset's image folder")
            ids = mapping
            valid = valid & np.array([m is not None for m in mapping], dtype=bool)[corpus.region_image]
        # every text once: whole expressions, subjects, anchors, excluded phrases
        texts: dict[str, int] = {}
        terms: dict[int, tuple[ParsedQuery, str]] = {}
        for i in todo:
            for t in [normalize_text(queries[i].text), *parsed[i].phrases()]:
                texts.setdefault(t, len(texts))
            p = parsed[i]
            own = subject_text(p)
            if own is None:  # the whole expression is the subject term
                term = normalize_text(queries[i].text)
                p = replace(p, subject=replace(p.subject, text=term))
            else:
                term = own
            terms[i] = (p, term)
        names = list(texts)
        vectors = np.concatenate([searcher.encode(names[s:s + self.config.batch_size])
                                  for s in range(0, len(names), self.config.batch_size)])
        # Which images to compose: the subject term over every region -- through the vector
        # index when the table has one (exact logits of its candidates; a library too large
        # for a full scan), else exactly. Every phrase is then scored exactly, on the chosen
        # images' regions only.
        subjects = list(dict.fromkeys(term for _, term in terms.values()))
        subject_col = {term: j for j, term in enumerate(subjects)}
        sub_vectors = vectors[[texts[term] for term in subjects]]
        k = self.config.compose_images
        # With a vector index: each subject's candidate rows only (nothing of size N per query).
        found = searcher.ranking_candidates(corpus, sub_vectors, k, allowed) if dataset is None else None
        if found is None:  # exactly; a dataset run scores what the dataset holds (as owl does)
            subject_logits = searcher.ranking_logits(corpus, sub_vectors, k, allowed) if dataset is None \
                else corpus.logits(sub_vectors)
        n_images = len(corpus.image_ids)
        region_image = corpus.region_image
        for i in todo:
            p, term = terms[i]
            if found is not None:
                rows, s = found[subject_col[term]]
            else:
                rows, s = np.arange(len(corpus)), subject_logits[:, subject_col[term]]
            keep = valid[rows] & np.isfinite(s)
            best = np.full(n_images, -np.inf)
            np.maximum.at(best, region_image[rows[keep]], s[keep])
            finite = np.flatnonzero(np.isfinite(best))
            chosen = finite if len(finite) <= k else finite[np.argpartition(-best[finite], k - 1)[:k]]
            chosen = np.sort(chosen)
            local = np.full(n_images, -1, dtype=np.int64)
            local[chosen] = np.arange(len(chosen))
            regions = corpus.image_rows(chosen)
            regions = regions[valid[regions]]
            phrases = list(p.phrases())
            block = corpus.row_logits(regions, vectors[[texts[t] for t in phrases]])
            phrase_logits = {t: block[:, j].astype(np.float64) for j, t in enumerate(phrases)}
            prepared.composed[i] = ComposedQuery(
                query=queries[i], parsed=p, logits=phrase_logits,
                boxes=np.asarray(corpus.boxes[regions], dtype=np.float64),
                region_image=local[region_image[regions]], sizes=corpus.image_sizes[chosen],
                images=[(ids[r], corpus.paths[r]) for r in chosen],
            )
        return prepared

    def finish(self, prepared: ComposePrepared, params: dict | None = None, threshold: float | None = None) -> list[QueryResult]:
        threshold = self.default_threshold if threshold is None else threshold
        weights = self.weights(params)
        out = []
        for i, q in enumerate(prepared.queries):
            if i in prepared.plain:
                r = prepared.plain[i]
                hits = finalize_hits([(h.score, h) for h in r.hits], self.config.top_k, threshold)
                if q.explain:
                    hits = [replace(h, explain=plain_explain(h.score)) for h in hits]
                out.append(replace(r, hits=hits))
                continue
            c = prepared.composed[i]
            comp = compose(c.parsed, c.logits, c.boxes, c.region_image, c.sizes, weights)
            scored: list[tuple[float, Hit]] = []
            for region, value in rank_hits(comp.logits, c.region_image, c.boxes, self.config.top_k,
                                           self.config.nms_iou):
                image_id, path = c.images[int(c.region_image[region])]
                explain = None
                if q.explain:
                    explain = {label: float(v[region]) for label, v in comp.explain.items()}
                    explain["total"] = float(value)
                hit = Hit(image_id=image_id, box=tuple(float(v) for v in c.boxes[region]), score=0.0,
                          present=False, path=path, explain=explain)
                scored.append((float(sigmoid(value)), hit))
            out.append(QueryResult(q.query_id, q.text, finalize_hits(scored, self.config.top_k, threshold)))
        return out


def plain_explain(score: float) -> dict:
    """The breakdown of a hit with no cue: its logit is the subject term and the total."""
    s = min(max(float(score), 1e-300), 1 - 1e-16)
    logit = float(np.log(s) - np.log1p(-s))
    return {"subject": logit, "total": logit}
