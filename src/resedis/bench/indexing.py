"""Indexing throughput of region encoders at their real sizes, and their share of the
machine's dense-matmul FLOP/s.

Models are built from their transformers configs with random weights — the cost of a
forward pass does not depend on the weight values — so no download is needed:

* ``owlvit-b32-768``: ``OwlViTConfig()`` (ViT-B/32 at 768 px, 576 patches);
* ``owlv2-b16-960``: ``Owlv2Config`` with the vision tower at 960 px (ViT-B/16, 3600
  patches), the size of ``google/owlv2-base-patch16-ensemble``;
* ``clip-b32-224``: ``CLIPConfig()`` (ViT-B/32 at 224 px): one whole-image embedding,
  the work clip-retrieval-style tools do per image.

Each image goes through the stages the index writer runs: decode (read + sha256 + PIL
decode + EXIF, ``resedis.io.images.load_image``), preprocess (the model's PIL image
processor), forward (one batched pass: ``OwlBackend.encode_preprocessed``), select
(top-N boxes after NMS, ``keep_top_regions``). Stages are timed one after the other;
``images_per_s`` is the serial rate (sum of stages). The writer runs decode +
preprocess in background threads, so with spare cores the rate approaches
``forward_images_per_s``; ``overlap_bound_images_per_s`` is that ideal.

FLOPs per image are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the
meta device (shapes only, no arithmetic), over the same module calls the backend makes.
On the meta device attention decomposes into ``bmm`` and is counted; on real CPU
tensors the counter would miss the fused flash-attention kernel (about 43% of the FLOPs
of OWLv2 at 960 px: 3600 tokens, 12 layers of two 3600x3600x768 products).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# name -> (family, image size)
MODELS = {
    "owlvit-b32-768": ("owlvit", 768),
    "owlv2-b16-960": ("owlv2", 960),
    "clip-b32-224": ("clip", 224),
}


@dataclass
class EncoderCase:
    """One model to time: ``batch_sizes`` each over ``images`` images (rounded up to a
    multiple of the batch size); ``warmup``: one untimed forward first."""

    name: str
    batch_sizes: tuple[int, ...] = (1,)
    images: int = 1
    warmup: bool = True
    image_size: int | None = None  # override the model's size (small sizes keep tests fast)


def _config(family: str, image_size: int):
    import transformers as tf

    if family == "owlv2":
        return tf.Owlv2Config(vision_config={"image_size": image_size, "patch_size": 16})
    if family == "owlvit":
        return tf.OwlViTConfig(vision_config={"image_size": image_size, "patch_size": 32})
    return tf.CLIPConfig(vision_config={"image_size": image_size, "patch_size": 32})


def _model_class(family: str):
    import transformers as tf

    return {"owlv2": tf.Owlv2ForObjectDetection, "owlvit": tf.OwlViTForObjectDetection, "clip": tf.CLIPModel}[family]


def random_model(family: str, image_size: int, seed: int = 0):
    """The family's model from its default config at ``image_size``, random weights.

    Built without transformers' (slow) weight init, then filled: LayerNorm weight 1 /
    bias 0, every other parameter N(0, 0.02) — finite, non-denormal values like a
    trained model's, so arithmetic runs at full speed.
    """
    import torch
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = _model_class(family)(_config(family, image_size))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norms = set()
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
                norms.update({id(module.weight), id(module.bias)})
        for param in model.parameters():
            if id(param) not in norms:
                param.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def random_backend(name: str, seed: int = 0, image_size: int | None = None):
    """(backend, family, image size) for a :data:`MODELS` entry with random weights.

    OWL: a :class:`resedis.models.owl.OwlBackend` around the model and the family's PIL
    image processor at the model's size; CLIP: a
    :class:`resedis.models.clip.DualEncoderBackend`. Tokenizers are built locally.
    """
    import torch
    import transformers as tf

    from resedis.testing.tiny import build_word_tokenizer, vocabulary_words

    family, size = MODELS[name]
    size = image_size or size
    model = random_model(family, size, seed)
    tokenizer = build_word_tokenizer(vocabulary_words())
    device = torch.device("cpu")
    if family == "owlv2":
        from resedis.models.owl import OwlBackend

        proc = tf.Owlv2Processor(image_processor=tf.Owlv2ImageProcessorPil(size={"height": size, "width": size}), tokenizer=tokenizer)
        return OwlBackend(f"owlv2:random-{name}", family, model, proc, device), family, size
    if family == "owlvit":
        from resedis.models.owl import OwlBackend

        ip = tf.OwlViTImageProcessorPil(size={"height": size, "width": size}, crop_size={"height": size, "width": size})
        proc = tf.OwlViTProcessor(image_processor=ip, tokenizer=tokenizer)
        return OwlBackend(f"owlvit:random-{name}", family, model, proc, device), family, size
    from resedis.models.clip import DualEncoderBackend

    ip = tf.CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    proc = tf.CLIPProcessor(image_processor=ip, tokenizer=tokenizer)
    return DualEncoderBackend(f"clip:random-{name}", "clip", model, proc, device), family, size


def _owl_image_path(model, pixel_values) -> None:
    """The module calls of ``OwlBackend.encode_preprocessed`` (tests check the FLOP count
    of this against the real method on a tiny checkpoint)."""
    head = model.class_head
    feature_map, vision_outputs = model.image_embedder(pixel_values=pixel_values)
    bsz, ph, pw, hid = feature_map.shape
    feats = feature_map.reshape(bsz, ph * pw, hid)
    model.box_predictor(feats, feature_map)
    head.dense0(feats)
    head.logit_shift(feats)
    head.logit_scale(feats)
    if model.config.model_type == "owlv2":  # OWL-ViT has no objectness head
        model.objectness_predictor(feats)
    base = getattr(model, model.base_model_prefix)
    base.visual_projection(vision_outputs.pooler_output)


def image_flops(family: str, image_size: int, config=None) -> float:
    """FLOPs (multiply-add = 2) to encode ONE image, counted on the meta device.

    OWL: the region-encoder path (:func:`_owl_image_path`); CLIP: ``get_image_features``.
    ``config`` defaults to the family's default config at ``image_size``.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    config = config if config is not None else _config(family, image_size)
    with torch.device("meta"):
        model = _model_class(family)(config).eval()
        pixel_values = torch.empty(1, 3, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        if family == "clip":
            model.get_image_features(pixel_values=pixel_values)
        else:
            _owl_image_path(model, pixel_values)
    return float(counter.get_total_flops())


def write_test_images(out_dir: Path, n: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[Path]:
    """``n`` JPEG photos-like images (smooth colour fields + noise, quality 90) of ``size``
    (COCO's typical 640x480) -> paths. Their decode cost is that of real photos of that size."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(n):
        low = rng.uniform(0, 255, (h // 32 + 1, w // 32 + 1, 3)).astype(np.uint8)
        img = Image.fromarray(low).resize((w, h), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
        path = out_dir / f"photo_{i:04d}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def time_batch(backend, family: str, paths: list[Path], max_regions: int, nms_iou: float) -> dict:
    """Run one batch through the writer's stages -> seconds per stage (whole batch)."""
    import torch

    from resedis.io.images import load_image

    t0 = time.perf_counter()
    loaded = [load_image(p) for p in paths]
    images = [li.image for li in loaded]
    t1 = time.perf_counter()
    if family == "clip":
        backend.processor.image_processor(images=images, return_tensors="pt")
        t2 = time.perf_counter()
        backend.encode_images(images)  # preprocess + forward; preprocess time subtracted below
        t3 = time.perf_counter()
        return {"decode": t1 - t0, "preprocess": t2 - t1, "forward": max(0.0, (t3 - t2) - (t2 - t1)), "select": 0.0}
    from resedis.models.owl import keep_top_regions

    prepared = [backend.preprocess([im]) for im in images]  # per image, as the writer's threads do
    t2 = time.perf_counter()
    pixel_values = torch.cat([p[0] for p in prepared])
    sizes = [s for p in prepared for s in p[1]]
    regions = backend.encode_preprocessed(pixel_values, sizes)
    t3 = time.perf_counter()
    for r in regions:
        keep_top_regions(r, max_regions, nms_iou)
    t4 = time.perf_counter()
    return {"decode": t1 - t0, "preprocess": t2 - t1, "forward": t3 - t2, "select": t4 - t3}


def measure_encoder(
    case: EncoderCase, image_paths: list[Path], matmul_gflops: float, *, max_regions: int = 100, nms_iou: float = 0.5
) -> list[dict]:
    """Time ``case`` -> one ``indexing`` entry per batch size (see module docstring)."""
    family, size = MODELS[case.name]
    size = case.image_size or size
    flops = image_flops(family, size)
    t0 = time.perf_counter()
    backend, _, _ = random_backend(case.name, image_size=size)
    build_s = time.perf_counter() - t0
    if case.warmup:
        time_batch(backend, family, image_paths[:1], max_regions, nms_iou)
    entries = []
    for bs in case.batch_sizes:
        n = -(-max(case.images, bs) // bs) * bs
        paths = [image_paths[i % len(image_paths)] for i in range(n)]
        totals = {"decode": 0.0, "preprocess": 0.0, "forward": 0.0, "select": 0.0}
        for start in range(0, n, bs):
            for key, value in time_batch(backend, family, paths[start : start + bs], max_regions, nms_iou).items():
                totals[key] += value
        per_image = {k: v / n for k, v in totals.items()}
        serial = sum(per_image.values())
        fwd_rate = 1.0 / per_image["forward"] if per_image["forward"] > 0 else float("inf")
        rate = 1.0 / serial
        overlap_bound = 1.0 / max(per_image["forward"] + per_image["select"], per_image["decode"] + per_image["preprocess"])
        machine = matmul_gflops * 1e9
        entries.append(
            {
                "model": case.name,
                "family": family,
                "image_size": size,
                "batch_size": bs,
                "images_timed": n,
                "warmup": case.warmup,
                "images_per_s": round(rate, 4),
                "forward_images_per_s": round(fwd_rate, 4),
                "overlap_bound_images_per_s": round(overlap_bound, 4),
                "decode_ms": round(1000 * per_image["decode"], 2),
                "preprocess_ms": round(1000 * per_image["preprocess"], 2),
                "forward_ms": round(1000 * per_image["forward"], 2),
                "select_ms": round(1000 * per_image["select"], 2),
                "gflops_per_image": round(flops / 1e9, 3),
                "achieved_gflops": round(flops * rate / 1e9, 3),
                "achieved_flops_share": round(flops * rate / machine, 4),
                "forward_flops_share": round(flops * fwd_rate / machine, 4),
                "model_build_s": round(build_s, 2),
            }
        )
    del backend
    return entries
