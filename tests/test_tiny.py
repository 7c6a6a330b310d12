"""Tiny checkpoints: loadable offline, deterministic, and guarded against the two vacuous-test traps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from resedis.testing.tiny import (
    TINY_BUILDERS,
    build_word_tokenizer,
    check_owl_checkpoint,
    check_tokenizer,
    main,
    make_tiny_checkpoints,
)
from resedis.testing.words import BASE_WORDS, vocabulary_words


def test_every_family_written_and_loadable(tiny_models):
    from transformers import AutoConfig, AutoProcessor

    assert set(tiny_models) == set(TINY_BUILDERS)
    assert {"owlv2", "owlvit", "clip", "siglip", "gdino", "sam"} <= set(tiny_models)
    model_types = {"gdino": "grounding-dino"}  # spec prefix -> transformers model_type
    max_text = {"gdino": 32}
    for family, path in tiny_models.items():
        assert path.name == family
        files = ["config.json", "model.safetensors"] + ([] if family == "sam" else ["tokenizer.json"])
        for name in files:
            assert (path / name).is_file(), f"{family}: {name} missing"
        assert AutoConfig.from_pretrained(path).model_type == model_types.get(family, family)
        processor = AutoProcessor.from_pretrained(path)
        if family != "sam":  # SAM has no text tower
            assert processor.tokenizer.model_max_length == max_text.get(family, 16)


def test_tokenizer_traps_are_avoided(tiny_models):
    from transformers import AutoProcessor

    tok = AutoProcessor.from_pretrained(tiny_models["owlv2"]).tokenizer
    words = vocabulary_words()
    ids = [tok(w)["input_ids"] for w in words]
    assert len({tuple(i) for i in ids}) == len(words)  # different words -> different ids
    assert all(i[0] != 0 for i in ids)  # OWL masks queries whose first id is 0
    assert all(tok.unk_token_id not in i for i in ids)
    assert tok.eos_token_id == max(tok.get_vocab().values())  # pooled at argmax(input_ids)
    # out-of-list words still tokenize without <unk> (byte-pair over the ASCII alphabet)
    assert tok.unk_token_id not in tok("zebra xylophone 42!")["input_ids"]
    config = json.loads((tiny_models["clip"] / "config.json").read_text())
    assert config["text_config"]["eos_token_id"] == tok.eos_token_id


def test_synth_vocabulary_is_covered():
    synth = pytest.importorskip("resedis.synth")
    vocab = getattr(synth, "VOCABULARY", None)
    if vocab is None:
        pytest.skip("resedis.synth.VOCABULARY not available yet")
    assert {w.lower() for w in vocab} <= set(vocabulary_words())


def test_guards_reject_vacuous_tokenizers():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # every word -> <unk>
    collapsing = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>"))
    collapsing.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=collapsing, unk_token="<unk>", pad_token="<pad>")
    with pytest.raises(RuntimeError):
        check_tokenizer(fast, ["red", "blue"])
    # first token id 0
    zero_first = Tokenizer(models.WordLevel({"red": 0, "blue": 1, "<unk>": 2}, unk_token="<unk>"))
    zero_first.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=zero_first, unk_token="<unk>")
    with pytest.raises(RuntimeError, match="first token id"):
        check_tokenizer(fast, ["red", "blue"])
    # the real one passes, including a word list with near-duplicates
    check_tokenizer(build_word_tokenizer(BASE_WORDS), ["red", "reds", "redder", "der"])


def test_owl_guard_catches_masked_and_identical_queries(tiny_models, tmp_path):
    """check_owl_checkpoint refuses a checkpoint whose queries start with id 0 (OWL masks them:
    every logit becomes the dtype minimum) and one that gives identical logits for two queries."""
    import shutil

    check_owl_checkpoint(tiny_models["owlv2"], "owlv2")  # the good one passes
    bad = tmp_path / "owlv2"
    shutil.copytree(tiny_models["owlv2"], bad)
    tok_json = json.loads((bad / "tokenizer.json").read_text())
    tok_json["post_processor"] = None  # no <bos>: a query starts with its first word...
    vocab = tok_json["model"]["vocab"]
    vocab["<pad>"], vocab["red"] = vocab["red"], 0  # ...and "red" now has id 0
    (bad / "tokenizer.json").write_text(json.dumps(tok_json))
    with pytest.raises(RuntimeError, match="first token id 0"):
        check_owl_checkpoint(bad, "owlv2", queries=("red", "blue"))
    with pytest.raises(RuntimeError, match="identical logits"):
        check_owl_checkpoint(tiny_models["owlv2"], "owlv2", queries=("a red circle", "A RED  circle"))


def test_deterministic_and_cli(tiny_models, tmp_path, capsys):
    from safetensors.numpy import load_file

    assert main([str(tmp_path), "--families", "owlvit,clip"]) == 0
    out = capsys.readouterr().out.split()
    assert out == [f"owlvit:{tmp_path / 'owlvit'}", f"clip:{tmp_path / 'clip'}"]
    for family in ("owlvit", "clip"):
        a = load_file(tiny_models[family] / "model.safetensors")
        b = load_file(tmp_path / family / "model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(ValueError, match="no tiny checkpoint builder"):
        make_tiny_checkpoints(tmp_path, ["nope"])


def test_tiny_checkpoint_loads_through_resolver(tiny_models):
    from resedis.models import load_model

    model = load_model(f"owlv2:{tiny_models['owlv2']}", device="cpu")
    assert model.spec == f"owlv2:{tiny_models['owlv2'].resolve()}"
    assert model.vector_dim == 33 and model.max_text_tokens == 16
