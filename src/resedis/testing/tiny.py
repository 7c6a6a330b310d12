"""Tiny random-initialised checkpoints for tests — no network, no pretrained weights.

``make_tiny_checkpoints(out_dir)`` writes one directory per backend, named after its spec
prefix (``out_dir/owlv2``, ``out_dir/owlvit``, ``out_dir/clip``, ``out_dir/siglip``), each
holding ``config.json``, ``model.safetensors`` and a processor with a locally built
tokenizer, so ``from_pretrained(dir)`` / ``AutoProcessor.from_pretrained(dir)`` and the
spec ``owlv2:out_dir/owlv2`` work offline. Seeded: the same call writes the same weights.

Two traps would make tests on such models vacuous; both are checked here (and in tests):

* a tokenizer that maps every word to one id (queries could not differ) — the tokenizer
  is a byte-pair model trained on a word list with the full ASCII alphabet, so any
  ASCII word tokenizes without ``<unk>`` and distinct words get distinct ids;
* a first token id of 0 — OWL masks a query whose first token id is 0 and every logit
  becomes the dtype minimum. ``<bos>`` is never id 0, and ``<eos>`` has the HIGHEST id
  because OWL/CLIP text towers pool the token at ``argmax(input_ids)``.

Command line: ``python -m resedis.testing.tiny OUT_DIR [--families owlv2,clip]``.
"""

from __future__ import annotations

import argparse
import json
import math
import string
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

from resedis.testing.tiny_extra import EXTRA_BUILDERS
from resedis.testing.words import vocabulary_words

SEED = 0
MAX_TEXT_TOKENS = 16
HIDDEN = 32

def build_word_tokenizer(words: Iterable[str], *, max_length: int = MAX_TEXT_TOKENS, vocab_size: int = 400):
    """A byte-pair tokenizer trained locally on ``words`` (plus the ASCII alphabet).

    Ids: ``<pad>`` = 0, ``<unk>`` = 1, ``<bos>`` = 2, ..., ``<eos>`` = the highest id.
    Encodes ``<bos> text <eos>``, lower-cased. Returns a transformers fast tokenizer.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w.lower() for w in words})
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<unk>", "<bos>"],
        initial_alphabet=list(string.ascii_lowercase + string.digits + string.punctuation),
        show_progress=False,
    )
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre = pre_tokenizers.Whitespace()
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer, trained.pre_tokenizer = normalizer, pre
    trained.train_from_iterator(words, trainer)
    model_json = json.loads(trained.to_str())["model"]
    vocab = dict(model_json["vocab"])
    vocab["<eos>"] = max(vocab.values()) + 1  # highest id: OWL/CLIP pool at argmax(input_ids)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_json["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>",
        special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_length,
    )
    check_tokenizer(fast, words)
    return fast


def check_tokenizer(tokenizer, words: Sequence[str]) -> None:
    """Raise RuntimeError if the tokenizer would make query tests vacuous."""
    seqs = {}
    for w in words:
        ids = tokenizer(w)["input_ids"]
        if not ids or ids[0] == 0:
            raise RuntimeError(f"tokenizer: first token id of {w!r} is 0; OWL would mask the query")
        if tokenizer.unk_token_id in ids:
            raise RuntimeError(f"tokenizer: {w!r} maps to <unk>")
        if ids[-1] != max(ids) or ids.count(max(ids)) != 1:
            raise RuntimeError(f"tokenizer: <eos> must be the unique highest id in {ids} for {w!r}")
        seqs.setdefault(tuple(ids), []).append(w)
    clashes = [ws for ws in seqs.values() if len(ws) > 1]
    if clashes:
        raise RuntimeError(f"tokenizer: different words share one token sequence: {clashes[:3]}")


def _text_config(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TEXT_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _vision_config(image_size: int, patch_size: int) -> dict:
    return dict(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )


def _temper_owl_head(model) -> None:
    """Random init gives |logits| ~ 50 (sigmoid saturates to 0/1, making score tests blind);
    re-draw the logit shift/scale layers small so logits are O(1). The box head saturates
    too (every box a line on the image border, of zero area); its last layer is re-drawn
    small so each box is its patch's box (the model's ``box_bias``) plus a small offset,
    as in a trained detector — boxes on the image where the image is, in OWLv2's padding
    where the padding is."""
    import torch

    head = model.class_head
    with torch.no_grad():
        for layer in (head.logit_shift, head.logit_scale):
            layer.weight.normal_(0.0, 0.1)
            layer.bias.zero_()
        model.box_head.dense2.weight.normal_(0.0, 0.02)
        model.box_head.dense2.bias.zero_()


def _make_owl(out: Path, tokenizer, family: str) -> None:
    import torch
    import transformers as tf

    if family == "owlv2":
        # 96 px / patch 16 -> 36 patches (boxes, objectness head)
        image_processor = tf.Owlv2ImageProcessorPil(size={"height": 96, "width": 96})
        config_cls, model_cls, proc_cls = tf.Owlv2Config, tf.Owlv2ForObjectDetection, tf.Owlv2Processor
        vision = (96, 16)
    else:
        # 64 px / patch 16 -> 16 patches, resized without aspect preservation
        image_processor = tf.OwlViTImageProcessorPil(
            size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64}, do_center_crop=False
        )
        config_cls, model_cls, proc_cls = tf.OwlViTConfig, tf.OwlViTForObjectDetection, tf.OwlViTProcessor
        vision = (64, 16)
    config = config_cls(
        text_config=_text_config(tokenizer), vision_config=_vision_config(*vision), projection_dim=HIDDEN
    )
    torch.manual_seed(SEED)
    model = model_cls(config).eval()
    _temper_owl_head(model)
    model.save_pretrained(out)
    proc_cls(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)


def _make_clip(out: Path, tokenizer) -> None:
    import torch
    import transformers as tf

    config = tf.CLIPConfig(
        text_config=_text_config(tokenizer), vision_config=_vision_config(32, 8), projection_dim=HIDDEN
    )
    torch.manual_seed(SEED)
    tf.CLIPModel(config).eval().save_pretrained(out)
    image_processor = tf.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    tf.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)


def _make_siglip(out: Path, tokenizer) -> None:
    import torch
    import transformers as tf

    config = tf.SiglipConfig(text_config=_text_config(tokenizer), vision_config=_vision_config(32, 8))
    torch.manual_seed(SEED)
    model = tf.SiglipModel(config).eval()
    with torch.no_grad():  # SigLIP's published init (scale log 10, bias -10), so the bias is exercised
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    model.save_pretrained(out)
    image_processor = tf.SiglipImageProcessorPil(size={"height": 32, "width": 32})
    tf.SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)


# name (= spec prefix) -> builder(out_dir, tokenizer). Later backends add their entry here.
TINY_BUILDERS: dict[str, Callable[[Path, object], None]] = {
    "owlv2": lambda out, tok: _make_owl(out, tok, "owlv2"),
    "owlvit": lambda out, tok: _make_owl(out, tok, "owlvit"),
    "clip": _make_clip,
    "siglip": _make_siglip,
    **EXTRA_BUILDERS,  # pipeline backends (Grounding DINO, SAM): one call writes every family
}


def check_owl_checkpoint(
    path: Path, family: str, queries: Sequence[str] = ("a red circle", "a blue square")
) -> None:
    """Load a tiny OWL checkpoint through the model's own forward and raise RuntimeError
    unless the (different) ``queries`` give finite, different logits."""
    import numpy as np
    import torch
    import transformers as tf
    from PIL import Image

    model_cls = tf.Owlv2ForObjectDetection if family == "owlv2" else tf.OwlViTForObjectDetection
    model = model_cls.from_pretrained(path).eval()
    processor = tf.AutoProcessor.from_pretrained(path)
    image = Image.fromarray(np.random.default_rng(SEED).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    inputs = processor(text=[list(queries)], images=image, return_tensors="pt")
    if int(inputs["input_ids"][:, 0].min()) == 0:
        raise RuntimeError(f"{path}: first token id 0; OWL masks such queries")
    with torch.inference_mode():
        logits = model(**inputs).logits[0]
    if not torch.isfinite(logits).all():
        raise RuntimeError(f"{path}: non-finite logits from the tiny model")
    if not (logits.max() > torch.finfo(logits.dtype).min / 2):
        raise RuntimeError(f"{path}: every logit is masked to the dtype minimum")
    for j in range(1, logits.shape[1]):
        if torch.allclose(logits[:, 0], logits[:, j]):
            raise RuntimeError(f"{path}: different queries {queries[0]!r}, {queries[j]!r} gave identical logits")


def make_tiny_checkpoints(out_dir: str | Path, families: Sequence[str] | None = None) -> dict[str, Path]:
    """Write tiny checkpoints for ``families`` (default: all in TINY_BUILDERS) under
    ``out_dir/<family>`` and return ``{family: path}``. Deterministic (seeded)."""
    out_dir = Path(out_dir)
    families = list(TINY_BUILDERS) if families is None else list(families)
    unknown = [f for f in families if f not in TINY_BUILDERS]
    if unknown:
        raise ValueError(f"no tiny checkpoint builder for {unknown}; known: {sorted(TINY_BUILDERS)}")
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # no "writing shards" chatter
    hf_logging.disable_progress_bar()
    try:
        tokenizer = build_word_tokenizer(vocabulary_words())
        paths: dict[str, Path] = {}
        for family in families:
            path = out_dir / family
            path.mkdir(parents=True, exist_ok=True)
            TINY_BUILDERS[family](path, tokenizer)
            if family in ("owlv2", "owlvit"):
                check_owl_checkpoint(path, family)
            paths[family] = path
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resedis.testing.tiny",
        description="Write tiny random-initialised checkpoints (one directory per model family) for offline tests.",
    )
    parser.add_argument("out_dir", help="directory to write OUT_DIR/<family> checkpoints into")
    parser.add_argument(
        "--families",
        default=None,
        help=f"comma-separated subset of: {','.join(TINY_BUILDERS)} (default: all)",
    )
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()] if args.families else None
    try:
        paths = make_tiny_checkpoints(args.out_dir, families)
    except ValueError as exc:
        parser.error(str(exc))
    for family, path in paths.items():
        print(f"{family}:{path.resolve()}")  # absolute: a spec without /, ./ or ~ is a hub id
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
