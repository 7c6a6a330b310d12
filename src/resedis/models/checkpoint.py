"""The one checkpoint loader (every backend and fine-tuning) and the checkpoint metadata file.

:func:`load_checkpoint` loads a transformers model class and its processor from a local
checkpoint directory (found by :func:`resedis.models.resolver.resolve_weights`). The
processor is always pinned the same way — ``AutoProcessor.from_pretrained(dir,
backend="pil")``: the PIL image processors — so inference (OWL, CLIP/SigLIP, Grounding
DINO, SAM) and fine-tuning (:func:`resedis.finetune.load_detector`) preprocess pixels
identically, whether or not torchvision is installed.

Checkpoint metadata: ``resedis finetune`` writes :data:`CHECKPOINT_META`
(``resedis_checkpoint.json``: presence threshold, validation metrics, history) next to
the weights. Checkpoints written before it had its own name hold the same record as
``resedis.json`` (:data:`LEGACY_CHECKPOINT_META`, also the index manifest's name); it
is still read (:func:`checkpoint_meta_path`), the new name first.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Mapping

from resedis.errors import ResedisError

CHECKPOINT_META = "resedis_checkpoint.json"
LEGACY_CHECKPOINT_META = "resedis.json"


def checkpoint_meta_path(model_dir: str | Path) -> Path | None:
    """The checkpoint metadata file in ``model_dir`` (:data:`CHECKPOINT_META`, else the
    pre-rename :data:`LEGACY_CHECKPOINT_META`), or None when there is neither."""
    for name in (CHECKPOINT_META, LEGACY_CHECKPOINT_META):
        path = Path(model_dir) / name
        if path.is_file():
            return path
    return None


def read_checkpoint_meta(model_dir: str | Path) -> dict | None:
    """The checkpoint metadata of ``model_dir`` as a dict (None when there is none).
    Raises ResedisError naming the file when it is not a JSON object."""
    path = checkpoint_meta_path(model_dir)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResedisError(f"{path}: unreadable checkpoint metadata ({exc}); fix or remove it") from None
    if not isinstance(data, dict):
        raise ResedisError(f"{path}: checkpoint metadata must be a JSON object")
    return data


def checkpoint_model_type(path: str | Path) -> str | None:
    """``model_type`` of ``path/config.json`` (ResedisError when it is missing or not JSON)."""
    config = Path(path) / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResedisError(f"{config}: cannot read the checkpoint's config ({exc})") from None
    return data.get("model_type") if isinstance(data, dict) else None


def load_processor(path: str | Path):
    """The checkpoint's processor, pinned to the PIL image processors (module docstring)."""
    from transformers import AutoProcessor

    with quiet_transformers():
        return AutoProcessor.from_pretrained(str(path), backend="pil")


def load_checkpoint(
    path: str | Path,
    model_classes: Mapping[str, str],
    *,
    spec: str | None = None,
    device=None,
    dtype=None,
):
    """Load the model and its processor from the local checkpoint directory ``path``.

    ``model_classes``: ``{model_type: transformers class name}`` this caller accepts
    (e.g. ``{"owlv2": "Owlv2ForObjectDetection"}``); ``path/config.json``'s ``model_type``
    picks the class, any other model type is a ResedisError naming ``spec`` (for the
    message; default: the path) and, when it is a known family, the prefix to use.
    The model is loaded in ``dtype`` (default float32), moved to ``device`` (None: left on
    the CPU) and put in eval mode; the processor comes from :func:`load_processor`.
    -> ``(model, processor)``.
    """
    import torch
    import transformers

    path = Path(path)
    model_type = checkpoint_model_type(path)
    if model_type not in model_classes:
        hint = f"; use the matching family prefix (e.g. {model_type}:{path.resolve()})" if model_type else ""
        raise ResedisError(
            f"{spec or path}: {path}/config.json is a {model_type!r} checkpoint, not "
            f"{' / '.join(repr(t) for t in model_classes)}{hint}"
        )
    with quiet_transformers():
        model = getattr(transformers, model_classes[model_type]).from_pretrained(str(path), dtype=dtype or torch.float32)
    if device is not None:
        model = model.to(device)
    return model.eval(), load_processor(path)


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' per-load progress bars and info chatter (warnings and errors stay)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_warning()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
