"""One place that finds model weights and resolves devices.

A model spec is ``family:source`` (see :func:`resedis.models.parse_spec`). The source is
looked up in this order:

1. an explicit local directory (``owlv2:/path/to/dir``) — it must hold ``config.json``;
2. the local Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``), without network;
3. a hub download, only when allowed: never when ``HF_HUB_OFFLINE=1`` (or
   ``allow_download=False``).

Nothing here touches the network at import time; ``huggingface_hub`` and ``torch`` are
imported inside the functions.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from resedis.errors import ResedisError, WeightsNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import torch

_TRUE = {"1", "true", "yes", "on"}
# Files worth fetching from a hub repo (skips duplicate TF/Flax/ONNX weights).
_DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.bin", "*.py"]


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: ``family`` (registry key) and ``source`` (hub id or local dir).

    ``alias``: the registered short name this spec was written as (``demo``: the bundled
    model, ``owlv2:<package>/assets/demo_model``); it is what ``str()`` gives, so an index
    records ``demo`` and still finds the model after the package moves.
    """

    family: str
    source: str
    alias: str | None = None

    def __str__(self) -> str:
        return self.alias or f"{self.family}:{self.source}"


def hub_offline() -> bool:
    """True when the environment forbids hub access (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_like_path(source: str) -> bool:
    """A source is a local path when it exists or is written like one (``/``, ``./``, ``~``)."""
    return (
        source.startswith(("/", "./", "../", "~", "\\"))
        or source in (".", "..")
        or Path(source).expanduser().exists()
    )


def _hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def resolve_weights(spec: str | ModelSpec, *, allow_download: bool | None = None) -> Path:
    """Return the local directory holding the weights of ``spec``.

    ``allow_download=None`` means: download only if ``HF_HUB_OFFLINE`` is not set.
    Raises :class:`WeightsNotFoundError` naming the spec, every place searched and how
    to supply the weights.
    """
    if isinstance(spec, str):
        from resedis.models import parse_spec

        spec = parse_spec(spec)
    source = spec.source
    searched: list[str] = []

    if looks_like_path(source):
        path = Path(source).expanduser().resolve()
        if path.is_dir() and (path / "config.json").is_file():
            return path
        if path.is_dir():
            searched.append(f"local directory {path} (exists, but has no config.json)")
        else:
            searched.append(f"local directory {path} (does not exist)")
        raise WeightsNotFoundError(_not_found_message(spec, searched, local=True))

    searched.append(f"local directory {Path(source).resolve()} (does not exist; treating {source!r} as a hub id)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        snapshot_download = None

    if snapshot_download is not None:
        cache = _hub_cache_dir()
        try:
            path = Path(snapshot_download(source, local_files_only=True))
            if (path / "config.json").is_file():
                return path
            searched.append(f"Hugging Face cache {cache} (snapshot of {source!r} has no config.json)")
        except Exception:  # noqa: BLE001 - any failure means "not in the cache"
            searched.append(f"Hugging Face cache {cache} (no snapshot of {source!r})")

        if allow_download is None:
            allow_download = not hub_offline()
        if allow_download:
            try:
                path = Path(snapshot_download(source, allow_patterns=_DOWNLOAD_PATTERNS))
                if (path / "config.json").is_file():
                    return path
                searched.append(f"Hugging Face hub {source!r} (downloaded, but no config.json)")
            except Exception as exc:  # noqa: BLE001 - report, don't crash with a hub traceback
                searched.append(f"Hugging Face hub {source!r} (download failed: {type(exc).__name__}: {exc})")
        else:
            searched.append(f"Hugging Face hub {source!r} (not tried: downloads disabled by HF_HUB_OFFLINE)")
    else:  # pragma: no cover
        searched.append("Hugging Face cache/hub (huggingface_hub is not installed)")
    raise WeightsNotFoundError(_not_found_message(spec, searched, local=False))


def _not_found_message(spec: ModelSpec, searched: list[str], *, local: bool) -> str:
    lines = [f"weights for model {spec} not found.", "Searched:"]
    lines += [f"  - {s}" for s in searched]
    lines.append("To fix, do one of:")
    if spec.alias == "demo":
        lines.append("  - reinstall resedis (the bundled demo model ships in resedis/assets/demo_model), "
                     "or retrain it: INSTALL=1 scripts/train_demo_model.sh")
    lines.append(
        f"  - pass a local directory holding config.json and the weights: --model {spec.family}:/path/to/dir"
    )
    if not local:
        lines.append(
            "  - point HF_HOME (or HF_HUB_CACHE) at a Hugging Face cache that already holds "
            f"{spec.source!r}"
        )
        lines.append(f"  - with network access and HF_HUB_OFFLINE unset, rerun to download {spec.source!r}")
    return "\n".join(lines)


def resolve_device(device: "str | torch.device | None" = None) -> "torch.device":
    """The one place devices are resolved: None -> cuda if available else cpu.

    Raises :class:`ResedisError` for an unknown device string or an unavailable CUDA/MPS.
    """
    import torch

    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "auto")):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ResedisError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps ({exc})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ResedisError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ResedisError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ResedisError(f"device {device!r} requested but MPS is not available here; use --device cpu")
    return dev


def load_checkpoint(spec: str, family: str, path: Path, model_class: str, device, dtype=None):
    """Load ``transformers.<model_class>`` and its processor from the local checkpoint ``path``.

    ``path/config.json`` must declare ``model_type == family`` (else ResedisError naming
    the spec and the prefix to use). The model is loaded in ``dtype`` (default float32),
    moved to ``device`` and put in eval mode; the processor is pinned to the PIL image
    processors, so pixels do not depend on whether torchvision is installed.
    -> ``(model, processor)``.
    """
    import json

    import torch
    import transformers
    from transformers import AutoProcessor

    model_type = json.loads((Path(path) / "config.json").read_text()).get("model_type")
    if model_type != family:
        raise ResedisError(
            f"{spec}: {path}/config.json is a {model_type!r} checkpoint, not {family!r}; "
            f"use the matching family prefix (e.g. {model_type}:{path})"
        )
    with quiet_transformers():
        model = getattr(transformers, model_class).from_pretrained(str(path), dtype=dtype or torch.float32)
        model = model.to(device).eval()
        processor = AutoProcessor.from_pretrained(str(path), backend="pil")
    return model, processor


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
