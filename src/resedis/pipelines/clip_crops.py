"""``clip-crops`` — the ReSeDis paper's style of zero-shot baseline: proposals + frozen CLIP.

1. candidate boxes per image: the index's ``crops`` table (OWL objectness boxes or YOLOv8,
   each crop embedded once at index time by ``clip:``/``siglip:``), or with
   ``proposals="gt"`` the dataset's ground-truth boxes (an oracle, embedded at query time);
2. the expression is parsed (:mod:`resedis.pipelines.relations`): the crop encoder scores
   every crop against the *head* phrase (spatial words removed), ``s = cos(crop, head)``;
3. in the best :data:`RESCORE_IMAGES` images by raw ``s`` (and ``top_k``, when larger), each
   crop is re-scored from box geometry for spatial/comparative cues,
   ``s' = s + weight · Σ (prior - 1)`` (``weight`` fitted by ``resedis calibrate``);
4. score = the model's own logit applied to ``s'``: SigLIP ``sigmoid(scale·s' + bias)``
   (its trained probability); CLIP ``s'`` itself (CLIP is softmax-trained: ``scale·s'``
   has no absolute meaning, so the scale-free cosine is reported);
5. image score = its best crop; detections = the crops, ranked by score.

Cost per query: one text forward per phrase (head + anchors) + a (crops x E) product;
per image at index time: ``max_crops`` crop-encoder forwards (batched).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from resedis.errors import ResedisError
from resedis.index.crops import CROPS, CropCorpus, check_crop_weights, load_crops
from resedis.pipelines.base import Pipeline, QueryText, finalize_hits
from resedis.pipelines.proposals import embed_gt_crops
from resedis.pipelines.relations import (
    DEFAULT_WEIGHT,
    ParsedExpression,
    cue_priors,
    parse_expression,
)
from resedis.search import map_dataset_images
from resedis.boxes import visible
from resedis.types import Dataset, Hit, QueryResult

RESCORE_IMAGES = 100
WEIGHT_GRID = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)


@dataclass
class ImageCrops:
    row: int  # image row in the crop corpus
    crops: np.ndarray  # (n,) crop indices into the corpus
    raw: np.ndarray  # (n,) cosine with the head phrase
    penalty: np.ndarray  # (n,) Σ_cues (prior - 1) (<= 0)


@dataclass
class CropsPrepared:
    queries: list[QueryText]
    corpus: CropCorpus
    image_ids: list  # per corpus image row: the id hits carry (dataset id or index id)
    per_query: list[list[ImageCrops]] = field(default_factory=list)


class ClipCropsPipeline(Pipeline):
    name = "clip-crops"
    description = "paper-style baseline: proposals (OWL boxes / YOLOv8 / GT oracle) scored by CLIP/SigLIP crops + box-geometry relations"
    cost = "query: 1-3 text forwards + MIPS over crops; index: max_crops crop-encoder forwards per image"

    def __init__(self, index, config=None, models=None):
        super().__init__(index, config, models)
        self._gt_corpus: tuple[int, CropCorpus] | None = None

    @property
    def default_threshold(self) -> float:  # type: ignore[override]
        return 0.1 if self.encoder_family() == "siglip" else 0.25

    def default_params(self) -> dict:
        return {"weight": DEFAULT_WEIGHT}

    def param_grid(self) -> list[dict]:
        return [{"weight": w} for w in WEIGHT_GRID]

    def crop_model(self) -> str:
        """The crop encoder spec: the index's crop model, or ``config.crop_model`` for GT proposals."""
        from resedis.models.spec import canonical_spec

        entry = self.index.manifest.extra.get("crops") or {}
        asked = canonical_spec(self.config.crop_model) if self.config.crop_model else None
        if self.config.proposals == "index":
            if not entry.get("model"):
                load_crops(self.index)  # raises the explanatory error
            if asked is not None and asked != entry["model"]:
                raise ResedisError(
                    f"{self.index.path}: its crops were embedded with {entry['model']}, not {asked}; "
                    "omit --crop-model to use the index's crop model"
                )
            return str(entry["model"])
        if asked is None and not entry.get("model"):
            raise ResedisError("--proposals gt needs a crop encoder: pass --crop-model clip:SPEC (the index has no crops)")
        return asked or str(entry["model"])

    def calibration_context(self) -> dict:
        return {"crop_model": self.crop_model()}  # CLIP cosines and SigLIP probabilities differ in scale

    def encoder_family(self) -> str:
        try:
            return self.crop_model().partition(":")[0]
        except ResedisError:
            return "clip"

    @property
    def encoder(self):
        return self.models.get(self.crop_model())

    def corpus(self, dataset: Dataset | None) -> tuple[CropCorpus, list]:
        """(crop corpus, hit image id per corpus row; None = not searchable here)."""
        if self.config.proposals == "gt":
            if dataset is None:
                raise ResedisError("--proposals gt needs a dataset with ground truth (use it with eval / calibrate)")
            if self._gt_corpus is None or self._gt_corpus[0] != id(dataset):
                self._gt_corpus = (id(dataset), embed_gt_crops(dataset, self.encoder, progress=self.config.progress))
            corpus = self._gt_corpus[1]
            return corpus, list(corpus.image_ids)
        corpus = self.index_crops()
        if dataset is None:
            return corpus, list(corpus.image_ids)
        mapping, _ = map_dataset_images(corpus, self.index.manifest.root, dataset)
        if not any(m is not None for m in mapping):
            raise ResedisError(f"index {self.index.path} and dataset {dataset.name!r} share no images")
        return corpus, mapping

    def index_crops(self) -> CropCorpus:
        """The index's crop corpus, kept in the model pool until the index's tables change
        (a server or an ablation does not re-read the crops table for every query)."""
        if (self.index.manifest.extra.get("crops") or {}).get("model"):  # same spec, retrained crop weights?
            check_crop_weights(self.index.manifest, self.encoder, self.index.path)
        version = (self.index.version(), self.index.table_version(CROPS),
                   repr(self.index.manifest.extra.get("crops")))
        return self.models.cached(f"crops:{self.index.path}", version, lambda: load_crops(self.index))

    def warm_up(self, dataset: Dataset | None = None) -> None:
        self.encoder  # noqa: B018 - loads the crop encoder into the pool
        if self.config.proposals == "index":
            self.index_crops()
        elif dataset is not None:
            self.corpus(dataset)  # the GT oracle's crops: embedded once, like index-time crops

    def _scale_bias(self) -> tuple[float, float] | None:
        if self.encoder_family() != "siglip":
            return None
        return self.encoder.logit_params()

    def prepare(self, queries: list[QueryText], dataset: Dataset | None = None) -> CropsPrepared:
        corpus, ids = self.corpus(dataset)
        parsed = [parse_expression(q.text) for q in queries]
        phrases = sorted({p.head for p in parsed} | {a for p in parsed for a in p.anchors})
        emb = {}
        for start in range(0, len(phrases), self.config.batch_size):
            chunk = phrases[start : start + self.config.batch_size]
            emb.update(zip(chunk, np.asarray(self.encoder.encode_texts(chunk), np.float32)))
        allowed_rows = np.array([i is not None for i in ids], bool)
        allowed = allowed_rows[corpus.crop_image] if len(corpus) else np.zeros(0, bool)
        if len(corpus):  # a crop box with no visible area in its image is never a hit
            size = np.asarray(corpus.sizes, np.float64).reshape(-1, 2)[corpus.crop_image]
            allowed &= visible(corpus.boxes, size[:, 0], size[:, 1])
        by_row: dict[int, np.ndarray] = {}
        for row in np.unique(corpus.crop_image):
            by_row[int(row)] = np.flatnonzero((corpus.crop_image == row) & allowed)
        prepared = CropsPrepared(queries=queries, corpus=corpus, image_ids=ids)
        n_images = max(RESCORE_IMAGES, self.config.top_k)
        for p in parsed:
            cos = corpus.vectors @ emb[p.head] if len(corpus) else np.zeros(0, np.float32)
            cos = np.where(allowed, cos, -np.inf)
            best = np.full(len(corpus.image_ids), -np.inf)
            np.maximum.at(best, corpus.crop_image, cos)
            rows = [int(r) for r in np.argsort(-best, kind="stable")[:n_images] if np.isfinite(best[r])]
            prepared.per_query.append([self._image_crops(p, r, by_row[r], cos, corpus, emb) for r in rows])
        return prepared

    @staticmethod
    def _image_crops(p: ParsedExpression, row: int, crops: np.ndarray, cos: np.ndarray, corpus: CropCorpus, emb: dict) -> ImageCrops:
        boxes = corpus.boxes[crops]
        w, h = corpus.sizes[row]
        penalty = np.zeros(len(crops))
        for cue in p.cues:
            anchor = corpus.vectors[crops] @ emb[cue.anchor] if cue.anchor else None
            penalty += cue_priors(cue, boxes, w, h, anchor) - 1.0
        return ImageCrops(row=row, crops=crops, raw=cos[crops].astype(np.float64), penalty=penalty)

    def finish(self, prepared: CropsPrepared, params: dict | None = None, threshold: float | None = None) -> list[QueryResult]:
        weight = float({**self.default_params(), **(params or {})}["weight"])
        threshold = self.default_threshold if threshold is None else threshold
        sb = self._scale_bias()
        corpus = prepared.corpus
        out = []
        for q, images in zip(prepared.queries, prepared.per_query):
            scored: list[tuple[float, Hit]] = []
            for ic in images:
                s = ic.raw + weight * ic.penalty
                if sb is not None:
                    s = 1.0 / (1.0 + np.exp(-(sb[0] * s + sb[1])))
                image_id, path = prepared.image_ids[ic.row], corpus.paths[ic.row]
                for c, value in zip(ic.crops, s):
                    box = tuple(float(v) for v in corpus.boxes[c])
                    scored.append((float(value), Hit(image_id=image_id, box=box, score=0.0, present=False, path=path)))
            out.append(QueryResult(q.query_id, q.text, finalize_hits(scored, self.config.top_k, threshold)))
        return out
