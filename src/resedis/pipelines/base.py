"""What every named pipeline shares: configuration, the model pool, the two-phase run.

A pipeline answers a list of queries in two phases so calibration can re-use the
expensive part:

* ``prepare(queries, dataset)`` — model forwards (text encoding, vector search, the
  grounding model, crop scoring); returns an opaque "prepared" object;
* ``finish(prepared, params, threshold)`` — cheap: fuse / re-score with ``params``, rank,
  keep ``top_k`` detections per query, set ``present = score >= threshold``.

``run(...)`` = prepare + finish with the resolved parameters: ``config.threshold`` when
given, else the calibrated values stored in the index manifest for this pipeline
(``manifest.calibration[<pipeline>]``, see :mod:`resedis.calibrate`), else (``owl``) the
index model's checkpoint ``presence_threshold``, else the pipeline's documented defaults
(:mod:`resedis.thresholds`).

With a ``dataset``, only the dataset's images are searched and hit ``image_id`` are the
dataset's ids (as :func:`resedis.search.search_dataset`); without, the index's ids.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

from resedis.errors import ResedisError
from resedis.index.manifest import read_manifest
from resedis.models.spec import canonical_spec
from resedis.index.store import Index, open_index
from resedis.search import HIT_NMS_IOU, DEFAULT_TOP_K, Searcher, normalize_text
from resedis.search_corpus import DEFAULT_MATRIX_DTYPE, check_matrix_dtype
from resedis.thresholds import DEFAULT_THRESHOLD, ThresholdChoice, choose_threshold
from resedis.types import Dataset, Hit, QueryResult

DEFAULT_GROUNDER = "gdino:IDEA-Research/grounding-dino-tiny"
DEFAULT_SEGMENTER = "sam:facebook/sam-vit-base"
PROPOSALS = ("index", "gt")


@dataclass
class PipelineConfig:
    """Options shared by the pipelines.

    top_k: detections kept per query; threshold: presence threshold (None: calibrated or
    default); nms_iou: per-image NMS IoU of the ``owl`` hits (1 disables it);
    matrix_dtype: how the ``owl`` engine holds the region matrix (:mod:`resedis.search_corpus`);
    segmenter: the mask model spec (``masks``); rerank_k: images re-scored by the grounding model (``owl+rerank``);
    grounder: its spec; proposals: ``index`` (crops stored in the index) or ``gt`` (the
    dataset's ground-truth boxes, an oracle; needs a dataset) for ``clip-crops``;
    crop_model: the crop encoder for ``proposals="gt"`` when the index has no crops
    (with index crops it must match the index's crop model).
    """

    top_k: int = DEFAULT_TOP_K
    threshold: float | None = None
    device: str | None = None
    batch_size: int = 32
    nms_iou: float = HIT_NMS_IOU
    matrix_dtype: str = DEFAULT_MATRIX_DTYPE
    rerank_k: int = 10
    grounder: str = DEFAULT_GROUNDER
    proposals: str = "index"
    crop_model: str | None = None
    segmenter: str = DEFAULT_SEGMENTER
    progress: bool = False

    def validate(self) -> None:
        check_matrix_dtype(self.matrix_dtype)
        if not 0.0 < self.nms_iou <= 1.0:
            raise ResedisError(f"nms_iou must be in (0, 1] (1 disables NMS), got {self.nms_iou}")
        if self.top_k < 1:
            raise ResedisError(f"top_k must be >= 1, got {self.top_k}")
        if self.batch_size < 1:
            raise ResedisError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.rerank_k < 1:
            raise ResedisError(f"rerank_k must be >= 1, got {self.rerank_k}")
        if self.proposals not in PROPOSALS:
            raise ResedisError(f"proposals must be one of {', '.join(PROPOSALS)}, got {self.proposals!r}")


class Models:
    """The loaded backends of one run, shared by its pipelines (held explicitly by the
    caller, never a hidden global). ``put`` injects an already loaded backend."""

    def __init__(self, device: str | None = None):
        self.device = device
        self._backends: dict[str, Any] = {}
        self._searchers: dict[str, Any] = {}
        self._data: dict[str, tuple[Any, Any]] = {}

    def cached(self, name: str, version: Any, build):
        """``build()``'s value, kept under ``name`` while ``version`` is unchanged (e.g. an
        index's crop corpus, keyed by its table versions; rebuilt when they change)."""
        hit = self._data.get(name)
        if hit is not None and hit[0] == version:
            return hit[1]
        value = build()
        self._data[name] = (version, value)
        return value

    def get(self, spec: str):
        """The backend for ``spec`` (loaded on first use)."""
        key = canonical_spec(spec)
        if key not in self._backends:
            from resedis.models import load_model

            self._backends[key] = load_model(key, self.device)
        return self._backends[key]

    def put(self, spec: str, backend) -> None:
        self._backends[canonical_spec(spec)] = backend

    def searcher(self, index, *, nms_iou: float = HIT_NMS_IOU, matrix_dtype: str = DEFAULT_MATRIX_DTYPE) -> Searcher:
        """A :class:`resedis.search.Searcher` over ``index`` (one per index and options,
        the text encoder shared)."""
        key = (str(index.path), nms_iou, matrix_dtype)
        if key not in self._searchers:
            self._searchers[key] = Searcher(index, encoder=self.get(index.manifest.model), nms_iou=nms_iou,
                                            matrix_dtype=matrix_dtype)
        return self._searchers[key]


@dataclass(frozen=True)
class QueryText:
    query_id: str
    text: str


def as_queries(texts: Sequence[str] | None = None, dataset: Dataset | None = None,
               query_ids: Sequence[str] | None = None) -> list[QueryText]:
    """Texts (ids = normalised text, or ``query_ids``) or a dataset's queries -> QueryText list."""
    if dataset is not None and texts is None:
        return [QueryText(q.query_id, q.expression) for q in dataset.queries]
    if texts is None or isinstance(texts, str):
        raise ResedisError("give a list of query texts or a dataset")
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise ResedisError(f"empty query {t!r}: describe the object to search for")
    ids = list(query_ids) if query_ids is not None else [normalize_text(t) for t in texts]
    if len(ids) != len(texts):
        raise ResedisError(f"{len(ids)} query ids for {len(texts)} texts")
    return [QueryText(i, t) for i, t in zip(ids, texts)]


def subset_dataset(dataset: Dataset, query_ids: Sequence[str]) -> Dataset:
    """The dataset with only these queries (same images)."""
    keep = set(query_ids)
    return replace(dataset, queries=[q for q in dataset.queries if q.query_id in keep])


def finalize_hits(scored: list[tuple[float, Hit]], top_k: int, threshold: float) -> list[Hit]:
    """(score, hit template) pairs -> the ``top_k`` best hits, score set, ``present = score >= threshold``.
    Sort is by score descending, stable (ties keep input order)."""
    scored = sorted(scored, key=lambda sh: -sh[0])[:top_k]
    return [replace(h, score=float(s), present=bool(s >= threshold)) for s, h in scored]


class Pipeline:
    """Base class; subclasses set ``name``/``description``/``cost`` and implement
    ``prepare``/``finish`` (see the module docstring)."""

    name = ""
    description = ""
    cost = ""
    default_threshold = DEFAULT_THRESHOLD
    # True when ``score`` is the index model's own detector score (``owl``), so the
    # presence_threshold fitted with that checkpoint (resedis finetune / demo) applies.
    model_scores = False

    def __init__(self, index, config: PipelineConfig | None = None, models: Models | None = None):
        self.index = index if isinstance(index, Index) else open_index(index)
        self.config = config or PipelineConfig()
        self.config.validate()
        self.models = models or Models(self.config.device)
        self.last_timing: dict[str, float] = {}
        self.calibration_note: str | None = None  # why a stored calibration was not used
        self.last_choice: ThresholdChoice | None = None  # the threshold the last run() used

    # -- parameters ---------------------------------------------------------------
    def default_params(self) -> dict:
        return {}

    def param_grid(self) -> list[dict]:
        """Parameter settings :mod:`resedis.calibrate` tries (each with its best threshold)."""
        return [self.default_params()]

    def calibration_context(self) -> dict:
        """The models a calibration of this pipeline depends on besides the index's own
        (``owl+rerank``: the grounder; ``clip-crops``: the crop encoder). Stored with the
        fitted values; a stored entry made with other models is not used."""
        return {}

    def calibration(self) -> dict | None:
        """This pipeline's entry of ``manifest.calibration`` (re-read from disk), or None
        (also when it was fitted with other models than this configuration's, see
        :meth:`calibration_context`; ``calibration_note`` then says so)."""
        self.index.manifest = read_manifest(self.index.path)
        cal = self.index.manifest.calibration
        entry = cal.get(self.name) if isinstance(cal, dict) else None
        if not isinstance(entry, dict):
            return None
        stored = entry.get("context") if isinstance(entry.get("context"), dict) else {}
        current = self.calibration_context()
        differs = {k: (stored[k], v) for k, v in current.items() if k in stored and stored[k] != v}
        if differs:
            self.calibration_note = "stored calibration not used: fitted with " + ", ".join(
                f"{k} {a}, not {b}" for k, (a, b) in differs.items())
            return None
        return entry

    def resolved_choice(self) -> tuple[dict, ThresholdChoice]:
        """(params, threshold choice) by the one precedence of :mod:`resedis.thresholds`:
        argument > this pipeline's stored calibration > the index model's checkpoint
        ``presence_threshold`` (only when :attr:`model_scores`) > ``default_threshold``."""
        params = dict(self.default_params())
        entry = self.calibration()
        calibrated = None
        if entry is not None:
            params.update({k: v for k, v in (entry.get("params") or {}).items() if k in params})
            if isinstance(entry.get("threshold"), (int, float)):
                calibrated = float(entry["threshold"])
        choice = choose_threshold(explicit=self.config.threshold, calibrated=calibrated,
                                  model=self.index.manifest.model if self.model_scores else None,
                                  default=self.default_threshold,
                                  calibrated_origin=f"index manifest calibration of pipeline {self.name}")
        return params, choice

    def resolved(self) -> tuple[dict, float, str]:
        """(params, threshold, where it came from: "argument" / "calibrated" / "checkpoint" / "default")."""
        params, choice = self.resolved_choice()
        return params, choice.value, choice.source

    def uncalibrated_threshold(self) -> ThresholdChoice:
        """The threshold without the index's calibration (nor an argument): the checkpoint's
        ``presence_threshold`` when it applies, else ``default_threshold``."""
        return choose_threshold(explicit=None, calibrated=None,
                                model=self.index.manifest.model if self.model_scores else None,
                                default=self.default_threshold)

    # -- running ------------------------------------------------------------------
    def warm_up(self, dataset: Dataset | None = None) -> None:
        """Load this pipeline's models and in-memory corpora into ``self.models`` (once per
        pool), so that timed work (``run``, ablation latency) is per-query work only, as in
        a running server. Subclasses extend it."""

    def prepare(self, queries: list[QueryText], dataset: Dataset | None = None) -> Any:
        raise NotImplementedError

    def finish(self, prepared: Any, params: dict | None = None, threshold: float | None = None) -> list[QueryResult]:
        raise NotImplementedError

    def run(self, queries: list[QueryText], dataset: Dataset | None = None) -> list[QueryResult]:
        """prepare + finish with the resolved parameters; ``last_timing`` holds the seconds
        (after :meth:`warm_up`: model loading is not query time); ``last_choice`` the
        threshold used and its source."""
        params, choice = self.resolved_choice()
        self.last_choice = choice
        threshold = choice.value
        self.warm_up(dataset)
        t0 = time.perf_counter()
        prepared = self.prepare(queries, dataset)
        t1 = time.perf_counter()
        results = self.finish(prepared, params, threshold)
        t2 = time.perf_counter()
        self.last_timing = {"prepare_s": t1 - t0, "finish_s": t2 - t1, "queries": len(queries)}
        return results
