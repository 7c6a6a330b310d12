"""Weights fingerprints: which weights an index's region vectors came from.

A model spec (``demo``, ``owlv2:/path/to/dir``, ``owlv2:google/owlv2-base-patch16-ensemble``)
names *where* weights live, not *which* weights: retraining the bundled demo model or
rerunning ``resedis finetune`` into the same directory keeps the spec and changes the
model. The index manifest therefore also records :func:`weights_fingerprint` of the
resolved weights directory, and searching or adding to an index checks it
(:func:`resedis.index.store.check_weights`).

What the fingerprint covers — exactly these files directly inside the weights directory
(not its subfolders, e.g. ``resedis finetune``'s ``last/`` resume point):

- ``config.json`` (architecture: a different config is a different model),
- every ``*.safetensors`` and ``*.bin`` file (the weights, including shards), and
- the processor configuration (:data:`PROCESSOR_FILES`: ``preprocessor_config.json``,
  ``processor_config.json``, the tokenizer files, and ``*.model`` sentencepiece files):
  the same weights fed other pixels or other token ids are another model.

Not covered: the checkpoint metadata (``resedis_checkpoint.json`` / ``resedis.json``:
the presence threshold and training record), nor anything else.

Version 1 (``resedis-weights-v1``, written before processor files were covered) hashed
only ``config.json`` and the weights. Indexes record such fingerprints;
:func:`fingerprint_matches` accepts a stored fingerprint of either version (an old
index's processor is still checked, by its recorded ``preprocessing``).

Per file, a digest:

- files up to :data:`CONTENT_HASH_MAX_BYTES` (64 MiB): ``content:<sha256 of the bytes>``;
- larger files in a Hugging Face cache snapshot (``.../models--ORG--NAME/snapshots/<commit>/``):
  the hub names LFS blobs by the sha256 of their content, so when the file links to
  ``blobs/<64 hex>`` the digest is ``content:<that hex>`` (the same value hashing would
  give, without reading the file); otherwise ``revision:<commit>:size:<bytes>``;
- larger files elsewhere: ``stat:size:<bytes>:mtime_ns:<ns>:ends:<sha256 of the first and
  last 1 MiB>`` (so copying such a directory without preserving mtimes changes it).

The fingerprint is ``"sha256:" + sha256("resedis-weights-v2\\n" + "<name>\\t<digest>\\n" for
each file sorted by name)``. Per-file digests are memoised in-process by (path, size,
mtime_ns, inode), so opening an index twice does not rehash.

>>> weights_fingerprint("src/resedis/assets/demo_model")  # doctest: +SKIP
'sha256:3f1c...'
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path

from resedis.errors import ResedisError
from resedis.models.resolver import resolve_weights

CONTENT_HASH_MAX_BYTES = 64 * 2**20
END_BYTES = 2**20
WEIGHT_SUFFIXES = (".safetensors", ".bin")
PROCESSOR_FILES = frozenset({
    "preprocessor_config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
})
PROCESSOR_SUFFIXES = (".model",)  # sentencepiece vocabularies
VERSION = "resedis-weights-v2"
LEGACY_VERSION = "resedis-weights-v1"  # config.json + weights only
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")

_memo: dict[tuple[str, int, int, int], str] = {}
_memo_lock = threading.Lock()


def _is_weights_file(name: str) -> bool:
    return name == "config.json" or name.endswith(WEIGHT_SUFFIXES)


def _is_processor_file(name: str) -> bool:
    return name in PROCESSOR_FILES or name.endswith(PROCESSOR_SUFFIXES)


def covered_files(weights_dir: str | os.PathLike, version: str = VERSION) -> list[Path]:
    """The files directly in ``weights_dir`` that fingerprint ``version`` covers, sorted by
    name: ``config.json``, ``*.safetensors`` / ``*.bin`` and (v2) the processor files."""
    if version not in (VERSION, LEGACY_VERSION):
        raise ValueError(f"unknown fingerprint version {version!r}")
    root = Path(weights_dir)
    files = [
        p for p in root.iterdir()
        if p.is_file() and (_is_weights_file(p.name) or (version == VERSION and _is_processor_file(p.name)))
    ]
    return sorted(files, key=lambda p: p.name)


def _hash_content(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(4 * 2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_ends(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(END_BYTES))
        if size > END_BYTES:
            fh.seek(max(END_BYTES, size - END_BYTES))
            digest.update(fh.read(END_BYTES))
    return digest.hexdigest()


def _hub_revision(weights_dir: Path) -> str | None:
    """The commit hash when ``weights_dir`` is a Hugging Face cache snapshot folder, else None."""
    if weights_dir.parent.name == "snapshots" and weights_dir.parent.parent.name.startswith("models--"):
        if _HEX40.fullmatch(weights_dir.name):
            return weights_dir.name
    return None


def _file_digest(path: Path, size: int, mtime_ns: int, revision: str | None) -> str:
    if size <= CONTENT_HASH_MAX_BYTES:
        return "content:" + _hash_content(path)
    if revision is not None:
        blob = Path(os.path.realpath(path))
        if blob.parent.name == "blobs" and _HEX64.fullmatch(blob.name):
            return "content:" + blob.name
        return f"revision:{revision}:size:{size}"
    return f"stat:size:{size}:mtime_ns:{mtime_ns}:ends:{_hash_ends(path, size)}"


def weights_fingerprint(weights_dir: str | os.PathLike, version: str = VERSION) -> str:
    """``"sha256:<64 hex>"`` of the weights and processor configuration in the directory
    ``weights_dir`` (see the module docstring for exactly which files and how; ``version``:
    :data:`LEGACY_VERSION` gives the v1 fingerprint older indexes recorded). Raises
    ResedisError when the directory holds neither ``config.json`` nor a weight file."""
    root = Path(weights_dir).expanduser().resolve()
    try:
        files = covered_files(root, version)
    except OSError as exc:
        raise ResedisError(f"{root}: cannot read the weights directory to fingerprint it ({exc})") from None
    if not any(_is_weights_file(p.name) for p in files):
        raise ResedisError(f"{root}: no config.json or *.safetensors / *.bin weights to fingerprint")
    revision = _hub_revision(root)
    lines = [version]
    for path in files:
        st = path.stat()  # follows the hub cache's symlinks to the blob
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        with _memo_lock:
            digest = _memo.get(key)
        if digest is None:
            digest = _file_digest(path, st.st_size, st.st_mtime_ns, revision)
            with _memo_lock:
                _memo[key] = digest
        lines.append(f"{path.name}\t{digest}")
    return "sha256:" + hashlib.sha256(("\n".join(lines) + "\n").encode("utf-8")).hexdigest()


def fingerprint_matches(stored: str, weights_dir: str | os.PathLike) -> tuple[bool, str]:
    """``(matches, current)``: whether ``stored`` (a fingerprint an index recorded, of either
    version) is the fingerprint of ``weights_dir`` now, and the current (v2) fingerprint.
    A stored v1 fingerprint matches when the weights and config are unchanged."""
    current = weights_fingerprint(weights_dir)
    if stored == current:
        return True, current
    return stored == weights_fingerprint(weights_dir, LEGACY_VERSION), current


def short_fingerprint(fingerprint: str | None) -> str:
    """The first 12 hex digits (``"3f1c0a9b7e21"``), or ``"unknown"`` for None."""
    if not fingerprint:
        return "unknown"
    return fingerprint.split(":", 1)[-1][:12]


def spec_weights_dir(spec: str, *, allow_download: bool | None = None) -> Path:
    """The directory the weights of ``spec`` resolve to (:func:`resedis.models.resolve_weights`)."""
    return resolve_weights(spec, allow_download=allow_download)


def encoder_weights_dir(encoder) -> Path:
    """The directory a loaded backend's weights came from: its transformers model's
    ``name_or_path`` when that is a checkpoint directory, else where its ``spec`` resolves."""
    name = encoder.model.name_or_path
    if isinstance(name, str) and name and (Path(name) / "config.json").is_file():
        return Path(name).resolve()
    return spec_weights_dir(encoder.spec)


def encoder_fingerprint(encoder) -> str:
    """:func:`weights_fingerprint` of the weights a loaded backend was built from."""
    return weights_fingerprint(encoder_weights_dir(encoder))


def spec_fingerprint(spec: str, *, allow_download: bool | None = None) -> str:
    """:func:`weights_fingerprint` of the weights ``spec`` resolves to now."""
    return weights_fingerprint(spec_weights_dir(spec, allow_download=allow_download))


def clear_cache() -> None:
    """Forget the memoised per-file digests (tests; a long-lived process never needs to:
    a rewritten file has a new size, mtime or inode)."""
    with _memo_lock:
        _memo.clear()
