"""Model backends: a plain name -> entry registry, one spec parser, one loader.

A model spec is ``family:source`` — ``owlv2:google/owlv2-base-patch16-ensemble``,
``owlv2:/path/to/dir``, ``clip:openai/clip-vit-base-patch32`` — or just ``family``
for the family's default source, or ``demo``: the bundled from-scratch OWLv2 model
(``owlv2:<package>/assets/demo_model``, offline; indexes record it as ``demo``). Weights are found by
:func:`resedis.models.resolver.resolve_weights` (local dir -> HF cache -> hub download
only when allowed).

Importing this module is cheap: torch/transformers are imported by the factories.

Adding a backend: write a module with a factory ``(spec: ModelSpec, device:
torch.device, dtype: torch.dtype | None) -> backend`` and add one ``ModelEntry`` to
``MODELS`` below (or call :func:`register_model`).

>>> from resedis.models import load_model
>>> owl = load_model("owlv2:/tmp/tiny/owlv2", device="cpu")  # doctest: +SKIP
>>> regions = owl.encode_images([image], max_regions=50)      # doctest: +SKIP
>>> logits = regions[0].vectors @ owl.encode_texts(["a red circle"]).T  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from resedis.errors import ResedisError
from resedis.models.resolver import ModelSpec, resolve_device, resolve_weights

DEFAULT_MODEL = "owlv2:google/owlv2-base-patch16-ensemble"

# Kinds of backend (what Protocols of resedis.models.base the object implements).
REGION_TEXT = "region+text"  # RegionEncoder + TextEncoder (OWL family)
IMAGE_TEXT = "image-text"  # ImageTextEncoder (CLIP family)
GROUNDER = "grounder"  # Grounder
SEGMENTER = "segmenter"  # Segmenter

Factory = Callable[[ModelSpec, Any, Any], Any]


@dataclass(frozen=True)
class ModelEntry:
    """One supported model family.

    ``factory(spec, device, dtype)`` loads the backend (``device`` is a resolved
    ``torch.device``; ``dtype`` a ``torch.dtype`` or None for float32).
    """

    name: str
    kind: str
    default_source: str
    description: str
    factory: Factory


def _load_owl(spec: ModelSpec, device, dtype):
    from resedis.models.owl import OwlBackend

    return OwlBackend.from_pretrained(str(_canonical(spec)), spec.family, resolve_weights(spec), device, dtype)


def _load_dual(spec: ModelSpec, device, dtype):
    from resedis.models.clip import DualEncoderBackend

    return DualEncoderBackend.from_pretrained(str(_canonical(spec)), spec.family, resolve_weights(spec), device, dtype)


def _load_gdino(spec: ModelSpec, device, dtype):
    from resedis.models.gdino import load_gdino

    return load_gdino(spec, device, dtype)


def _load_sam(spec: ModelSpec, device, dtype):
    from resedis.models.sam import load_sam

    return load_sam(spec, device, dtype)


MODELS: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add (or replace) a family in :data:`MODELS`."""
    MODELS[entry.name] = entry
    return entry


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


def list_models() -> list[ModelEntry]:
    """Supported families, in registration order."""
    return list(MODELS.values())


def _demo_spec() -> ModelSpec:
    from resedis.demo import demo_model_dir

    return ModelSpec("owlv2", str(demo_model_dir()), alias="demo")


#: Short names for whole specs, resolved offline when parsed (``name -> (description,
#: builder)``). ``demo``: the bundled from-scratch OWLv2 model (``resedis demo``).
ALIASES: dict[str, tuple[str, Callable[[], ModelSpec]]] = {
    "demo": ("the bundled from-scratch OWLv2 demo model (owlv2:<package>/assets/demo_model), offline", _demo_spec),
}


def list_aliases() -> dict[str, str]:
    """``{alias: what it resolves to}`` (e.g. ``{"demo": "owlv2:/.../assets/demo_model"}``)."""
    specs = {name: build() for name, (_, build) in ALIASES.items()}
    return {name: f"{s.family}:{s.source}" for name, s in specs.items()}


def parse_spec(spec: str) -> ModelSpec:
    """``"family:source"``, ``"family"`` or an alias (``"demo"``) -> :class:`ModelSpec`.

    The family must be registered; a bare family uses its default source. Only the first
    ``:`` splits, so sources may contain colons. An alias resolves to its full spec and
    keeps its name (``str(parse_spec("demo")) == "demo"``).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ResedisError(f"empty model spec; expected family:source, e.g. {DEFAULT_MODEL}")
    spec = spec.strip()
    family, sep, source = spec.partition(":")
    family = family.strip().lower()
    if family in ALIASES and family not in MODELS:
        if sep:
            raise ResedisError(f"model spec {spec!r}: {family!r} names one bundled model and takes no ':source'; "
                               f"write just {family!r}")
        return ALIASES[family][1]()
    if family not in MODELS:
        known = ", ".join(MODELS) + "; or " + ", ".join(ALIASES)
        hint = (
            f" (did you mean owlv2:{spec}?)" if not sep and ("/" in spec or "\\" in spec) else ""
        )
        raise ResedisError(f"unknown model family {family!r} in spec {spec!r}; supported: {known}{hint}")
    source = source.strip() if sep else ""
    if not source:
        source = MODELS[family].default_source
    return ModelSpec(family, source)


def _canonical(spec: ModelSpec) -> ModelSpec:
    """Local sources become absolute paths, so a spec recorded in an index means one thing;
    a directory that is an alias's (the bundled demo model's) becomes that alias, so the
    recorded spec (``demo``) survives the package moving."""
    from pathlib import Path

    from resedis.models.resolver import looks_like_path

    if spec.alias is not None or not looks_like_path(spec.source):
        return spec
    path = Path(spec.source).expanduser().resolve()
    for _, build in ALIASES.values():
        target = build()
        if target.family == spec.family and Path(target.source).resolve() == path:
            return target
    return ModelSpec(spec.family, str(path))


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
