"""A light OWL text encoder: the text tower in numpy, loaded without torch or transformers.

A one-off ``resedis search`` needs one text vector ``[q̂, 1]`` (see :mod:`resedis.models.owl`).
Loading the full detector for it costs the ``torch`` + ``transformers`` import chain (8 s
measured, ``docs/benchmarks.md``) for milliseconds of arithmetic. This module computes
the same vector with numpy from the checkpoint's own files:

* ``tokenizer.json`` through the ``tokenizers`` library (the object transformers' own
  ``TokenizersBackend`` tokenizer wraps), with transformers' call settings: special tokens
  added, truncation to ``max_text_tokens`` (right), padding to exactly that length with the
  pad token (right); a ``CLIPTokenizer``-class checkpoint (as the hub's OWL models are) only
  when its ``tokenizer.json`` holds exactly the pipeline that class builds;
* ``model.safetensors`` (or shards named by ``model.safetensors.index.json``), memory-mapped:
  only the text tower's tensors are touched, only the rows of the token embedding a query
  uses are read;
* the CLIP-style text transformer of ``Owlv2TextTransformer`` / ``OwlViTTextTransformer``:
  token + position embeddings; per layer ``x += attn(LN1(x))`` with causal and padding
  masks, ``x += fc2(quick_gelu(fc1(LN2(x))))``; final LN; pooling at ``argmax(input_ids)``
  (the EOS token, as the model does); ``text_projection`` (no bias); then the model's
  normalisation ``t / |t|`` and the class head's ``q̂ = t / (|t| + 1e-6)``.

Arithmetic is float32 as in the model (bf16/f16 checkpoints are upcast as transformers'
float32 load does). ``tests/models/test_text_light.py`` proves the vectors equal
:meth:`OwlBackend.encode_texts` to float32 tolerance on the tiny random OWLv2 and OWL-ViT
checkpoints and on the bundled demo model.

What it does not support, it refuses with :class:`LightUnsupported` naming the reason
(the caller then loads the full backend): a checkpoint without ``model.safetensors``; a
tokenizer class other than ``TokenizersBackend`` or ``CLIPTokenizer`` (which rebuilds
its pipeline in code: accepted only when the file's pipeline equals that code's, see
:func:`clip_pipeline_mismatch`); an activation other than
``quick_gelu``; a family other than ``owlv2`` / ``owlvit``.

>>> enc = load_light_text_encoder("demo", demo_dir, "owlv2")  # doctest: +SKIP
>>> enc.encode_texts(["a red circle"]).shape                    # doctest: +SKIP
(1, 65)
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from resedis.errors import ResedisError

logger = logging.getLogger(__name__)

#: Changes whenever the arithmetic or tokenisation here changes (query caches key on it).
LIGHT_VERSION = "text-light-v1"
LIGHT_FAMILIES = ("owlv2", "owlvit")
SUPPORTED_TOKENIZER_CLASSES = ("TokenizersBackend", "CLIPTokenizer")
# transformers' CLIPTokenizer rebuilds this pipeline in code (models/clip/tokenization_clip.py);
# a tokenizer.json whose id-relevant parts equal it tokenises identically as saved.
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


class LightUnsupported(ResedisError):
    """The light encoder cannot reproduce this checkpoint exactly; ``str(exc)`` says why."""


# --------------------------------------------------------------------------- weights


def safetensors_header(path: str | os.PathLike) -> tuple[dict, int]:
    """``(header dict, byte offset of the data section)`` of a ``.safetensors`` file."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise LightUnsupported(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 * 2**20:
            raise LightUnsupported(f"{path}: safetensors header of {n} bytes; not a safetensors file")
        header = json.loads(fh.read(n).decode("utf-8"))
    return header, 8 + n


class SafetensorsFile:
    """Memory-mapped tensors of one ``.safetensors`` file, read on access (``file[name]``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.header, self.data_start = safetensors_header(self.path)
        self.header.pop("__metadata__", None)
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r")

    def __contains__(self, name: str) -> bool:
        return name in self.header

    def __getitem__(self, name: str) -> np.ndarray:
        """The tensor as a read-only array of its stored dtype (bf16 comes back as float32)."""
        info = self.header[name]
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise LightUnsupported(f"{self.path}: tensor {name} has dtype {info['dtype']}; light encoder reads F32/F16/BF16")
        begin, end = info["data_offsets"]
        raw = self._map[self.data_start + begin : self.data_start + end]
        arr = raw.view(dtype).reshape(info["shape"])
        if info["dtype"] == "BF16":  # bfloat16 = the high half of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr


def open_weights(weights_dir: Path) -> dict[str, SafetensorsFile]:
    """Tensor name -> the file holding it (``model.safetensors`` or its index's shards)."""
    single = weights_dir / "model.safetensors"
    index = weights_dir / "model.safetensors.index.json"
    if single.is_file():
        f = SafetensorsFile(single)
        return {name: f for name in f.header}
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = {name: SafetensorsFile(weights_dir / name) for name in set(weight_map.values())}
        return {tensor: files[name] for tensor, name in weight_map.items()}
    raise LightUnsupported(f"{weights_dir}: no model.safetensors (or sharded index); the light encoder reads safetensors only")


# --------------------------------------------------------------------------- tokenizer


def _token_text(value) -> str | None:
    """A special token as written in tokenizer_config.json (a string or an AddedToken dict)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def clip_pipeline_mismatch(tokenizer_json: dict, config: dict) -> str | None:
    """Where a ``tokenizer.json`` differs, in what decides token ids, from the pipeline
    transformers' ``CLIPTokenizer`` builds (normaliser NFC + whitespace + lowercase; CLIP's
    split regex + byte-level; BPE with ``</w>``; RoBERTa-style BOS/EOS); None when equal."""
    norm = tokenizer_json.get("normalizer") or {}
    expected_norm = [{"type": "NFC"}, {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "}, {"type": "Lowercase"}]
    if norm.get("type") != "Sequence" or norm.get("normalizers") != expected_norm:
        return f"normalizer {norm!r}"
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return f"pre_tokenizer {pre!r}"
    split, byte_level = steps
    if (split.get("type"), split.get("pattern"), split.get("behavior"), split.get("invert")) != (
        "Split", {"Regex": _CLIP_SPLIT}, "Removed", True
    ):
        return f"split step {split!r}"
    if byte_level.get("type") != "ByteLevel" or byte_level.get("add_prefix_space") or not byte_level.get("use_regex", True):
        return f"byte-level step {byte_level!r}"
    model = tokenizer_json.get("model") or {}
    if (model.get("type"), model.get("end_of_word_suffix"), model.get("continuing_subword_prefix") or "",
            bool(model.get("fuse_unk")), bool(model.get("byte_fallback")), model.get("dropout")) != ("BPE", "</w>", "", False, False, None):
        return "BPE model settings"
    if model.get("unk_token") != _token_text(config.get("unk_token", "<|endoftext|>")):
        return f"unk token {model.get('unk_token')!r}"
    post = tokenizer_json.get("post_processor") or {}
    vocab = model.get("vocab") or {}
    bos = _token_text(config.get("bos_token", "<|startoftext|>"))
    eos = _token_text(config.get("eos_token", "<|endoftext|>"))
    if post.get("type") != "RobertaProcessing" or post.get("cls") != [bos, vocab.get(bos)] or post.get("sep") != [eos, vocab.get(eos)]:
        return f"post_processor {post!r}"
    return None


class LightTokenizer:
    """``tokenizer.json`` with transformers' ``padding="max_length", truncation=True`` call."""

    def __init__(self, weights_dir: Path, max_length: int):
        from tokenizers import Tokenizer

        config_path = weights_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        cls = config.get("tokenizer_class")
        if cls not in SUPPORTED_TOKENIZER_CLASSES:
            raise LightUnsupported(
                f"{weights_dir}: tokenizer class {cls!r}; the light encoder reproduces {', '.join(SUPPORTED_TOKENIZER_CLASSES)} "
                "(tokenizer.json as saved) only"
            )
        path = weights_dir / "tokenizer.json"
        if not path.is_file():
            raise LightUnsupported(f"{weights_dir}: no tokenizer.json")
        pad = _token_text(config.get("pad_token"))
        if cls == "CLIPTokenizer":
            mismatch = clip_pipeline_mismatch(json.loads(path.read_text(encoding="utf-8")), config)
            if mismatch is not None:
                raise LightUnsupported(f"{weights_dir}: tokenizer.json differs from transformers' CLIPTokenizer pipeline ({mismatch})")
        tok = Tokenizer.from_file(str(path))
        pad_id = tok.token_to_id(pad) if pad is not None else None
        if pad_id is None:
            raise LightUnsupported(f"{weights_dir}: pad token {pad!r} is not in the vocabulary")
        if config.get("padding_side", "right") != "right" or config.get("truncation_side", "right") != "right":
            raise LightUnsupported(f"{weights_dir}: left padding/truncation is not reproduced by the light encoder")
        tok.no_padding()
        tok.no_truncation()
        self._plain = Tokenizer.from_str(tok.to_str())  # for the over-length warning
        tok.enable_truncation(max_length=max_length, strategy="longest_first", direction="right")
        tok.enable_padding(direction="right", pad_id=pad_id, pad_token=pad, length=max_length)
        self._tok = tok
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> (input_ids (Q, L) int64, attention_mask (Q, L) int64), L = max_length."""
        for text, enc in zip(texts, self._plain.encode_batch(list(texts))):
            if len(enc.ids) > self.max_length:
                logger.warning(
                    "query %r is %d tokens; truncated to the model's limit of %d", text, len(enc.ids), self.max_length
                )
        encs = self._tok.encode_batch(list(texts))
        ids = np.array([e.ids for e in encs], dtype=np.int64).reshape(len(encs), self.max_length)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64).reshape(len(encs), self.max_length)
        return ids, mask


# --------------------------------------------------------------------------- the tower


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + np.float32(eps)) * weight + bias


def _linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    y = x @ weight.T
    return y + bias if bias is not None else y


def _quick_gelu(x: np.ndarray) -> np.ndarray:
    return x * (np.float32(1.0) / (np.float32(1.0) + np.exp(np.float32(-1.702) * x)))


class LightTextEncoder:
    """TextEncoder for OWL checkpoints, in numpy (see the module docstring).

    ``encode_texts(texts) -> (Q, E+1)`` float32 ``[q̂, 1]``, equal to
    :meth:`resedis.models.owl.OwlBackend.encode_texts` to float32 tolerance.
    """

    kind = "text"

    def __init__(self, spec: str, family: str, weights_dir: Path, text_config: dict, weights: dict, prefix: str,
                 tokenizer: LightTokenizer):
        self.spec = spec
        self.family = family
        self.weights_dir = weights_dir
        self.heads = int(text_config["num_attention_heads"])
        self.eps = float(text_config.get("layer_norm_eps", 1e-5))
        self.tokenizer = tokenizer
        self.max_text_tokens = tokenizer.max_length
        t = f"{prefix}.text_model"

        def get(name: str) -> np.ndarray:
            if name not in weights:
                raise LightUnsupported(f"{weights_dir}: checkpoint has no tensor {name}")
            return weights[name][name]

        self._token_embedding = get(f"{t}.embeddings.token_embedding.weight")  # memmap: rows read on use
        self._position = np.asarray(get(f"{t}.embeddings.position_embedding.weight"), dtype=np.float32)
        n_layers = int(text_config["num_hidden_layers"])
        names = ["layer_norm1.weight", "layer_norm1.bias", "layer_norm2.weight", "layer_norm2.bias"] + [
            f"{m}.{p}" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                                 "mlp.fc1", "mlp.fc2") for p in ("weight", "bias")
        ]
        self._layers = [
            {n: np.asarray(get(f"{t}.encoder.layers.{i}.{n}"), dtype=np.float32) for n in names} for i in range(n_layers)
        ]
        self._final_ln = (np.asarray(get(f"{t}.final_layer_norm.weight"), dtype=np.float32),
                          np.asarray(get(f"{t}.final_layer_norm.bias"), dtype=np.float32))
        self._projection = np.asarray(get(f"{prefix}.text_projection.weight"), dtype=np.float32)
        self.embed_dim = int(self._projection.shape[0])
        self.vector_dim = self.embed_dim + 1
        width = int(self._position.shape[1])
        if width % self.heads:
            raise LightUnsupported(f"{weights_dir}: hidden size {width} not divisible by {self.heads} heads")
        if self._position.shape[0] < self.max_text_tokens:
            raise LightUnsupported(f"{weights_dir}: {self._position.shape[0]} positions < {self.max_text_tokens} tokens")

    def text_features(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(Q, L) ids + mask -> (Q, E) projected EOS features (``get_text_features``)."""
        q, length = input_ids.shape
        x = np.asarray(self._token_embedding[input_ids.reshape(-1)], dtype=np.float32).reshape(q, length, -1)
        x = x + self._position[:length]
        width = x.shape[-1]
        dh = width // self.heads
        allowed = np.tril(np.ones((length, length), dtype=bool))[None, None] & (attention_mask[:, None, None, :] > 0)
        additive = np.where(allowed, np.float32(0.0), np.float32(-np.inf)).astype(np.float32)
        scale = np.float32(dh**-0.5)
        for p in self._layers:
            h = _layer_norm(x, p["layer_norm1.weight"], p["layer_norm1.bias"], self.eps)
            qh = _linear(h, p["self_attn.q_proj.weight"], p["self_attn.q_proj.bias"]).reshape(q, length, self.heads, dh)
            kh = _linear(h, p["self_attn.k_proj.weight"], p["self_attn.k_proj.bias"]).reshape(q, length, self.heads, dh)
            vh = _linear(h, p["self_attn.v_proj.weight"], p["self_attn.v_proj.bias"]).reshape(q, length, self.heads, dh)
            qh, kh, vh = (a.transpose(0, 2, 1, 3) for a in (qh, kh, vh))
            scores = (qh @ kh.transpose(0, 1, 3, 2)) * scale + additive
            scores = scores - scores.max(axis=-1, keepdims=True)
            weights = np.exp(scores)
            weights /= weights.sum(axis=-1, keepdims=True)
            attn = (weights @ vh).transpose(0, 2, 1, 3).reshape(q, length, width)
            x = x + _linear(attn, p["self_attn.out_proj.weight"], p["self_attn.out_proj.bias"])
            h = _layer_norm(x, p["layer_norm2.weight"], p["layer_norm2.bias"], self.eps)
            h = _linear(_quick_gelu(_linear(h, p["mlp.fc1.weight"], p["mlp.fc1.bias"])), p["mlp.fc2.weight"], p["mlp.fc2.bias"])
            x = x + h
        x = _layer_norm(x, *self._final_ln, self.eps)
        pooled = x[np.arange(q), input_ids.argmax(axis=-1)]  # the EOS token: the highest id, as the model pools
        return _linear(pooled, self._projection)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (Q, E+1) float32 ``[q̂, 1]`` (see :meth:`OwlBackend.encode_texts`)."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of strings")
        if len(texts) == 0:
            return np.zeros((0, self.vector_dim), np.float32)
        ids, mask = self.tokenizer(texts)
        t = self.text_features(ids, mask)
        t = t / np.linalg.norm(t, ord=2, axis=-1, keepdims=True)  # Owl*Model.forward
        q = t / (np.linalg.norm(t, axis=-1, keepdims=True) + np.float32(1e-6))  # class head
        return np.concatenate([q, np.ones((q.shape[0], 1), np.float32)], axis=1).astype(np.float32)


def light_unsupported_reason(weights_dir: str | os.PathLike, family: str) -> str | None:
    """Why the light encoder cannot serve the checkpoint at ``weights_dir``, judged from its
    small JSON files alone; None when it can (a problem found only in the weights file is
    raised by :func:`load_light_text_encoder`). Cheap: imports nothing."""
    root = Path(weights_dir)
    if family not in LIGHT_FAMILIES:
        return f"family {family!r} has no light text encoder (only {', '.join(LIGHT_FAMILIES)})"
    try:
        tok_config = json.loads((root / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return f"{root}: no readable tokenizer_config.json"
    cls = tok_config.get("tokenizer_class")
    if cls not in SUPPORTED_TOKENIZER_CLASSES:
        return (f"tokenizer class {cls!r}; the light encoder reproduces {', '.join(SUPPORTED_TOKENIZER_CLASSES)} "
                "(tokenizer.json as saved) only")
    if not (root / "model.safetensors").is_file() and not (root / "model.safetensors.index.json").is_file():
        return f"{root}: no model.safetensors (the light encoder reads safetensors only)"
    if cls == "CLIPTokenizer":
        try:
            mismatch = clip_pipeline_mismatch(json.loads((root / "tokenizer.json").read_text(encoding="utf-8")), tok_config)
        except (OSError, ValueError):
            return f"{root}: no readable tokenizer.json"
        if mismatch is not None:
            return f"{root}: tokenizer.json differs from transformers' CLIPTokenizer pipeline ({mismatch})"
    return None


def load_light_text_encoder(spec: str, weights_dir: str | os.PathLike, family: str) -> LightTextEncoder:
    """The light encoder of the checkpoint at ``weights_dir`` (a resolved local directory),
    or :class:`LightUnsupported` saying why it cannot reproduce it exactly."""
    root = Path(weights_dir)
    if family not in LIGHT_FAMILIES:
        raise LightUnsupported(f"{spec}: family {family!r} has no light text encoder (only {', '.join(LIGHT_FAMILIES)})")
    try:
        config = json.loads((root / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise LightUnsupported(f"{root}: cannot read config.json ({exc})") from None
    if config.get("model_type") != family:
        raise LightUnsupported(f"{root}: config.json is a {config.get('model_type')!r} checkpoint, not {family!r}")
    text_config = config.get("text_config") or {}
    act = text_config.get("hidden_act", "quick_gelu")
    if act != "quick_gelu":
        raise LightUnsupported(f"{root}: text activation {act!r}; the light encoder implements quick_gelu only")
    for key in ("num_attention_heads", "num_hidden_layers", "max_position_embeddings"):
        if key not in text_config:
            raise LightUnsupported(f"{root}: config.json text_config lacks {key!r}")
    text_max = int(text_config["max_position_embeddings"])
    tok_config_path = root / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text()) if tok_config_path.is_file() else {}
    tok_max = tok_config.get("model_max_length") or text_max
    tokenizer = LightTokenizer(root, int(min(text_max, int(tok_max))))
    return LightTextEncoder(spec, family, root, text_config, open_weights(root), family, tokenizer)


__all__ = [
    "LIGHT_VERSION",
    "LIGHT_FAMILIES",
    "LightUnsupported",
    "clip_pipeline_mismatch",
    "LightTextEncoder",
    "LightTokenizer",
    "SafetensorsFile",
    "light_unsupported_reason",
    "load_light_text_encoder",
]
