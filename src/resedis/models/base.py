"""The small Protocols every model backend implements, and each backend's ``kind``.

Implementations live in sibling modules and are registered by name in
``resedis.models`` (``MODELS: dict[str, ModelEntry]``, ``load_model(spec, device)``).
All encoders are batched: they take lists and return stacked arrays. Boxes are xyxy in
original-image pixels; masks ``(H, W)`` bool.

Which Protocols a backend implements is declared, not probed: every backend has a
``kind`` (:data:`KIND_PROTOCOLS`), and callers check it with :func:`require_kind`
instead of looking for methods with ``hasattr``; optional abilities are named in its
``capabilities`` (:data:`PREPROCESS_SPLIT`). The Protocols declare every attribute and
method the rest of resedis calls on a backend of that kind.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from resedis.errors import ResedisError
from resedis.models.spec import GROUNDER, IMAGE_TEXT, REGION_TEXT, SEGMENTER
from resedis.types import ImageRegions


#: Capability: ``preprocess`` + ``encode_preprocessed`` split the CPU-only preprocessing
#: from the forward pass (the index writer then preprocesses in its decode threads);
#: without it the writer calls ``encode_images``.
PREPROCESS_SPLIT = "preprocess-split"


@runtime_checkable
class Backend(Protocol):
    """What every backend has: its canonical ``spec`` string, its ``kind``, its optional
    ``capabilities``, the loaded transformers ``model`` (its ``name_or_path`` locates the
    weights for fingerprints) and a JSON-serialisable preprocessing record (stored in and
    checked against an index manifest)."""

    spec: str
    kind: str
    capabilities: frozenset[str]
    model: Any

    def preprocessing(self) -> dict: ...


@runtime_checkable
class RegionEncoder(Backend, Protocol):
    """Per-image region proposals with query-independent augmented class vectors.

    ``vector_dim`` is D = E + 1; for an OWL-style detector a region's vector is
    ``[s * e_hat, s * b]`` so that ``vector @ text_vector`` is the detector's logit.
    Preprocessing is split from the forward pass (``preprocess`` is CPU-only and
    model-free, so it can run in decode threads; ``encode_preprocessed`` runs the model),
    used only when ``PREPROCESS_SPLIT in capabilities``.
    """

    family: str
    vector_dim: int
    processor: Any

    def encode_images(
        self, images: Sequence[Image.Image], max_regions: int = 100, nms_iou: float = 0.5
    ) -> list[ImageRegions]:
        """RGB PIL images -> one ImageRegions per image (boxes in original pixels),
        at most ``max_regions`` boxes of positive area kept by objectness after NMS."""

    def preprocess(self, images: Sequence[Image.Image]) -> tuple[Any, list[tuple[int, int]]]:
        """-> (pixel_values tensor, [(H, W)] per image)."""

    def encode_preprocessed(self, pixel_values: Any, sizes: Sequence[tuple[int, int]]) -> list[ImageRegions]:
        """Every patch of every image (one forward) from :meth:`preprocess` output."""

    def encode_patches(self, images: Sequence[Image.Image]) -> list[ImageRegions]:
        """Every patch of every image, in the model's patch order."""

    def detector_logits(
        self, image: Image.Image, texts: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The model's own forward pass: (boxes (P, 4), logits (P, Q), objectness (P,))."""


@runtime_checkable
class TextEncoder(Backend, Protocol):
    """Text queries -> (Q, D) float32 query vectors ``[q_hat, 1]`` matching a RegionEncoder."""

    vector_dim: int
    max_text_tokens: int

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class ImageTextEncoder(Backend, Protocol):
    """CLIP/SigLIP-style dual encoder: L2-normalised embeddings in one space; also embeds
    crops of one image (the crop-scoring pipelines)."""

    family: str
    embed_dim: int

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """-> (N, E) float32, L2-normalised."""

    def encode_crops(self, image: Image.Image, boxes: np.ndarray) -> np.ndarray:
        """Crops of one image at xyxy pixel ``boxes`` (N, 4) -> (N, E) float32, L2-normalised."""

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """-> (Q, E) float32, L2-normalised."""

    def logit_params(self) -> tuple[float, float]:
        """(scale, bias) such that ``scale * cos + bias`` is the model's own logit."""

    def model_logits(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """The model's own forward: ``logits_per_image`` (N, Q)."""


@runtime_checkable
class Grounder(Backend, Protocol):
    """A grounding model conditioned on the whole expression (Grounding DINO, ...).

    ``forward_calls`` / ``images_seen`` count model forwards and the images through them."""

    forward_calls: int
    images_seen: int

    def ground(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[ImageRegions]: ...

    def ground_pairs(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[Any]:
        """``images[i]`` grounded with ``texts[i]`` -> one Grounding (boxes, scores) each."""


@runtime_checkable
class Segmenter(Backend, Protocol):
    """Box-prompted segmentation (SAM): (H, W) bool masks for the given xyxy boxes.

    ``mask_rule`` names how masks are restricted to their boxes (part of the mask cache
    key); ``image_calls`` / ``boxes_segmented`` count image-encoder runs and decoded boxes."""

    mask_rule: str
    image_calls: int
    boxes_segmented: int

    def segment(self, image: Image.Image, boxes: np.ndarray) -> np.ndarray:
        """boxes (N, 4) xyxy pixels -> (N, H, W) bool."""


#: ``kind -> the Protocols a backend of that kind implements``.
KIND_PROTOCOLS: dict[str, tuple[type, ...]] = {
    REGION_TEXT: (RegionEncoder, TextEncoder),
    IMAGE_TEXT: (ImageTextEncoder,),
    GROUNDER: (Grounder,),
    SEGMENTER: (Segmenter,),
}


def require_kind(backend: Any, kind: str, purpose: str) -> None:
    """Raise ResedisError unless ``backend.kind == kind`` (``purpose``: what it is needed
    for, e.g. ``"index needs an OWL-family model (owlv2:, owlvit:)"``)."""
    if kind not in KIND_PROTOCOLS:
        raise ValueError(f"unknown backend kind {kind!r}; known: {', '.join(KIND_PROTOCOLS)}")
    got = getattr(backend, "kind", None)
    if got != kind:
        raise ResedisError(
            f"model {getattr(backend, 'spec', backend)!r} is a {got or 'unknown'} backend, not a {kind} backend; {purpose}"
        )
