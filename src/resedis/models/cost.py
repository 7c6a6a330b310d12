"""What one image costs to encode: FLOPs from a model's config, without loading it.

Counted analytically, with torch's ``FlopCounterMode`` convention (multiply-add = 2;
matrix products, convolutions and attention's two products counted; layer norms,
activations and softmax not), over the same module calls the index writer makes:

* the ViT vision tower (CLIP-style, class token): patch convolution
  ``2·P·3p²·d``; per layer ``8·N·d²`` (q, k, v, out), ``4·N·d·m`` (MLP) and ``4·N²·d``
  (``QKᵀ`` and ``AV``), with ``P = (S/p)²`` patches and ``N = P + 1`` tokens;
* OWL region heads on the ``P`` patch features: box MLP ``d→d→d→4``, class embedding
  ``d→e``, logit shift and scale ``d→1`` each, and for OWLv2 the objectness MLP
  ``d→d→d→1``; the pooled image vector ``d→proj``;
* CLIP (whole image): the tower plus the projection ``d→proj``.

``tests/models/test_model_cost.py`` checks these counts against ``FlopCounterMode`` on the meta
device for tiny and full-size configs. :data:`DEFAULT_ARCHITECTURES` holds the vision
settings of each family's default weights (their published ``config.json``), so
``resedis models`` can show a cost without the weights being present.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from resedis.errors import ResedisError

#: family -> the vision/text settings of its default source's config.json that set its cost.
DEFAULT_ARCHITECTURES: dict[str, dict] = {
    "owlv2": {"image_size": 960, "patch_size": 16, "hidden_size": 768, "intermediate_size": 3072,
              "num_hidden_layers": 12, "text_hidden_size": 512, "projection_dim": 512},
    "owlvit": {"image_size": 768, "patch_size": 32, "hidden_size": 768, "intermediate_size": 3072,
               "num_hidden_layers": 12, "text_hidden_size": 512, "projection_dim": 512},
    "clip": {"image_size": 224, "patch_size": 32, "hidden_size": 768, "intermediate_size": 3072,
             "num_hidden_layers": 12, "text_hidden_size": 512, "projection_dim": 512},
}
COST_FAMILIES = tuple(DEFAULT_ARCHITECTURES)


def architecture_from_config(config: dict) -> dict:
    """The cost-relevant settings of a transformers ``config.json`` dict (OWLv2, OWL-ViT, CLIP)."""
    vision = config.get("vision_config") or {}
    text = config.get("text_config") or {}
    try:
        return {
            "image_size": int(vision.get("image_size", 224)),
            "patch_size": int(vision.get("patch_size", 32)),
            "hidden_size": int(vision.get("hidden_size", 768)),
            "intermediate_size": int(vision.get("intermediate_size", 3072)),
            "num_hidden_layers": int(vision.get("num_hidden_layers", 12)),
            "text_hidden_size": int(text.get("hidden_size", 512)),
            "projection_dim": int(config.get("projection_dim", 512)),
        }
    except (TypeError, ValueError) as exc:
        raise ResedisError(f"config.json: a vision/text size is not an integer ({exc})") from None


def vit_flops(arch: dict) -> float:
    """FLOPs of the CLIP-style vision tower for one image (class token included)."""
    s, p, d, m, layers = (arch[k] for k in ("image_size", "patch_size", "hidden_size", "intermediate_size", "num_hidden_layers"))
    patches = (s // p) ** 2
    tokens = patches + 1
    conv = 2 * patches * 3 * p * p * d
    per_layer = 8 * tokens * d * d + 4 * tokens * d * m + 4 * tokens * tokens * d
    return float(conv + layers * per_layer)


def image_flops(family: str, arch: dict) -> float:
    """FLOPs to encode one image with ``family`` (``owlv2``, ``owlvit``, ``clip``) of architecture ``arch``."""
    if family not in COST_FAMILIES:
        raise ResedisError(f"no cost model for family {family!r} (known: {', '.join(COST_FAMILIES)})")
    d, e, proj = arch["hidden_size"], arch["text_hidden_size"], arch["projection_dim"]
    total = vit_flops(arch) + 2 * d * proj  # tower + pooled image vector
    if family == "clip":
        return total
    patches = (arch["image_size"] // arch["patch_size"]) ** 2
    heads = 2 * (d * d + d * d + d * 4)  # box MLP
    heads += 2 * d * e + 2 * 2 * d  # class embedding, logit shift and scale
    if family == "owlv2":
        heads += 2 * (d * d + d * d + d * 1)  # objectness MLP
    return float(total + patches * heads)


def default_gflops(family: str) -> float | None:
    """GFLOP per image of the family's default weights (None: no cost model for it)."""
    if family not in DEFAULT_ARCHITECTURES:
        return None
    return image_flops(family, DEFAULT_ARCHITECTURES[family]) / 1e9


def checkpoint_gflops(family: str, weights_dir: str | os.PathLike) -> float | None:
    """GFLOP per image of the checkpoint whose ``config.json`` is in ``weights_dir``."""
    if family not in COST_FAMILIES:
        return None
    config = json.loads((Path(weights_dir) / "config.json").read_text())
    return image_flops(family, architecture_from_config(config)) / 1e9


__all__ = [
    "COST_FAMILIES",
    "DEFAULT_ARCHITECTURES",
    "architecture_from_config",
    "checkpoint_gflops",
    "default_gflops",
    "image_flops",
    "vit_flops",
]
