"""One place that finds model weights and resolves devices.

A model spec is ``family:source`` (see :mod:`resedis.models.spec`, which decides from
how the source is written whether it is a local directory or a hub id). Weights are found:

1. for a local directory (``owlv2:/path/to/dir``, ``owlv2:./dir``,
   ``owlv2:local-dir:dir``): there, and only there — it must hold ``config.json``;
2. for a hub id: the local Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``), without
   network, then a hub download, only when allowed: never when ``HF_HUB_OFFLINE=1`` (or
   ``allow_download=False``). A folder of the same name in the working directory is never
   used for a hub id; when the hub lookup fails and such a folder exists, the error says
   how to write the spec to use it.

Nothing here touches the network at import time; ``huggingface_hub`` and ``torch`` are
imported inside the functions.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from resedis.errors import ResedisError, WeightsNotFoundError
from resedis.models.spec import LOCAL_PREFIX, ModelSpec, parse_spec

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}
# Files worth fetching from a hub repo (skips duplicate TF/Flax/ONNX weights).
_DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.bin", "*.py"]


def hub_offline() -> bool:
    """True when the environment forbids hub access (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def resolve_weights(spec: str | ModelSpec, *, allow_download: bool | None = None) -> Path:
    """Return the local directory holding the weights of ``spec``.

    ``allow_download=None`` means: download only if ``HF_HUB_OFFLINE`` is not set.
    Raises :class:`WeightsNotFoundError` naming the spec, every place searched and how
    to supply the weights.
    """
    spec = parse_spec(spec)
    source = spec.source
    searched: list[str] = []

    if spec.local:
        path = Path(source).expanduser().resolve()
        if path.is_dir() and (path / "config.json").is_file():
            return path
        if path.is_dir():
            searched.append(f"local directory {path} (exists, but has no config.json)")
        else:
            searched.append(f"local directory {path} (does not exist)")
        raise WeightsNotFoundError(_not_found_message(spec, searched, local=True))

    same_name = Path(source).expanduser()
    shadowed = same_name.is_dir()  # only ever used for the hint: a hub id never reads it
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        snapshot_download = None

    if snapshot_download is not None:
        cache = _hub_cache_dir()
        try:
            path = Path(snapshot_download(source, local_files_only=True))
            if (path / "config.json").is_file():
                if shadowed:
                    log.warning("%s: using the Hugging Face hub model %r; the folder %s in the working "
                                "directory is not used (write %s:./%s or %s:%s%s for it)", spec, source,
                                same_name.resolve(), spec.family, source, spec.family, LOCAL_PREFIX, source)
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
    raise WeightsNotFoundError(_not_found_message(spec, searched, local=False, shadowed=shadowed))


def _not_found_message(spec: ModelSpec, searched: list[str], *, local: bool, shadowed: bool = False) -> str:
    lines = [f"weights for model {spec} not found.", "Searched:"]
    lines += [f"  - {s}" for s in searched]
    lines.append("To fix, do one of:")
    if shadowed:
        lines.append(
            f"  - {spec.source!r} was read as a Hugging Face hub id (a source without ./, ../, ~ or / is one), "
            f"but a folder {Path(spec.source).expanduser().resolve()} exists here: to use that folder write "
            f"--model {spec.family}:./{spec.source} (or {spec.family}:{LOCAL_PREFIX}{spec.source})"
        )
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
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ResedisError(f"device {device!r} requested but MPS is not available here; use --device cpu")
    return dev
