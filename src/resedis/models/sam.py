"""SAM (transformers ``SamModel`` + ``SamProcessor``) as a box-prompted
:class:`resedis.models.base.Segmenter`.

``segment(image, boxes)`` runs the image encoder ONCE and the mask decoder on all boxes
of that image in one batch (``multimask_output=False``: one mask per box, as SAM's own
predictor does for box prompts), upsamples with the processor's ``post_process_masks``
to the original size and binarises at logit 0.

Box-prompted SAM may spill outside its prompt box; the returned mask is intersected
with the box dilated by :func:`box_margin` pixels (``max(2, 5 %`` of the box's longer
side``)``), so a mask always lies inside its box up to that stated margin: every kept
pixel ``[c, c+1) x [r, r+1)`` lies wholly inside ``[x0-m, x1+m] x [y0-m, y1+m]``, hence
the mask's pycocotools ``toBbox`` does too.
Masks are (N, H, W) bool in original-image pixels; boxes xyxy original pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from resedis.models.checkpoint import load_checkpoint
from resedis.models.spec import SEGMENTER

MARGIN_FRACTION = 0.05
MARGIN_MIN_PX = 2.0
# Names the box-restriction rule; part of the mask-cache key, so masks cached under an
# earlier rule (e.g. a floor/ceil window that let pixels straddle the margin) are recomputed.
MASK_RULE = "box+margin:whole-pixels"


def box_margin(box: Sequence[float]) -> float:
    """Pixels a mask may extend beyond its xyxy prompt ``box``: ``max(2, 0.05 * longer side)``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return max(MARGIN_MIN_PX, MARGIN_FRACTION * max(x1 - x0, y1 - y0))


def box_window(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """Integer pixel window ``(r0, r1, c0, c1)`` (rows/cols, end exclusive): the pixels
    lying WHOLLY inside the box dilated by :func:`box_margin` (pixel (r, c) covers
    ``[c, c+1) x [r, r+1)``), clipped to the image. A pixel (r, c) is inside iff
    ``r0 <= r < r1 and c0 <= c < c1``; so ``c0 >= x0 - m`` and ``c1 <= x1 + m``."""
    m = box_margin(box)
    x0, y0, x1, y1 = (float(v) for v in box)
    c0 = int(np.clip(np.ceil(x0 - m), 0, width))
    c1 = int(np.clip(np.floor(x1 + m), c0, width))
    r0 = int(np.clip(np.ceil(y0 - m), 0, height))
    r1 = int(np.clip(np.floor(y1 + m), r0, height))
    return r0, r1, c0, c1


def restrict_to_boxes(masks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, H, W) bool masks -> the same masks with every pixel outside the dilated box cleared."""
    out = np.zeros_like(masks, dtype=bool)
    h, w = masks.shape[1:]
    for i, box in enumerate(np.asarray(boxes).reshape(-1, 4)):
        r0, r1, c0, c1 = box_window(box, h, w)
        out[i, r0:r1, c0:c1] = masks[i, r0:r1, c0:c1]
    return out


class SamBackend:
    """Segmenter for ``sam`` checkpoints. ``image_calls`` counts image-encoder runs and
    ``boxes_segmented`` the boxes decoded (to make the cost of masks observable)."""

    kind = SEGMENTER
    capabilities: frozenset[str] = frozenset()
    mask_rule = MASK_RULE

    def __init__(self, spec: str, model, processor, device) -> None:
        self.spec = spec
        self.model = model
        self.processor = processor
        self.device = device
        self.image_calls = 0
        self.boxes_segmented = 0

    @classmethod
    def from_pretrained(cls, spec: str, path: Path, device, dtype=None) -> "SamBackend":
        """Load model + processor from a local directory (see ``resolve_weights``)."""
        model, processor = load_checkpoint(path, {"sam": "SamModel"}, spec=spec, device=device, dtype=dtype)
        return cls(spec, model, processor, device)

    def preprocessing(self) -> dict:
        ip = self.processor.image_processor
        return {"family": "sam", "longest_edge": int(ip.size["longest_edge"]), "multimask_output": False,
                "margin": {"fraction": MARGIN_FRACTION, "min_px": MARGIN_MIN_PX}}

    def raw_masks(self, image: Image.Image, boxes: np.ndarray) -> np.ndarray:
        """SAM's own masks for ``boxes`` (N, 4) xyxy px: (N, H, W) bool, before box restriction."""
        import torch

        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if len(boxes) == 0:
            return np.zeros((0, rgb.height, rgb.width), dtype=bool)
        inputs = self.processor(images=rgb, input_boxes=[boxes.tolist()], return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        with torch.inference_mode():
            out = self.model(
                pixel_values=inputs["pixel_values"].to(self.device, dtype=dtype),
                input_boxes=inputs["input_boxes"].to(self.device, dtype=dtype),
                multimask_output=False,
            )
        self.image_calls += 1
        self.boxes_segmented += len(boxes)
        masks = self.processor.post_process_masks(
            out.pred_masks.float().cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0]  # (N, 1, H, W) bool
        return masks[:, 0].numpy().astype(bool)

    def segment(self, image: Image.Image, boxes: np.ndarray) -> np.ndarray:
        """boxes (N, 4) xyxy px -> (N, H, W) bool masks, each inside its box up to :func:`box_margin`."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return restrict_to_boxes(self.raw_masks(image, boxes), boxes)

