"""Shared fixtures. Tests run offline: no download may ever be attempted."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-init checkpoints, one directory per backend (``{"owlv2": Path, ...}``)."""
    from resedis.testing.tiny import make_tiny_checkpoints

    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> Path:
    """A small synthetic ReSeDis-format corpus (24 images, 30 queries, 4 absent)."""
    from resedis.synth import generate

    out = tmp_path_factory.mktemp("synth_small")
    generate(out, images=24, queries=30, absent=4, seed=1234)
    return out


@pytest.fixture(scope="module")
def owlv2_spec(tiny_models) -> str:
    """The model spec of the tiny OWLv2 checkpoint."""
    return f"owlv2:{tiny_models['owlv2']}"


@pytest.fixture(scope="module")
def encoder(owlv2_spec):
    """The tiny OWLv2 region encoder, loaded once per test module (CPU)."""
    from resedis.models import load_model

    return load_model(owlv2_spec, "cpu")


@pytest.fixture(scope="session")
def pipe_env(tmp_path_factory):
    """The pipeline tests' shared tiny models, synthetic corpus and index (``pipekit.Env``)."""
    import pipekit

    return pipekit.env(tmp_path_factory.mktemp("pipetest"))
