"""The training loop of ``resedis finetune``: steps, validation, best/last checkpoints, resume.

Batches: each batch holds images of ONE dataset (so every (image, text) pair of the
step is labelled: the other images' expressions are extra, often hard, negatives).
Epoch ``e`` permutes each dataset's images with ``default_rng([seed, e, dataset])``,
cuts them into batches and shuffles the batches with ``default_rng([seed, e])``; the
negatives of step ``s`` come from ``default_rng([seed, s])``. Nothing else is random
(OWL has no dropout), so a run resumed from ``OUT_DIR/last`` replays exactly the
batches the uninterrupted run would have seen, from the saved step on.

Learning rate: linear warm-up over ``warmup_steps``, then cosine decay to 0 at the
last step (``epochs * steps_per_epoch``); AdamW with gradient-norm clipping.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from resedis.finetune.data import Batch, PixelStore, TrainingSet, make_batch, normalised_boxes
from resedis.finetune.detector import base_model, detect, is_owlv2
from resedis.finetune.losses import LossWeights, detection_loss

log = logging.getLogger(__name__)

#: settings that must match to resume a run (others, e.g. ``epochs``, may change)
RESUME_KEYS = ("lr", "batch_size", "negatives_per_image", "seed", "freeze_backbone", "weight_decay", "warmup_steps")


#: metrics (higher is better) that can pick the best checkpoint, and the validation loss
SELECTABLE_METRICS = (
    "BR@1@0.5", "BR@1@0.7", "BR@5@0.5", "BR@10@0.5", "IR@1", "IR@5", "IR@10", "mAP50", "F1", "precision", "recall",
    "N_acc", "val_loss",
)


@dataclass
class FinetuneConfig:
    """Settings of a fine-tuning run (CLI flags of ``resedis finetune`` map 1:1)."""

    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 8
    negatives_per_image: int = 8
    hard_negative_fraction: float = 0.5  # share of negatives drawn from word-similar absent texts
    category_texts: bool = False  # also train on instances.json category names (see build_training_set)
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    freeze_backbone: bool = False
    seed: int = 0
    device: str | None = None
    max_steps: int | None = None  # stop (with a checkpoint) once the global step reaches it
    checkpoint_every: int = 0  # also save OUT_DIR/last every N steps (0: end of epoch only)
    select_metric: str = "BR@1@0.5"  # validation metric that picks the best checkpoint
    min_n_acc: float | None = None  # presence threshold: max F1 among thresholds with validation N_acc >= this
    top_k: int = 20  # detections per query in validation predictions
    max_regions: int = 100  # regions kept per image (as the index keeps them)
    progress: bool = True
    loss: LossWeights = field(default_factory=LossWeights)

    def validate(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.hard_negative_fraction <= 1.0:
            raise ValueError(f"hard_negative_fraction must be in [0, 1], got {self.hard_negative_fraction}")
        if self.negatives_per_image < 0:
            raise ValueError(f"negatives_per_image must be >= 0, got {self.negatives_per_image}")
        if self.select_metric not in SELECTABLE_METRICS:
            raise ValueError(f"select_metric must be one of {', '.join(SELECTABLE_METRICS)}, got {self.select_metric!r}")
        if self.min_n_acc is not None and not 0.0 <= self.min_n_acc <= 1.0:
            raise ValueError(f"min_n_acc must be in [0, 1], got {self.min_n_acc}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def tokenize(processor, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (input_ids (T, L), attention_mask (T, L)), padded to the model's L."""
    enc = processor.tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def trainable_parameters(model, freeze_backbone: bool) -> list[torch.nn.Parameter]:
    """All parameters, or with ``freeze_backbone`` only the detection heads (class,
    box, objectness heads and the final layer norm): the image and text towers frozen."""
    base = base_model(model)
    for p in model.parameters():
        p.requires_grad_(True)
    if freeze_backbone:
        for p in base.parameters():
            p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


class StepRunner:
    """Computes the loss of a batch with a model, its processor and a pixel store."""

    def __init__(self, model, processor, ts: TrainingSet, pixels: PixelStore, weights: LossWeights):
        self.model = model
        self.processor = processor
        self.ts = ts
        self.pixels = pixels
        self.weights = weights
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.pad_square = is_owlv2(model)

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        pv = self.pixels.get(batch.indices).to(device)
        ids, mask = tokenize(self.processor, [self.ts.texts[t] for t in batch.texts], self.max_length)
        out = detect(self.model, pv, ids.to(device), mask.to(device))
        gt = [normalised_boxes(self.ts.images[i], self.pad_square) for i in batch.indices]
        return detection_loss(out.logits, out.boxes, out.objectness, gt, batch.refs, self.weights)

    @torch.no_grad()
    def mean_loss(self, batch_size: int, negatives_per_image: int, seed: int) -> dict[str, float]:
        """Loss over the whole set with fixed negatives (``default_rng([seed, -1, start])``),
        averaged over batches weighted by size."""
        was_training = self.model.training
        self.model.eval()
        totals: dict[str, float] = {}
        n = len(self.ts.images)
        for start in range(0, n, batch_size):
            idx = list(range(start, min(n, start + batch_size)))
            batch = make_batch(self.ts, idx, negatives_per_image, np.random.default_rng([seed, 2**31, start]))
            parts = self.loss(batch)
            for k in ("loss", "cls", "l1", "giou", "objectness", "rank"):
                totals[k] = totals.get(k, 0.0) + float(parts[k]) * len(idx)
        self.model.train(was_training)
        return {k: v / n for k, v in totals.items()}


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def epoch_batches(seed: int, epoch: int, groups: list[int], batch_size: int) -> list[list[int]]:
    """The batches (image indices) of one epoch: one dataset per batch, see the module doc."""
    groups_arr = np.asarray(groups)
    batches: list[list[int]] = []
    for g in np.unique(groups_arr):
        members = np.flatnonzero(groups_arr == g)
        members = members[np.random.default_rng([seed, epoch, int(g)]).permutation(len(members))]
        batches += [[int(i) for i in members[s : s + batch_size]] for s in range(0, len(members), batch_size)]
    order = np.random.default_rng([seed, epoch]).permutation(len(batches))
    return [batches[i] for i in order]


def steps_per_epoch(groups: list[int], batch_size: int) -> int:
    return sum(math.ceil(c / batch_size) for c in np.unique(np.asarray(groups), return_counts=True)[1])


def now() -> float:
    return time.time()


def config_dict(config: FinetuneConfig) -> dict:
    d = asdict(config)
    d["loss"] = asdict(config.loss)
    return d
