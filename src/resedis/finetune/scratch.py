"""From-scratch OWLv2 models: a word-level tokenizer over a closed vocabulary and a
small ``Owlv2ForObjectDetection`` config, saved as a normal transformers checkpoint
(loadable with ``from_pretrained(dir)`` and as ``owlv2:DIR``).

Tokenizer ids: 0 = ``<pad>`` (OWL masks a query whose FIRST id is 0, so real text
never starts with it), 1 = ``<unk>``, 2 = ``<bos>``, then one id per word (distinct
words, distinct ids, sorted), and ``<eos>`` last: the OWL/CLIP text tower pools the
token with the HIGHEST id, which must be the end token.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

SPECIALS = ("<pad>", "<unk>", "<bos>")
EOS = "<eos>"
# the split of tokenizers' ``Whitespace`` pre-tokenizer
WORD_RE = re.compile(r"\w+|[^\w\s]+")


@dataclass
class ScratchConfig:
    """Architecture of a from-scratch OWLv2 model (JSON-serialisable).

    ``vocabulary``: ``"synth"`` (resedis.synth.VOCABULARY) or an explicit word list;
    words of the training expressions are always added.
    """

    image_size: int = 192
    patch_size: int = 16
    vision_hidden: int = 96
    vision_layers: int = 4
    vision_heads: int = 4
    vision_mlp: int = 384
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_mlp: int = 256
    max_text_tokens: int = 16
    vocabulary: str | list[str] = "synth"
    extra_words: list[str] = field(default_factory=list)
    #: std of the word-embedding init (None: transformers' 0.02, under which all texts
    #: start with near-identical embeddings)
    text_embed_init_std: float | None = None
    #: initialise the (learnable) patch position embeddings with 2-D sine-cosine
    #: embeddings (as MAE does), so the tower knows which patches are neighbours from
    #: the first step instead of having to learn the 2-D layout from data
    sincos_positions: bool = False

    @classmethod
    def from_json(cls, path: str | Path) -> "ScratchConfig":
        data = json.loads(Path(path).read_text())
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


def words_of(texts) -> list[str]:
    """Lower-cased word and punctuation tokens, as the tokenizer splits them."""
    out: set[str] = set()
    for t in texts:
        out.update(WORD_RE.findall(t.lower()))
    return sorted(out)


def build_word_tokenizer(words, max_length: int = 16):
    """A fast word-level tokenizer: lower-cases, splits words and punctuation, adds
    ``<bos> ... <eos>``; unknown words map to ``<unk>`` (id 1)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w in sorted({w.lower() for w in words} - set(SPECIALS) - {EOS}):
        vocab[w] = len(vocab)
    vocab[EOS] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tk.post_processor = processors.TemplateProcessing(
        single=f"<bos> $A {EOS}", special_tokens=[("<bos>", vocab["<bos>"]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token=EOS,
        model_max_length=max_length,
    )


def build_scratch_owlv2(config: ScratchConfig, texts=(), seed: int = 0):
    """A randomly initialised ``Owlv2ForObjectDetection`` and its ``Owlv2Processor``.

    ``texts``: training expressions whose words join the vocabulary. Returns
    (model, processor).
    """
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor

    try:
        from transformers import Owlv2ImageProcessorPil as ImageProcessor
    except ImportError:  # older transformers
        from transformers import Owlv2ImageProcessor as ImageProcessor

    if config.vocabulary == "synth":
        from resedis.synth import VOCABULARY

        vocab = list(VOCABULARY)
    else:
        vocab = list(config.vocabulary)
    words = sorted(set(w.lower() for w in vocab) | set(words_of(texts)) | set(config.extra_words))
    tokenizer = build_word_tokenizer(words, config.max_text_tokens)
    n_vocab = len(tokenizer.get_vocab())
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    hf_config = Owlv2Config(
        text_config=dict(
            vocab_size=n_vocab,
            hidden_size=config.text_hidden,
            intermediate_size=config.text_mlp,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=config.max_text_tokens,
            pad_token_id=0,
            bos_token_id=tokenizer.convert_tokens_to_ids("<bos>"),
            eos_token_id=eos_id,
        ),
        vision_config=dict(
            hidden_size=config.vision_hidden,
            intermediate_size=config.vision_mlp,
            num_hidden_layers=config.vision_layers,
            num_attention_heads=config.vision_heads,
            image_size=config.image_size,
            patch_size=config.patch_size,
        ),
        # the class head compares dense0(image) (text hidden size) with projected text
        projection_dim=config.text_hidden,
    )
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(hf_config)
    init_detection_heads(model)
    if config.sincos_positions:
        with torch.no_grad():
            pe = model.owlv2.vision_model.embeddings.position_embedding.weight
            grid = config.image_size // config.patch_size
            pe.zero_()
            pe[1:] = sincos_2d(grid, pe.shape[1])
    if config.text_embed_init_std is not None:
        with torch.no_grad():
            torch.nn.init.normal_(model.owlv2.text_model.embeddings.token_embedding.weight, std=config.text_embed_init_std)
    image_processor = ImageProcessor(size={"height": config.image_size, "width": config.image_size})
    processor = Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer)
    return model, processor


#: prior probability of the class and objectness heads at initialisation (RetinaNet-style)
PRIOR_PROB = 0.01
#: initial class-logit scale s (logit = (cos + shift) * s)
INIT_LOGIT_SCALE = 10.0


def init_detection_heads(model) -> None:
    """Re-initialise the detection heads of a from-scratch model.

    transformers initialises these ``nn.Linear`` layers with std = initializer_factor
    (1.0), which gives logits of magnitude ~100 and a useless first phase of training.
    Here: hidden layers ~ N(0, 1/fan_in); the last box layer ~ N(0, 1e-3) so each patch
    starts with the box of its own grid cell (the model's box bias); the objectness
    bias starts at logit(PRIOR_PROB); the class logit scale ``s = elu(.) + 1`` starts at
    INIT_LOGIT_SCALE (a CLIP-like temperature: with s = 1 a cosine in [-1, 1] moves the
    logit too little to learn the text-image alignment quickly) and the shift at
    logit(PRIOR_PROB) / s, so every score starts near PRIOR_PROB.
    """
    import math

    import torch
    from torch import nn

    prior = math.log(PRIOR_PROB / (1 - PRIOR_PROB))

    def hidden(layer: nn.Linear) -> None:
        nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
        nn.init.zeros_(layer.bias)

    with torch.no_grad():
        has_objectness = model.config.model_type == "owlv2"  # OWL-ViT has no objectness head
        heads = [model.box_head] + ([model.objectness_head] if has_objectness else [])
        for head in heads:
            hidden(head.dense0)
            hidden(head.dense1)
            nn.init.normal_(head.dense2.weight, std=1e-3)
            nn.init.zeros_(head.dense2.bias)
        if has_objectness:
            nn.init.constant_(model.objectness_head.dense2.bias, prior)
        ch = model.class_head
        hidden(ch.dense0)
        nn.init.normal_(ch.logit_shift.weight, std=1e-3)
        nn.init.constant_(ch.logit_shift.bias, prior / INIT_LOGIT_SCALE)
        nn.init.normal_(ch.logit_scale.weight, std=1e-3)
        nn.init.constant_(ch.logit_scale.bias, INIT_LOGIT_SCALE - 1.0)  # elu(x) + 1 = x + 1 for x > 0


def sincos_2d(grid: int, dim: int):
    """(grid*grid, dim) 2-D sine-cosine position embeddings (MAE), row-major patch order:
    half the channels encode the row, half the column, each as sin/cos pairs of
    geometrically spaced frequencies."""
    import torch

    if dim % 4:
        raise ValueError(f"sine-cosine position embeddings need a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                            indexing="ij")
    def enc(pos):
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)
    return torch.cat([enc(ys), enc(xs)], dim=1)
