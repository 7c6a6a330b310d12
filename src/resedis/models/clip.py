"""CLIP and SigLIP dual encoders (transformers ``CLIPModel`` / ``SiglipModel``) as
:class:`resedis.models.base.ImageTextEncoder`.

Embeddings are L2-normalised float32; the model's own image-text logit is
``scale * img @ txt.T + bias`` with ``(scale, bias) = logit_params()``
(CLIP: ``exp(logit_scale)``, 0; SigLIP: ``exp(logit_scale)``, ``logit_bias``).
Used by the crop-scoring baseline: :meth:`DualEncoderBackend.encode_crops` embeds
xyxy pixel boxes of one image.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from resedis.models.checkpoint import load_checkpoint
from resedis.models.spec import IMAGE_TEXT

logger = logging.getLogger(__name__)

DUAL_FAMILIES = {"clip": "CLIPModel", "siglip": "SiglipModel"}
_TEXT_CHUNK = 256


class DualEncoderBackend:
    """ImageTextEncoder for ``clip`` / ``siglip`` checkpoints. Holds the model; caches nothing."""

    kind = IMAGE_TEXT
    capabilities: frozenset[str] = frozenset()

    def __init__(self, spec: str, family: str, model, processor, device) -> None:
        if family not in DUAL_FAMILIES:
            raise ValueError(f"not a dual-encoder family: {family!r}")
        self.spec = spec
        self.family = family
        self.model = model
        self.processor = processor
        self.device = device
        if family == "clip":
            self.embed_dim = int(model.text_projection.out_features)
        else:
            self.embed_dim = int(model.text_model.head.out_features)
        text_max = int(model.config.text_config.max_position_embeddings)
        tok_max = getattr(processor.tokenizer, "model_max_length", text_max) or text_max
        self.max_text_tokens = int(min(text_max, tok_max))

    @classmethod
    def from_pretrained(cls, spec: str, family: str, path: Path, device, dtype=None) -> "DualEncoderBackend":
        """Load model + processor from a local directory (see ``resolve_weights``)."""
        model, processor = load_checkpoint(path, {family: DUAL_FAMILIES[family]}, spec=spec, device=device, dtype=dtype)
        return cls(spec, family, model, processor, device)

    def preprocessing(self) -> dict:
        """JSON-serialisable description of preprocessing (index manifest)."""
        ip = self.processor.image_processor
        keys = ("height", "width", "shortest_edge")
        size = ip.size if isinstance(ip.size, dict) else {k: getattr(ip.size, k, None) for k in keys}
        return {
            "family": self.family,
            "image_processor": type(ip).__name__,
            "size": {k: v for k, v in dict(size).items() if v is not None},
            "image_mean": [float(x) for x in ip.image_mean],
            "image_std": [float(x) for x in ip.image_std],
            "max_text_tokens": self.max_text_tokens,
            "text_padding": self._padding,
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
        }

    @property
    def _padding(self) -> str:
        # SigLIP pools the LAST token and was trained on max_length padding; CLIP pools <eos>.
        return "max_length" if self.family == "siglip" else "longest"

    @staticmethod
    def _features(out):
        import torch

        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB PIL images -> (N, E) float32, L2-normalised (one batched forward)."""
        import torch

        if len(images) == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        pv = self.processor.image_processor(images=rgb, return_tensors="pt")["pixel_values"]
        pv = pv.to(self.device, dtype=next(self.model.parameters()).dtype)
        with torch.inference_mode():
            emb = self._features(self.model.get_image_features(pixel_values=pv)).float()
            emb = emb / torch.linalg.norm(emb, dim=-1, keepdim=True)
        return emb.cpu().numpy()

    def encode_crops(self, image: Image.Image, boxes: np.ndarray) -> np.ndarray:
        """Crops of one image at xyxy pixel ``boxes`` (N, 4) -> (N, E) normalised embeddings.

        Boxes are clipped to the image and widened to at least 1 px."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        crops = []
        for x0, y0, x1, y1 in boxes:
            left = int(np.clip(np.floor(x0), 0, image.width - 1))
            top = int(np.clip(np.floor(y0), 0, image.height - 1))
            right = int(np.clip(np.ceil(x1), left + 1, image.width))
            bottom = int(np.clip(np.ceil(y1), top + 1, image.height))
            crops.append(image.crop((left, top, right, bottom)))
        return self.encode_images(crops)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (Q, E) float32, L2-normalised; over-long texts are truncated with a warning."""
        import torch

        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of strings")
        tok = self.processor.tokenizer
        out = [np.zeros((0, self.embed_dim), np.float32)]
        for start in range(0, len(texts), _TEXT_CHUNK):
            chunk = list(texts[start : start + _TEXT_CHUNK])
            for text, ids in zip(chunk, tok(chunk, truncation=False)["input_ids"]):
                if len(ids) > self.max_text_tokens:
                    logger.warning(
                        "query %r is %d tokens; truncated to the model's limit of %d",
                        text,
                        len(ids),
                        self.max_text_tokens,
                    )
            enc = tok(
                chunk,
                padding=self._padding,
                truncation=True,
                max_length=self.max_text_tokens,
                return_tensors="pt",
            )
            kwargs = {"input_ids": enc["input_ids"].to(self.device)}
            if "attention_mask" in enc and self.family == "clip":
                kwargs["attention_mask"] = enc["attention_mask"].to(self.device)
            with torch.inference_mode():
                emb = self._features(self.model.get_text_features(**kwargs)).float()
                emb = emb / torch.linalg.norm(emb, dim=-1, keepdim=True)
            out.append(emb.cpu().numpy())
        return np.concatenate(out, axis=0)

    def logit_params(self) -> tuple[float, float]:
        """(scale, bias) such that ``scale * img @ txt.T + bias`` is the model's own logit."""
        scale = float(self.model.logit_scale.detach().float().exp().item())
        bias = float(self.model.logit_bias.detach().float().item()) if self.family == "siglip" else 0.0
        return scale, bias

    def model_logits(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """The model's OWN forward (processor + ``CLIPModel``/``SiglipModel``):
        ``logits_per_image`` (N, Q) — the reference for tests and sanity checks."""
        import torch

        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        inputs = self.processor(
            text=list(texts),
            images=rgb,
            padding=self._padding,
            truncation=True,
            max_length=self.max_text_tokens,
            return_tensors="pt",
        )
        if self.family == "siglip":
            inputs.pop("attention_mask", None)  # SigLIP is used without a text attention mask
        dtype = next(self.model.parameters()).dtype
        inputs = {
            k: (v.to(self.device, dtype=dtype) if k == "pixel_values" else v.to(self.device))
            for k, v in inputs.items()
        }
        with torch.inference_mode():
            return self.model(**inputs).logits_per_image.float().cpu().numpy()
