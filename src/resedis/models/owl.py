"""OWLv2 / OWL-ViT as a corpus-scale region encoder + text encoder.

The detector's logit for patch ``p`` and text query ``q`` is (transformers
``Owl*ClassPredictionHead``)::

    logit = (ê_p · q̂ + b_p) · s_p,     ê = e / (|e| + 1e-6),  s = elu(.) + 1 > 0

which is the inner product ``[s·ê, s·b] · [q̂, 1]``. :meth:`OwlBackend.encode_images`
stores ``v = [s·ê, s·b]`` per kept box (dim E + 1) and :meth:`OwlBackend.encode_texts`
returns ``u = [q̂, 1]``, so ``v @ u`` is the detector's own logit and
``sigmoid(v @ u)`` its score. Both sides reuse the model's own submodules
(``image_embedder``, ``box_predictor``, ``objectness_predictor``, ``class_head``);
:meth:`OwlBackend.detector_logits` runs the model's full forward pass as the
independent reference.

Boxes are xyxy in ORIGINAL image pixels, clipped to the image:

* OWLv2 pads each image at the bottom/right to a square of side ``max(H, W)`` before
  resizing, so the model's normalised boxes are scaled by ``max(H, W)``;
* OWL-ViT resizes without preserving the aspect ratio, so boxes scale by ``(W, H)``.

Objectness (the query-independent score used to keep the top-N boxes per image):
OWLv2's own objectness head logit. OWL-ViT has no objectness head; we use the box's
*logit upper bound* ``s·(1 + b)`` — the largest logit any query can reach for that box
(attained when ``q̂ = ê``), so a box dropped by it could never have outscored the kept
ones for every query. It is query-independent, as required.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from resedis.boxes import nms, visible
from resedis.errors import ResedisError
from resedis.models.base import PREPROCESS_SPLIT
from resedis.models.checkpoint import load_checkpoint
from resedis.models.spec import REGION_TEXT
from resedis.types import ImageRegions

logger = logging.getLogger(__name__)

OWL_FAMILIES = {"owlv2": "Owlv2ForObjectDetection", "owlvit": "OwlViTForObjectDetection"}
_TEXT_CHUNK = 256
#: A kept box is wider and taller than this (pixels): narrower ones are float round-off
#: slivers of boxes lying in OWLv2's padding (see :func:`visible`).
def select_regions(boxes: np.ndarray, objectness: np.ndarray, max_regions: int, nms_iou: float) -> np.ndarray:
    """Indices of the boxes to keep: boxes of zero area (:func:`visible`) dropped first,
    then greedy NMS on ``objectness`` (suppress IoU > nms_iou), then the first
    ``max_regions``, highest objectness first — so ``max_regions`` visible boxes are kept
    wherever the image has that many.

    Exactly equal to full greedy NMS over the visible boxes truncated to ``max_regions``:
    greedy NMS decides each box using only higher-ranked boxes, so it runs on a growing
    top-K prefix until enough boxes survive (cheap for OWLv2's 3600 patches).
    """
    if max_regions < 1:
        raise ValueError(f"max_regions must be >= 1, got {max_regions}")
    if not 0.0 < nms_iou <= 1.0:
        raise ValueError(f"nms_iou must be in (0, 1], got {nms_iou}")
    order = np.argsort(-objectness, kind="stable")
    order = order[visible(boxes)[order]]
    k = min(len(order), max(4 * max_regions, 256))
    while True:
        prefix = order[:k]
        keep = prefix[nms(boxes[prefix], objectness[prefix], nms_iou)]
        if len(keep) >= max_regions or k == len(order):
            return keep[:max_regions]
        k = min(len(order), 2 * k)


def keep_top_regions(regions: ImageRegions, max_regions: int, nms_iou: float) -> ImageRegions:
    """The rows of ``regions`` that :func:`select_regions` keeps (positive area, NMS, top
    ``max_regions``), highest objectness first (e.g. on :meth:`OwlBackend.encode_preprocessed`
    output)."""
    return regions[select_regions(regions.boxes, regions.objectness, max_regions, nms_iou)]


class OwlBackend:
    """RegionEncoder + TextEncoder for ``owlv2`` / ``owlvit`` checkpoints (transformers).

    Load with :func:`resedis.models.load_model` (``"owlv2:/path"``). All outputs are
    float32 numpy arrays. The object holds the model; nothing is cached globally.
    """

    kind = REGION_TEXT
    capabilities: frozenset[str] = frozenset({PREPROCESS_SPLIT})

    def __init__(self, spec: str, family: str, model, processor, device) -> None:
        if family not in OWL_FAMILIES:
            raise ValueError(f"not an OWL family: {family!r}")
        self.spec = spec
        self.family = family
        self.model = model
        self.processor = processor
        self.device = device
        self._base = getattr(model, model.base_model_prefix)
        self.has_objectness_head = family == "owlv2"  # OWL-ViT has no objectness head
        self.embed_dim = int(model.class_head.dense0.out_features)
        self.vector_dim = self.embed_dim + 1
        self.image_embed_dim = int(self._base.visual_projection.out_features)
        text_max = int(model.config.text_config.max_position_embeddings)
        tok_max = getattr(processor.tokenizer, "model_max_length", text_max) or text_max
        self.max_text_tokens = int(min(text_max, tok_max))
        ip = processor.image_processor
        self._pad_square = bool(getattr(ip, "do_pad", False))
        if getattr(ip, "do_center_crop", False) and _size_hw(getattr(ip, "crop_size", None)) != _size_hw(ip.size):
            raise ResedisError(
                f"{spec}: image processor center-crops to {ip.crop_size} after resizing to {ip.size}; "
                "boxes could not be mapped back to original pixels (set do_center_crop=false)"
            )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, spec: str, family: str, path: Path, device, dtype=None) -> "OwlBackend":
        """Load model + processor from a local directory (see ``resolve_weights``)."""
        model, processor = load_checkpoint(path, {family: OWL_FAMILIES[family]}, spec=spec, device=device, dtype=dtype)
        return cls(spec, family, model, processor, device)

    # ------------------------------------------------------------------ metadata
    def preprocessing(self) -> dict:
        """JSON-serialisable description of preprocessing and scoring (index manifest)."""
        ip = self.processor.image_processor
        return {
            "family": self.family,
            "image_processor": type(ip).__name__,
            "input_size": list(_size_hw(ip.size)),
            "box_mapping": "pad-bottom-right-to-square" if self._pad_square else "stretch-to-square",
            "image_mean": [float(x) for x in ip.image_mean],
            "image_std": [float(x) for x in ip.image_std],
            "resample": str(getattr(ip, "resample", None)),
            "max_text_tokens": self.max_text_tokens,
            "objectness": "objectness_head" if self.has_objectness_head else "logit_upper_bound s*(1+b)",
            "vector": "[s*e_hat, s*b] . [q_hat, 1] = detector logit",
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
        }

    # ------------------------------------------------------------------ images
    def preprocess(self, images: Sequence[Image.Image]):
        """RGB PIL images -> (pixel_values (B, 3, S, S) float32 CPU tensor, sizes [(H, W)]).

        CPU-only and model-free, so callers may run it in worker processes / threads and
        feed :meth:`encode_preprocessed`; ``encode_patches(images)`` does both."""
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        pixel_values = self.processor.image_processor(images=rgb, return_tensors="pt")["pixel_values"]
        return pixel_values, [(im.height, im.width) for im in rgb]

    def _to_pixels(self, boxes_cxcywh, sizes: Sequence[tuple[int, int]]) -> np.ndarray:
        """(B, P, 4) normalised cxcywh -> (B, P, 4) xyxy original pixels, clipped."""
        import torch

        b = boxes_cxcywh.float().cpu()
        cx, cy, w, h = b.unbind(-1)
        xyxy = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
        out = []
        for i, (height, width) in enumerate(sizes):
            if self._pad_square:
                side = max(height, width)
                scale = torch.tensor([side, side, side, side], dtype=torch.float32)
            else:
                scale = torch.tensor([width, height, width, height], dtype=torch.float32)
            out.append(_clip(xyxy[i] * scale, height, width))
        return np.stack(out) if out else np.zeros((0, 0, 4), np.float32)

    def encode_patches(self, images: Sequence[Image.Image]) -> list[ImageRegions]:
        """Every patch of every image, in the model's patch order (one batched forward).

        -> one ImageRegions per image with P = (image_size / patch_size)^2 rows:
        boxes (P, 4) xyxy original px, objectness (P,), vectors (P, E+1) = [s·ê, s·b],
        image_vector (E_proj,) the L2-normalised image-level embedding.
        """
        if len(images) == 0:
            return []
        return self.encode_preprocessed(*self.preprocess(images))

    def encode_preprocessed(self, pixel_values, sizes: Sequence[tuple[int, int]]) -> list[ImageRegions]:
        """:meth:`encode_patches` on the output of :meth:`preprocess` (one forward)."""
        import torch

        if len(sizes) != len(pixel_values):
            raise ValueError(f"{len(pixel_values)} images but {len(sizes)} sizes")
        if len(sizes) == 0:
            return []
        model, head = self.model, self.model.class_head
        pixel_values = pixel_values.to(self.device, dtype=next(model.parameters()).dtype)
        with torch.inference_mode():
            feature_map, vision_outputs = model.image_embedder(pixel_values=pixel_values)
            bsz, ph, pw, hid = feature_map.shape
            feats = feature_map.reshape(bsz, ph * pw, hid)
            boxes = model.box_predictor(feats, feature_map)
            e = head.dense0(feats)
            e_hat = e / (torch.linalg.norm(e, dim=-1, keepdim=True) + 1e-6)  # as in the class head
            shift = head.logit_shift(feats)
            scale = head.elu(head.logit_scale(feats)) + 1
            vectors = torch.cat([scale * e_hat, scale * shift], dim=-1).float()
            if self.has_objectness_head:
                objectness = model.objectness_predictor(feats).float()
            else:
                objectness = (scale * (1 + shift))[..., 0].float()
            img_vec = self._base.visual_projection(vision_outputs.pooler_output).float()
            img_vec = img_vec / torch.linalg.norm(img_vec, dim=-1, keepdim=True)
        boxes_px = self._to_pixels(boxes, sizes)
        vectors_np, obj_np, img_np = vectors.cpu().numpy(), objectness.cpu().numpy(), img_vec.cpu().numpy()
        return [
            ImageRegions(boxes=boxes_px[i], objectness=obj_np[i], vectors=vectors_np[i], image_vector=img_np[i])
            for i in range(bsz)
        ]

    def encode_images(
        self, images: Sequence[Image.Image], max_regions: int = 100, nms_iou: float = 0.5
    ) -> list[ImageRegions]:
        """RGB PIL images -> one ImageRegions per image: at most ``max_regions`` boxes of
        positive area, kept by objectness after greedy NMS at ``nms_iou``, highest
        objectness first.
        Shapes as in :meth:`encode_patches` with N <= max_regions rows."""
        return [keep_top_regions(r, max_regions, nms_iou) for r in self.encode_patches(images)]

    # ------------------------------------------------------------------ texts
    def _tokenize(self, texts: Sequence[str]):
        tok = self.processor.tokenizer
        lengths = [len(ids) for ids in tok(list(texts), truncation=False, verbose=False)["input_ids"]]
        for text, n in zip(texts, lengths):
            if n > self.max_text_tokens:
                logger.warning(
                    "query %r is %d tokens; truncated to the model's limit of %d", text, n, self.max_text_tokens
                )
        enc = tok(
            list(texts), padding="max_length", truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (Q, E+1) float32 ``[q̂, 1]``: q̂ normalised exactly as the model's
        ``Owl*Model`` and class head normalise text embeds. Over-long texts are truncated
        to ``max_text_tokens`` with a warning."""
        import torch

        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of strings")
        out = [np.zeros((0, self.vector_dim), np.float32)]
        for start in range(0, len(texts), _TEXT_CHUNK):
            input_ids, attention_mask = self._tokenize(texts[start : start + _TEXT_CHUNK])
            with torch.inference_mode():
                res = self._base.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
                t = res if isinstance(res, torch.Tensor) else res.pooler_output
                t = t / torch.linalg.norm(t, ord=2, dim=-1, keepdim=True)  # Owl*Model.forward
                q = t / (torch.linalg.norm(t, dim=-1, keepdim=True) + 1e-6)  # class head
                q = torch.cat([q, torch.ones_like(q[:, :1])], dim=-1)
            out.append(q.float().cpu().numpy())
        return np.concatenate(out, axis=0)

    # ------------------------------------------------------------------ reference
    def detector_logits(self, image: Image.Image, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The model's OWN forward pass (processor + ``Owl*ForObjectDetection``) for one
        image and Q texts -> (boxes (P, 4) xyxy original px via the processor's
        ``post_process_object_detection``, clipped; logits (P, Q); objectness (P,)),
        all patches in patch order. OWL-ViT objectness: the ``s·(1+b)`` bound computed
        from the forward's image features."""
        import torch

        if isinstance(texts, str):
            raise TypeError("detector_logits takes a list of strings")
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        inputs = self.processor(
            text=[list(texts)], images=rgb, return_tensors="pt", truncation=True, max_length=self.max_text_tokens
        )
        dtype = next(self.model.parameters()).dtype
        inputs = {
            k: (v.to(self.device, dtype=dtype) if k == "pixel_values" else v.to(self.device))
            for k, v in inputs.items()
        }
        with torch.inference_mode():
            out = self.model(**inputs)
            if self.has_objectness_head:
                objectness = out.objectness_logits[0]
            else:
                bsz, ph, pw, hid = out.image_embeds.shape
                feats = out.image_embeds.reshape(bsz, ph * pw, hid)
                head = self.model.class_head
                objectness = ((head.elu(head.logit_scale(feats)) + 1) * (1 + head.logit_shift(feats)))[0, :, 0]
        out.logits = out.logits.float()
        out.pred_boxes = out.pred_boxes.float()
        post = self.processor.image_processor.post_process_object_detection(
            out, threshold=-1.0, target_sizes=[(rgb.height, rgb.width)]
        )[0]
        boxes = _clip(post["boxes"].float().cpu(), rgb.height, rgb.width)
        return boxes, out.logits[0].float().cpu().numpy(), objectness.float().cpu().numpy()


def _clip(xyxy, height: int, width: int) -> np.ndarray:
    """torch (P, 4) xyxy -> numpy float32 clipped to the image rectangle."""
    b = xyxy.clone()
    b[:, 0::2] = b[:, 0::2].clamp(0, width)
    b[:, 1::2] = b[:, 1::2].clamp(0, height)
    return b.numpy().astype(np.float32)


def _size_hw(size) -> tuple[int, int] | None:
    """An image-processor size (dict or int) -> (height, width)."""
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    get = size.get if isinstance(size, dict) else (lambda k, d=None: getattr(size, k, d))
    if get("height") is not None:
        return (int(get("height")), int(get("width")))
    if get("shortest_edge") is not None:
        return (int(get("shortest_edge")), int(get("shortest_edge")))
    return None
