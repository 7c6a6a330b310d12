"""The OWL detector's forward, split so a batch's images and texts are encoded once.

``Owlv2ForObjectDetection.forward`` encodes every text once per image (its input is
``(batch * queries, tokens)``). Training scores every text of a step against every
image of the step, so :func:`detect` calls the model's own sub-modules in the order
``forward`` does — ``image_embedder`` -> ``class_predictor`` / ``box_predictor`` /
``objectness_predictor`` and the text tower's ``get_text_features`` — once per image
and once per text. ``tests/test_finetune.py`` checks it equals ``model(...)``.

Shapes: B images, P = (image_size / patch_size)^2 patches, T texts.
Boxes are cxcywh normalised to the (square) model input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DetectorOutput:
    logits: torch.Tensor  # (B, P, T) class logits (ê·q̂ + shift) * scale
    boxes: torch.Tensor  # (B, P, 4) cxcywh in [0, 1]
    objectness: torch.Tensor | None  # (B, P) logits; None for OWL-ViT (no objectness head)


def is_owlv2(model) -> bool:
    return model.config.model_type == "owlv2"


def base_model(model):
    """The CLIP-style two-tower model inside the detector (``.owlv2`` / ``.owlvit``)."""
    return model.owlv2 if is_owlv2(model) else model.owlvit


def image_features(model, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pixel_values (B, 3, S, S) -> patch features (B, P, D) and feature map (B, h, w, D)."""
    feature_map = model.image_embedder(pixel_values=pixel_values)[0]
    b, h, w, d = feature_map.shape
    return feature_map.reshape(b, h * w, d), feature_map


def text_embeddings(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Token ids (T, L) -> projected text embeddings (T, E) (the class head normalises them)."""
    out = base_model(model).get_text_features(input_ids=input_ids, attention_mask=attention_mask)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def detect(
    model,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> DetectorOutput:
    """Every text against every image: logits (B, P, T), boxes (B, P, 4), objectness (B, P)."""
    feats, feature_map = image_features(model, pixel_values)
    queries = text_embeddings(model, input_ids, attention_mask)
    q = queries[None].expand(feats.shape[0], -1, -1)
    logits, _ = model.class_predictor(feats, q, None)
    boxes = model.box_predictor(feats, feature_map)
    objectness = model.objectness_predictor(feats) if is_owlv2(model) else None
    return DetectorOutput(logits=logits, boxes=boxes, objectness=objectness)
