"""Which presence threshold decides ``present`` — one rule for search, pipelines, eval,
the service and ``resedis stats``.

First that applies:

1. ``argument``   — an explicit threshold (``--threshold``, ``threshold=``, the API's
   ``threshold`` parameter);
2. ``calibrated`` — the index manifest's calibration for that pipeline (``resedis
   calibrate``; for ``owl`` also the top-level ``calibration.threshold``);
3. ``checkpoint`` — ``presence_threshold`` in the checkpoint metadata
   (``resedis_checkpoint.json``, formerly ``resedis.json``) of the index's model
   directory: a ``resedis finetune`` output or the bundled model (spec ``demo``). Only
   for pipelines whose score IS that model's detector score (``owl``): the threshold was
   fitted on exactly those scores (validation data, see ``threshold_source`` there);
4. ``default``    — the pipeline's documented default (``owl``: :data:`DEFAULT_THRESHOLD`).

>>> from resedis.thresholds import choose_threshold
>>> choose_threshold(explicit=None, calibrated=None, model=None).source
'default'
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from resedis.errors import ResedisError
from resedis.models.checkpoint import checkpoint_meta_path
from resedis.models.spec import parse_spec

# OWL-ViT's published examples keep detections with sigmoid score >= 0.1.
DEFAULT_THRESHOLD = 0.1
SOURCES = ("argument", "calibrated", "checkpoint", "default")


@dataclass(frozen=True)
class ThresholdChoice:
    """A presence threshold, which level of the precedence gave it (``source``, one of
    :data:`SOURCES`) and, in words, where it was read (``origin``)."""

    value: float
    source: str
    origin: str

    def describe(self) -> str:
        return f"{self.value:.4g} ({self.source}: {self.origin})"

    def to_json(self) -> dict:
        return {"threshold": self.value, "threshold_source": self.source, "threshold_origin": self.origin}


def checkpoint_threshold(model: str | None) -> tuple[float, Path] | None:
    """``(presence_threshold, path of the metadata file)`` of a model spec whose weights are a
    local directory (``owlv2:/dir``, ``demo``) holding checkpoint metadata
    (``resedis_checkpoint.json``, or the pre-rename ``resedis.json``) with a
    ``presence_threshold``; None for hub models, directories without the file, or a file
    whose ``presence_threshold`` is null/absent. A malformed file is a ResedisError naming
    it and the field."""
    if not model:
        return None
    spec = parse_spec(model)
    if not spec.local:
        return None
    meta = checkpoint_meta_path(Path(spec.source).expanduser())  # resedis_checkpoint.json, or the old resedis.json
    if meta is None:
        return None
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResedisError(f"{meta}: unreadable checkpoint metadata ({exc}); fix or remove it, or pass --threshold") from None
    if not isinstance(data, dict):
        raise ResedisError(f"{meta}: checkpoint metadata must be a JSON object")
    value = data.get("presence_threshold")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ResedisError(f"{meta}: field 'presence_threshold' must be a finite number >= 0, got {value!r}")
    return float(value), meta


def choose_threshold(
    *,
    explicit: float | None,
    calibrated: float | None,
    model: str | None,
    default: float = DEFAULT_THRESHOLD,
    calibrated_origin: str = "index manifest calibration",
) -> ThresholdChoice:
    """Apply the precedence of the module docstring. ``model``: the spec whose checkpoint
    threshold may apply (None when the pipeline's scores are not that model's own)."""
    if explicit is not None:
        return ThresholdChoice(float(explicit), "argument", "given explicitly")
    if calibrated is not None:
        return ThresholdChoice(float(calibrated), "calibrated", calibrated_origin)
    found = checkpoint_threshold(model)
    if found is not None:
        value, meta = found
        return ThresholdChoice(value, "checkpoint", f"presence_threshold of {meta}")
    return ThresholdChoice(float(default), "default", "no calibration stored and no checkpoint threshold")


def manifest_calibrated(manifest) -> float | None:
    """The ``owl`` threshold calibration stored in an index manifest: its ``owl`` entry,
    else the top-level ``calibration.threshold`` (where ``resedis calibrate`` mirrors it)."""
    cal = manifest.calibration if isinstance(manifest.calibration, dict) else {}
    entry = cal.get("owl")
    if isinstance(entry, dict) and isinstance(entry.get("threshold"), (int, float)) and not isinstance(entry["threshold"], bool):
        return float(entry["threshold"])
    return manifest.threshold


def index_threshold(manifest, *, explicit: float | None = None) -> ThresholdChoice:
    """The threshold the engine (``owl`` scores = the index model's detector scores) uses on
    an index with this manifest."""
    return choose_threshold(explicit=explicit, calibrated=manifest_calibrated(manifest), model=manifest.model)
