"""Tiny random checkpoints for the pipeline backends: Grounding DINO (``gdino``) and SAM (``sam``).

Same contract as :mod:`resedis.testing.tiny`: one directory per spec prefix, holding
``config.json``, ``model.safetensors`` and a processor, loadable offline with
``from_pretrained(dir)`` and as ``gdino:DIR`` / ``sam:DIR``. Seeded.

Grounding DINO traps (besides the two of OWL, see :mod:`resedis.testing.tiny`):

* its text tower is BERT and the model hard-codes BERT-uncased ids as phrase
  delimiters (``SPECIAL_TOKENS = [101, 102, 1012, 1029]`` = ``[CLS] [SEP] . ?``, plus
  ``[PAD]`` = 0 in ``build_label_maps``). A tokenizer with other ids would make every
  token one "phrase" with no delimiter, silently changing the text self-attention mask.
  The tiny WordPiece vocabulary therefore puts those tokens at exactly those ids
  (:func:`build_bert_tokenizer`) and :func:`check_gdino_tokenizer` asserts it;
* ``decoder_layers`` must be >= 2 (the tied ``bbox_embed`` clones need a layer 1);
* random init saturates the scores (|logit| ~ 5), which would make score tests blind;
  the decoder's final LayerNorm weight is scaled to 0.1 (|logit| ~ 0.5);
* the vision backbone is a transformers ``SwinConfig`` (``use_timm_backbone=False``),
  so neither ``timm`` nor ``torchvision`` is needed.

SAM has no text; its tiny config follows transformers' own ``tests/models/sam`` tester
(32 px input, patch 4, 8x8 image embedding, 32x32 low-res masks).
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from resedis.testing.words import vocabulary_words

SEED = 0
GDINO_MAX_TEXT_LEN = 32
# Grounding DINO's hard-coded delimiter ids (modeling_grounding_dino.SPECIAL_TOKENS) and [PAD].
BERT_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}


def build_bert_tokenizer(words: Iterable[str], *, max_length: int = GDINO_MAX_TEXT_LEN):
    """A BERT-uncased-style WordPiece tokenizer with the special ids Grounding DINO expects.

    Vocabulary: the ids of :data:`BERT_IDS`, every word of ``words`` (lower-cased), every
    ASCII letter/digit/punctuation and its ``##`` continuation (so any ASCII word
    tokenizes without ``[UNK]``), padded with ``[unusedN]`` to fill the fixed slots.
    """
    from transformers import BertTokenizer

    entries: list[str] = []
    seen = set(BERT_IDS)
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    for token in chars + ["##" + c for c in string.ascii_lowercase + string.digits] + sorted({w.lower() for w in words}):
        if token and token not in seen and " " not in token:
            seen.add(token)
            entries.append(token)
    size = max(max(BERT_IDS.values()) + 1, len(entries) + len(BERT_IDS))
    vocab: list[str | None] = [None] * size
    for token, idx in BERT_IDS.items():
        vocab[idx] = token
    free = iter(i for i in range(size) if vocab[i] is None)
    for token in entries:
        vocab[next(free)] = token
    vocab = [tok if tok is not None else f"[unused{i}]" for i, tok in enumerate(vocab)]
    tokenizer = BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab)}, do_lower_case=True, model_max_length=max_length)
    check_gdino_tokenizer(tokenizer, words)
    return tokenizer


def check_gdino_tokenizer(tokenizer, words: Sequence[str]) -> None:
    """Raise RuntimeError unless the tokenizer uses Grounding DINO's hard-coded ids and
    maps different words to different token sequences without ``[UNK]``."""
    for token, idx in BERT_IDS.items():
        got = tokenizer.convert_tokens_to_ids(token)
        if got != idx:
            raise RuntimeError(f"gdino tokenizer: {token!r} has id {got}, Grounding DINO hard-codes {idx}")
    ids = tokenizer("a red circle.")["input_ids"]
    if ids[0] != BERT_IDS["[CLS]"] or ids[-1] != BERT_IDS["[SEP]"] or BERT_IDS["."] not in ids:
        raise RuntimeError(f"gdino tokenizer: 'a red circle.' -> {ids}; expected [CLS] ... . [SEP]")
    seqs: dict[tuple, str] = {}
    for w in words:
        seq = tuple(tokenizer(w.lower())["input_ids"])
        if BERT_IDS["[UNK]"] in seq:
            raise RuntimeError(f"gdino tokenizer: {w!r} maps to [UNK]")
        if seq in seqs and seqs[seq] != w.lower():
            raise RuntimeError(f"gdino tokenizer: {w!r} and {seqs[seq]!r} share one token sequence")
        seqs[seq] = w.lower()


def gdino_config(vocab_size: int):
    """The tiny Grounding DINO config (after transformers' GroundingDinoModelTester)."""
    import transformers as tf

    swin = tf.SwinConfig(
        window_size=7, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], image_size=64, out_indices=[2, 3, 4]
    )
    text = {
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": GDINO_MAX_TEXT_LEN,
        "pad_token_id": 0,
    }
    return tf.GroundingDinoConfig(
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,  # >= 2: the tied bbox_embed clones need layer 1
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=16,
        num_feature_levels=3,  # no extra stride-2 level: a 1x1 map breaks GroupNorm on small inputs
        encoder_n_points=2,
        decoder_n_points=2,
        use_timm_backbone=False,
        backbone_config=swin,
        max_text_len=GDINO_MAX_TEXT_LEN,
        text_config=text,
    )


def make_gdino(out: Path, words: Iterable[str]) -> None:
    """Write a tiny Grounding DINO checkpoint + processor (BERT tokenizer built locally)."""
    import torch
    import transformers as tf

    tokenizer = build_bert_tokenizer(words)
    torch.manual_seed(SEED)
    model = tf.GroundingDinoForObjectDetection(gdino_config(len(tokenizer))).eval()
    with torch.no_grad():  # random init gives |logit| ~ 5 (sigmoid saturates); scale to O(0.5)
        model.model.decoder.layer_norm.weight.fill_(0.1)
    model.save_pretrained(out)
    image_processor = tf.GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 128})
    tf.GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)


def sam_config():
    """The tiny SAM config (after transformers' SamModelTester): 32 px, 8x8 embedding."""
    import transformers as tf

    vision = tf.SamVisionConfig(
        image_size=32, patch_size=4, hidden_size=16, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
        window_size=4, global_attn_indexes=[1], num_pos_feats=8, mlp_dim=32,
    )
    prompt = tf.SamPromptEncoderConfig(image_size=32, patch_size=4, hidden_size=16, mask_input_channels=4)
    decoder = tf.SamMaskDecoderConfig(
        hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=16
    )
    return tf.SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def make_sam(out: Path) -> None:
    """Write a tiny SAM checkpoint + processor."""
    import torch
    import transformers as tf

    torch.manual_seed(SEED)
    tf.SamModel(sam_config()).eval().save_pretrained(out)
    image_processor = tf.SamImageProcessorPil(
        size={"longest_edge": 32},
        pad_size={"height": 32, "width": 32},
        mask_size={"longest_edge": 8},
        mask_pad_size={"height": 8, "width": 8},
    )
    tf.SamProcessor(image_processor=image_processor).save_pretrained(out)


def make_extra_checkpoints(out_dir: str | Path, families: Sequence[str] = ("gdino", "sam")) -> dict[str, Path]:
    """Write ``out_dir/gdino`` and/or ``out_dir/sam``; return ``{family: path}``."""
    from transformers.utils import logging as hf_logging

    out_dir = Path(out_dir)
    unknown = [f for f in families if f not in ("gdino", "sam")]
    if unknown:
        raise ValueError(f"no tiny builder for {unknown} here (gdino, sam)")
    paths: dict[str, Path] = {}
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        for family in families:
            path = out_dir / family
            path.mkdir(parents=True, exist_ok=True)
            make_gdino(path, vocabulary_words()) if family == "gdino" else make_sam(path)
            paths[family] = path
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return paths


def _gdino_builder(out: Path, _owl_tokenizer) -> None:
    make_gdino(Path(out), vocabulary_words())


# Builders in the shape of resedis.testing.tiny.TINY_BUILDERS: (out_dir, owl tokenizer) -> None.
EXTRA_BUILDERS = {
    "gdino": _gdino_builder,
    "sam": lambda out, _tok: make_sam(Path(out)),
}


if __name__ == "__main__":  # pragma: no cover
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="resedis-tiny-")
    for fam, p in make_extra_checkpoints(target).items():
        print(f"{fam}:{p.resolve()}")
