"""The light numpy text encoder against transformers' own OWL text path.

Reference: :meth:`OwlBackend.encode_texts` (transformers ``get_text_features`` + the
model's and class head's normalisation) on the tiny random OWLv2 / OWL-ViT checkpoints
and the bundled demo model. Tolerance: |Δ| <= 1e-5 per component of the unit vector
(two float32 evaluations of the same sums in a different order; measured ~2e-7).
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from resedis.demo import demo_model_dir
from resedis.models import load_model
from resedis.models.text_light import LightUnsupported, light_unsupported_reason, load_light_text_encoder

TEXTS = [
    "a red circle",
    "the large red diamond",
    "A BLUE square left of  the tiny green triangle behind the big thing next to the other thing",  # > 16 tokens
    "zzz qqq unknownword",
    "x",
    "ünïcode ﬁ café, punctuation!?",
    "circle " * 30,
]


@pytest.fixture(scope="module", params=["owlv2", "owlvit", "demo"])
def pair(request, tiny_models):
    if request.param == "demo":
        family, path = "owlv2", demo_model_dir()
    else:
        family, path = request.param, tiny_models[request.param]
    spec = f"{family}:{path}"
    return load_model(spec, "cpu"), load_light_text_encoder(spec, path, family)


def test_tokens_equal_transformers(pair):
    full, light = pair
    ids_full, mask_full = (t.numpy() for t in full._tokenize(TEXTS))
    ids_light, mask_light = light.tokenizer(TEXTS)
    np.testing.assert_array_equal(ids_light, ids_full)
    np.testing.assert_array_equal(mask_light, mask_full)
    assert light.max_text_tokens == full.max_text_tokens


def test_vectors_equal_transformers(pair):
    full, light = pair
    expected = full.encode_texts(TEXTS)
    got = light.encode_texts(TEXTS)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert light.vector_dim == full.vector_dim
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # not trivially equal: different texts give different vectors
    assert np.abs(got[0] - got[1]).max() > 1e-3


def test_text_features_equal_get_text_features(pair):
    """Before normalisation too: the projected EOS features themselves."""
    import torch

    full, light = pair
    ids, mask = light.tokenizer(TEXTS[:3])
    with torch.inference_mode():
        res = full._base.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    ref = (res if isinstance(res, torch.Tensor) else res.pooler_output).numpy()
    got = light.text_features(ids, mask)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_overlong_query_warns_like_transformers(pair, caplog):
    _, light = pair
    with caplog.at_level(logging.WARNING, logger="resedis.models.text_light"):
        light.encode_texts([TEXTS[2]])
    assert any("truncated to the model's limit of 16" in r.getMessage() for r in caplog.records)


def test_float16_checkpoint_upcast_like_transformers(tiny_models, tmp_path):
    """A float16 safetensors checkpoint: transformers loads it upcast to float32; so do we."""
    import torch
    from safetensors.torch import load_file, save_file

    src = tiny_models["owlv2"]
    dst = tmp_path / "owlv2_f16"
    shutil.copytree(src, dst)
    tensors = load_file(str(src / "model.safetensors"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, str(dst / "model.safetensors"))
    spec = f"owlv2:{dst}"
    full = load_model(spec, "cpu")
    assert next(full.model.parameters()).dtype == torch.float32
    light = load_light_text_encoder(spec, dst, "owlv2")
    np.testing.assert_allclose(light.encode_texts(TEXTS), full.encode_texts(TEXTS), rtol=0, atol=1e-5)


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    for key, value in changes.items():
        target = data
        *parents, leaf = key.split("__")
        for p in parents:
            target = target[p]
        target[leaf] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda d: _edit_json(d / "tokenizer_config.json", tokenizer_class="BertTokenizer"), "tokenizer class 'BertTokenizer'"),
        (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
    ],
    ids=["bert-tokenizer-class", "no-safetensors"],
)
def test_unsupported_checkpoints_say_why(tiny_models, tmp_path, edit, needle):
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_models["owlv2"], dst)
    assert light_unsupported_reason(dst, "owlv2") is None
    edit(dst)
    reason = light_unsupported_reason(dst, "owlv2")
    assert reason is not None and needle in reason
    with pytest.raises(LightUnsupported, match=needle.split("'")[0].strip()):
        load_light_text_encoder(f"owlv2:{dst}", dst, "owlv2")


def test_unsupported_activation_and_family(tiny_models, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_models["owlv2"], dst)
    _edit_json(dst / "config.json", text_config__hidden_act="gelu")
    with pytest.raises(LightUnsupported, match="quick_gelu"):
        load_light_text_encoder(f"owlv2:{dst}", dst, "owlv2")
    assert "no light text encoder" in light_unsupported_reason(tiny_models["clip"], "clip")


@pytest.fixture(scope="module")
def clip_tokenizer_checkpoint(tiny_models, tmp_path_factory):
    """The tiny OWLv2 with a CLIP byte-level BPE tokenizer saved by transformers'
    ``CLIPTokenizer`` (tokenizer_class CLIPTokenizer, as the hub's OWL checkpoints)."""
    from transformers import CLIPTokenizer

    dst = tmp_path_factory.mktemp("clip_tok") / "owlv2"
    shutil.copytree(tiny_models["owlv2"], dst)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (dst / name).unlink()
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab: dict[str, int] = {}
    for tok in ["!", "'", "s", "-"] + list(letters) + [c + "</w>" for c in letters] + [
        "re", "red</w>", "ci", "cir", "circ", "circle</w>", "th", "the</w>", "<|startoftext|>", "<|endoftext|>"
    ]:
        vocab.setdefault(tok, len(vocab))
    merges = [("r", "e"), ("re", "d</w>"), ("c", "i"), ("ci", "r"), ("cir", "c"), ("t", "h"), ("th", "e</w>")]
    CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=16).save_pretrained(dst)
    assert json.loads((dst / "tokenizer_config.json").read_text())["tokenizer_class"] == "CLIPTokenizer"
    return dst


CLIP_TEXTS = ["the red circle", "Red  CIRCLE!", "zz-top 's red", "ünïcode café", "the " * 20, "x"]


def test_clip_tokenizer_class_equals_transformers(clip_tokenizer_checkpoint):
    spec = f"owlv2:{clip_tokenizer_checkpoint}"
    full = load_model(spec, "cpu")
    assert type(full.processor.tokenizer).__name__ == "CLIPTokenizer"
    assert light_unsupported_reason(clip_tokenizer_checkpoint, "owlv2") is None
    light = load_light_text_encoder(spec, clip_tokenizer_checkpoint, "owlv2")
    ids_full, mask_full = (t.numpy() for t in full._tokenize(CLIP_TEXTS))
    ids_light, mask_light = light.tokenizer(CLIP_TEXTS)
    np.testing.assert_array_equal(ids_light, ids_full)
    np.testing.assert_array_equal(mask_light, mask_full)
    assert len(set(map(tuple, ids_full.tolist()))) == len(CLIP_TEXTS)  # the texts really tokenise differently
    np.testing.assert_allclose(light.encode_texts(CLIP_TEXTS), full.encode_texts(CLIP_TEXTS), rtol=0, atol=1e-5)


def test_clip_tokenizer_json_with_another_pipeline_is_refused(clip_tokenizer_checkpoint, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(clip_tokenizer_checkpoint, dst)
    data = json.loads((dst / "tokenizer.json").read_text())
    data["normalizer"]["normalizers"] = data["normalizer"]["normalizers"][:2]  # no lowercasing
    (dst / "tokenizer.json").write_text(json.dumps(data))
    reason = light_unsupported_reason(dst, "owlv2")
    assert reason is not None and "CLIPTokenizer pipeline (normalizer" in reason
    with pytest.raises(LightUnsupported, match="CLIPTokenizer pipeline"):
        load_light_text_encoder(f"owlv2:{dst}", dst, "owlv2")
