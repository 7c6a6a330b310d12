"""The small Protocols every model backend implements.

Implementations live in sibling modules and are registered by name in
``resedis.models`` (``MODELS: dict[str, factory]``, ``load_model(spec, device)``).
All encoders are batched: they take lists and return stacked arrays.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from resedis.types import ImageRegions


@runtime_checkable
class RegionEncoder(Protocol):
    """Per-image region proposals with query-independent augmented class vectors.

    ``vector_dim`` is D = E + 1; for an OWL-style detector a region's vector is
    ``[s * e_hat, s * b]`` so that ``vector @ text_vector`` is the detector's logit.
    """

    spec: str
    vector_dim: int

    def preprocessing(self) -> dict:
        """JSON-serialisable description of preprocessing, stored in the index manifest."""

    def encode_images(
        self, images: Sequence[Image.Image], max_regions: int = 100, nms_iou: float = 0.5
    ) -> list[ImageRegions]:
        """RGB PIL images -> one ImageRegions per image (boxes in original pixels),
        at most ``max_regions`` boxes kept by objectness after NMS."""


@runtime_checkable
class TextEncoder(Protocol):
    """Text queries -> (Q, D) float32 query vectors ``[q_hat, 1]`` matching a RegionEncoder."""

    spec: str
    vector_dim: int
    max_text_tokens: int

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class ImageTextEncoder(Protocol):
    """CLIP/SigLIP-style dual encoder: L2-normalised embeddings in one space."""

    spec: str
    embed_dim: int

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """-> (N, E) float32, L2-normalised."""

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """-> (Q, E) float32, L2-normalised."""

    def logit_params(self) -> tuple[float, float]:
        """(scale, bias) such that ``scale * cos + bias`` is the model's own logit."""


@runtime_checkable
class Grounder(Protocol):
    """A grounding model conditioned on the whole expression (Grounding DINO, ...)."""

    spec: str

    def ground(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[ImageRegions]: ...


@runtime_checkable
class Segmenter(Protocol):
    """Box-prompted segmentation (SAM): (H, W) bool masks for the given xyxy boxes."""

    spec: str

    def segment(self, image: Image.Image, boxes: np.ndarray) -> np.ndarray:
        """boxes (N, 4) xyxy pixels -> (N, H, W) bool."""
