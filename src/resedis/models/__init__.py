"""Model backends: the family registry, the spec rules and one loader.

A model spec is ``family:source`` — ``owlv2:google/owlv2-base-patch16-ensemble`` (a hub
id), ``owlv2:/path/to/dir`` or ``owlv2:./dir`` (a local directory), ``owlv2:hf-hub:org/name``
/ ``owlv2:local-dir:dir`` (forced either way) — or just ``family`` for the family's
default source, or ``demo``: the bundled from-scratch OWLv2 model (offline; indexes
record it as ``demo``). How a spec is written decides hub or local, never what exists in
the working directory: :mod:`resedis.models.spec`. Weights are found by
:func:`resedis.models.resolver.resolve_weights` (local dir, or HF cache -> hub download
only when allowed) and loaded by :func:`resedis.models.checkpoint.load_checkpoint`.

Importing this module is cheap: torch/transformers are imported by the loaders.

Adding a backend: write a module with a factory ``(spec: ModelSpec, device:
torch.device, dtype: torch.dtype | None) -> backend`` implementing the Protocols of
:mod:`resedis.models.base`, and add one ``ModelEntry`` below (or call
:func:`register_model`).

>>> from resedis.models import load_model
>>> owl = load_model("owlv2:/tmp/tiny/owlv2", device="cpu")  # doctest: +SKIP
>>> regions = owl.encode_images([image], max_regions=50)      # doctest: +SKIP
>>> logits = regions[0].vectors @ owl.encode_texts(["a red circle"]).T  # doctest: +SKIP
"""

from __future__ import annotations

from resedis.errors import ResedisError
from resedis.models.clip import DualEncoderBackend
from resedis.models.gdino import GroundingDinoBackend
from resedis.models.owl import OwlBackend
from resedis.models.resolver import resolve_device, resolve_weights
from resedis.models.sam import SamBackend
from resedis.models.spec import (
    ALIASES, DEFAULT_MODEL, GROUNDER, IMAGE_TEXT, MODELS, REGION_TEXT, SEGMENTER, ModelEntry, ModelSpec, canonical,
    canonical_spec, list_aliases, list_models, parse_spec, register_model,
)


def _load_owl(spec: ModelSpec, device, dtype):
    return OwlBackend.from_pretrained(str(canonical(spec)), spec.family, resolve_weights(spec), device, dtype)


def _load_dual(spec: ModelSpec, device, dtype):
    return DualEncoderBackend.from_pretrained(str(canonical(spec)), spec.family, resolve_weights(spec), device, dtype)


def _load_gdino(spec: ModelSpec, device, dtype):
    return GroundingDinoBackend.from_pretrained(str(canonical(spec)), resolve_weights(spec), device, dtype)


def _load_sam(spec: ModelSpec, device, dtype):
    return SamBackend.from_pretrained(str(canonical(spec)), resolve_weights(spec), device, dtype)


for _entry in (
    ModelEntry(
        "owlv2",
        REGION_TEXT,
        "google/owlv2-base-patch16-ensemble",
        "OWLv2 open-vocabulary detector: per-box vectors + objectness; the default region/text encoder",
        _load_owl,
    ),
    ModelEntry(
        "owlvit",
        REGION_TEXT,
        "google/owlvit-base-patch32",
        "OWL-ViT open-vocabulary detector (no objectness head: boxes ranked by their logit upper bound)",
        _load_owl,
    ),
    ModelEntry(
        "clip",
        IMAGE_TEXT,
        "openai/clip-vit-base-patch32",
        "CLIP dual encoder: normalised image/crop and text embeddings (clip-crops baseline)",
        _load_dual,
    ),
    ModelEntry(
        "siglip",
        IMAGE_TEXT,
        "google/siglip-base-patch16-224",
        "SigLIP dual encoder: normalised image/crop and text embeddings with a sigmoid logit bias",
        _load_dual,
    ),
    ModelEntry(
        "gdino",
        GROUNDER,
        "IDEA-Research/grounding-dino-tiny",
        "Grounding DINO / MM-Grounding-DINO: boxes grounded on a whole expression (owl+rerank pipeline)",
        _load_gdino,
    ),
    ModelEntry(
        "sam",
        SEGMENTER,
        "facebook/sam-vit-base",
        "Segment Anything: box-prompted masks for hits (--masks)",
        _load_sam,
    ),
):
    register_model(_entry)


def load_model(spec: str | ModelSpec, device: str | None = None, *, dtype: str | None = None):
    """Load a backend by spec on ``device`` (None -> cuda if available, else cpu).

    ``dtype``: ``"float32"`` (default) or ``"float16"``/``"bfloat16"`` (GPU); outputs are
    always float32 numpy. The caller holds the returned object; nothing is cached.
    Raises WeightsNotFoundError / ResedisError with a message saying what to do.
    """
    import torch

    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    if parsed.family not in MODELS:
        raise ResedisError(f"unknown model family {parsed.family!r}; supported: {', '.join(MODELS)}")
    torch_dtype = None
    if dtype is not None:
        torch_dtype = getattr(torch, str(dtype).replace("torch.", ""), None)
        if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
            raise ResedisError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    return MODELS[parsed.family].factory(parsed, resolve_device(device), torch_dtype)


__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "ModelEntry",
    "ModelSpec",
    "ALIASES",
    "canonical",
    "canonical_spec",
    "list_aliases",
    "register_model",
    "list_models",
    "parse_spec",
    "load_model",
    "resolve_weights",
    "resolve_device",
    "REGION_TEXT",
    "IMAGE_TEXT",
    "GROUNDER",
    "SEGMENTER",
]
