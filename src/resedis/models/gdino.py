"""Grounding DINO / MM-Grounding-DINO (transformers ``AutoModelForZeroShotObjectDetection``)
as a :class:`resedis.models.base.Grounder`.

The model is conditioned on the whole expression (one text per image). Per predicted
box, the score is the one transformers' own ``post_process_grounded_object_detection``
gives: ``max over text tokens of sigmoid(logit)`` (so ``grounding_logit`` = the max token
logit). Boxes are xyxy in ORIGINAL image pixels.

Text is lower-cased and ends with ``"."`` (Grounding DINO's phrase delimiter); texts
longer than the model's ``max_text_len`` tokens are truncated with a warning.

>>> g = load_model("gdino:IDEA-Research/grounding-dino-tiny", device="cpu")  # doctest: +SKIP
>>> out = g.ground([image], ["the red mug left of the laptop"])              # doctest: +SKIP
>>> out[0].boxes, out[0].scores                                              # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from resedis.errors import ResedisError
from resedis.models.checkpoint import load_checkpoint
from resedis.models.spec import GROUNDER
from resedis.types import ImageRegions

log = logging.getLogger(__name__)

GDINO_MODEL_TYPES = ("grounding-dino", "mm-grounding-dino")


@dataclass
class Grounding:
    """The grounding model's answer for one (image, text) pair.

    boxes:  (N, 4) float32 xyxy original-image pixels (N = the model's number of queries)
    scores: (N,) float32 in [0, 1], ``max_token sigmoid(logit)`` (transformers' post-process)
    """

    boxes: np.ndarray
    scores: np.ndarray

    def to_regions(self) -> ImageRegions:
        """As :class:`ImageRegions` (the Grounder Protocol): ``objectness`` holds the
        grounding logit (``log(p / (1 - p))``) and ``vectors`` is (N, 0)."""
        p = np.clip(self.scores.astype(np.float64), 1e-12, 1 - 1e-12)
        return ImageRegions(
            boxes=self.boxes.astype(np.float32),
            objectness=np.log(p / (1 - p)).astype(np.float32),
            vectors=np.zeros((len(self.boxes), 0), np.float32),
        )


def grounding_text(text: str) -> str:
    """Lower-case, collapse whitespace, end with ``"."`` (Grounding DINO's expected prompt form)."""
    text = " ".join(str(text).split()).lower()
    if not text:
        raise ResedisError("empty text for the grounding model")
    return text if text.endswith(".") else text + "."


class GroundingDinoBackend:
    """Grounder for ``gdino`` checkpoints. Holds the model; caches nothing.

    ``forward_calls`` counts model forwards and ``images_seen`` the images passed through
    them (observability: the rerank stage's cost is visible and testable).
    """

    kind = GROUNDER
    capabilities: frozenset[str] = frozenset()

    def __init__(self, spec: str, model, processor, device, batch_size: int = 8) -> None:
        self.spec = spec
        self.model = model
        self.processor = processor
        self.device = device
        self.batch_size = int(batch_size)
        self.max_text_len = int(model.config.max_text_len)
        self.forward_calls = 0
        self.images_seen = 0

    @classmethod
    def from_pretrained(cls, spec: str, path: Path, device, dtype=None) -> "GroundingDinoBackend":
        """Load model + processor from a local directory (see ``resolve_weights``)."""
        classes = {t: "AutoModelForZeroShotObjectDetection" for t in GDINO_MODEL_TYPES}
        model, processor = load_checkpoint(path, classes, spec=spec, device=device, dtype=dtype)
        return cls(spec, model, processor, device)

    def preprocessing(self) -> dict:
        ip = self.processor.image_processor
        size = ip.size if isinstance(ip.size, dict) else {k: getattr(ip.size, k, None) for k in ("shortest_edge", "longest_edge")}
        return {"family": "gdino", "size": {k: v for k, v in dict(size).items() if v is not None}, "max_text_len": self.max_text_len}

    def _tokenize(self, texts: list[str]):
        tok = self.processor.tokenizer
        for text, ids in zip(texts, tok(texts, truncation=False)["input_ids"]):
            if len(ids) > self.max_text_len:
                log.warning("text %r is %d tokens; truncated to the grounding model's limit of %d", text, len(ids), self.max_text_len)
        return tok(texts, padding="longest", truncation=True, max_length=self.max_text_len, return_tensors="pt")

    def ground_pairs(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[Grounding]:
        """``images[i]`` grounded with ``texts[i]``; one Grounding each, in order. Images of
        the same size are batched (``batch_size``) into one forward."""
        if isinstance(texts, str):
            raise TypeError("ground_pairs takes a list of texts (one per image)")
        if len(images) != len(texts):
            raise ResedisError(f"{len(images)} images but {len(texts)} texts; the grounder takes one text per image")
        out: list[Grounding | None] = [None] * len(images)
        dtype = next(self.model.parameters()).dtype
        # Batch only images of one size: padding changes a DETR-style backbone's output, so
        # an image's result must not depend on which other images share its batch.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(tuple(im.size), []).append(i)
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                ims = [images[i] if images[i].mode == "RGB" else images[i].convert("RGB") for i in chunk]
                for i, g in zip(chunk, self._forward(ims, [texts[i] for i in chunk], dtype)):
                    out[i] = g
        return out  # type: ignore[return-value]

    def _forward(self, ims: list[Image.Image], texts: list[str], dtype) -> list[Grounding]:
        import torch

        txt = [grounding_text(t) for t in texts]
        pix = self.processor.image_processor(images=ims, return_tensors="pt")
        enc = self._tokenize(txt)
        inputs = {
            "pixel_values": pix["pixel_values"].to(self.device, dtype=dtype),
            "pixel_mask": pix["pixel_mask"].to(self.device),
            "input_ids": enc["input_ids"].to(self.device),
            "attention_mask": enc["attention_mask"].to(self.device),
            "token_type_ids": enc.get("token_type_ids", torch.zeros_like(enc["input_ids"])).to(self.device),
        }
        with torch.inference_mode():
            result = self.model(**inputs)
        self.forward_calls += 1
        self.images_seen += len(ims)
        logits = result.logits.float()  # (B, Q, max_text_len), -inf beyond the text
        scores = torch.sigmoid(logits).max(dim=-1).values.cpu().numpy()
        cxcywh = result.pred_boxes.float().cpu().numpy()  # relative to the unpadded image
        out = []
        for b, im in enumerate(ims):
            w, h = im.size
            cx, cy, bw, bh = cxcywh[b].T
            boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1) * np.array([w, h, w, h])
            boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
            out.append(Grounding(boxes=boxes, scores=scores[b].astype(np.float32)))
        return out

    def ground(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[ImageRegions]:
        """Grounder Protocol: one text per image -> ImageRegions (objectness = grounding logit)."""
        return [g.to_regions() for g in self.ground_pairs(images, texts)]

    def reference_postprocess(self, image: Image.Image, text: str) -> tuple[np.ndarray, np.ndarray]:
        """transformers' own processor + forward + ``post_process_grounded_object_detection``
        (threshold 0): (boxes (N, 4) original px, scores (N,)) — the reference for tests."""
        import torch

        rgb = image if image.mode == "RGB" else image.convert("RGB")
        inputs = self.processor(images=rgb, text=grounding_text(text), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            result = self.model(**inputs)
        post = self.processor.post_process_grounded_object_detection(
            result, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=[(rgb.height, rgb.width)]
        )[0]
        return post["boxes"].float().cpu().numpy(), post["scores"].float().cpu().numpy()

