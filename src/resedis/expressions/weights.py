"""The fusion weights of :mod:`resedis.expressions.fusion` (one frozen dataclass, with a
flat-vector view for fitting)."""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

import numpy as np

from resedis.errors import ResedisError


@dataclass(frozen=True)
class FusionWeights:
    """Weights and shape constants of the fusion (see the module docstring). The first
    five are the cue weights a calibration fits; all fields are in :meth:`to_vector`.

    Defaults: the cue weights are the best of a x0.5 / x1 / x2 / x4 scan of (1, 0.5, 1, 1)
    on one synthetic corpus (seed 4242, demo model, the whole expression's logit as the
    subject term; ``scripts/compose_experiment.py``); ``negation`` is not measured yet
    (the synthetic grammar has no negation). The shape constants follow the synthetic
    grammar's definitions (thirds, ``near_fraction`` = its NEXT_TO_FRACTION)."""

    position: float = 2.0
    position_relative: float = 1.0
    size: float = 2.0
    relation: float = 2.0
    negation: float = 2.0
    position_temperature: float = 0.05
    rank_temperature: float = 0.05
    rank_prior: float = 0.5
    size_temperature: float = 0.1
    relation_temperature: float = 0.1
    relation_slack: float = 0.1
    relation_floor: float = 0.05
    near_fraction: float = 0.05
    near_temperature: float = 0.02
    overlap_max: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not np.isfinite(value):
                raise ResedisError(f"FusionWeights.{f.name} must be a finite number, got {value!r}")
        positive = ("position_temperature", "rank_temperature", "size_temperature", "relation_temperature",
                    "near_temperature", "relation_floor")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ResedisError(f"FusionWeights.{name} must be > 0, got {getattr(self, name)}")
        if self.rank_prior < 0:
            raise ResedisError(f"FusionWeights.rank_prior must be >= 0, got {self.rank_prior}")
        if not 0 < self.overlap_max <= 1:
            raise ResedisError(f"FusionWeights.overlap_max must be in (0, 1], got {self.overlap_max}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_vector(self) -> np.ndarray:
        """All fields as a float64 vector, in :meth:`names` order (for fitting)."""
        return np.asarray(astuple(self), dtype=np.float64)

    @classmethod
    def from_vector(cls, vector) -> FusionWeights:
        v = np.asarray(vector, dtype=np.float64).ravel()
        if v.shape != (len(cls.names()),):
            raise ResedisError(f"FusionWeights.from_vector: expected {len(cls.names())} values "
                               f"({', '.join(cls.names())}), got {v.size}")
        return cls(*map(float, v))

    def to_json(self) -> dict:
        return dict(zip(self.names(), map(float, self.to_vector())))
