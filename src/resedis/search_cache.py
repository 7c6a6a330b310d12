"""Query-embedding cache: a query the index has answered before needs no text encoder.

``DB/query_cache.json`` maps normalised query text -> its query vector ``[q̂, 1]``
(float32, base64), under one **key**: the sha256 of

* the weights fingerprint of the model (:mod:`resedis.models.fingerprint`: config.json
  and the weight files),
* the tokenizer files (``tokenizer.json``, ``tokenizer_config.json``,
  ``special_tokens_map.json``, ``vocab.json``, ``merges.txt``, which the fingerprint does
  not cover), and
* the encoder implementation (``light:<version>`` or ``transformers:<version>``), so a
  vector is only ever reused by the code that computed it: a cache hit returns the
  bits a fresh encoding would.

A file whose key differs (weights retrained, tokenizer edited, encoder changed) is
ignored and replaced at the next store: the cache can never hand out a vector of other
weights. It holds at most :data:`MAX_ENTRIES` queries (oldest dropped), is written
atomically (temp file + rename), and is skipped silently where the index directory is
not writable. Deleting it is always safe.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

CACHE_NAME = "query_cache.json"
CACHE_FORMAT = "resedis-query-cache-v1"
MAX_ENTRIES = 2048
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


def cache_key(weights_fingerprint: str, weights_dir: str | os.PathLike, implementation: str) -> str:
    """The key vectors are stored under (see the module docstring)."""
    digest = hashlib.sha256()
    digest.update(f"{CACHE_FORMAT}\n{weights_fingerprint}\n{implementation}\n".encode())
    for name in TOKENIZER_FILES:
        path = Path(weights_dir) / name
        if path.is_file():
            digest.update(f"{name}\t".encode() + hashlib.sha256(path.read_bytes()).hexdigest().encode("ascii") + b"\n")
    return "sha256:" + digest.hexdigest()


class QueryCache:
    """The cache file of one index directory under one key (see the module docstring)."""

    def __init__(self, db: str | os.PathLike, key: str, dim: int):
        self.path = Path(db) / CACHE_NAME
        self.key = key
        self.dim = int(dim)
        self._entries: dict[str, str] = self._load()

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.info("%s: unreadable query cache (%s); starting a new one", self.path, exc)
            return {}
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            return {}
        if data.get("key") != self.key or data.get("dim") != self.dim:
            log.info("%s: query cache was made with other weights, tokenizer or encoder; not used", self.path)
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, text: str) -> np.ndarray | None:
        """The cached (D,) float32 vector of ``text`` (already normalised), or None."""
        raw = self._entries.get(text)
        if raw is None:
            return None
        try:
            vec = np.frombuffer(base64.b64decode(raw), dtype="<f4")
        except (ValueError, TypeError):
            return None
        return vec.astype(np.float32) if vec.shape == (self.dim,) else None

    def put_many(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Add ``texts`` with their (Q, D) vectors and write the file (best effort)."""
        for text, vec in zip(texts, np.asarray(vectors, dtype="<f4")):
            self._entries.pop(text, None)
            self._entries[text] = base64.b64encode(vec.tobytes()).decode("ascii")
        while len(self._entries) > MAX_ENTRIES:
            self._entries.pop(next(iter(self._entries)))
        body = json.dumps({"format": CACHE_FORMAT, "key": self.key, "dim": self.dim, "entries": self._entries})
        try:
            fd, tmp = tempfile.mkstemp(prefix=".query_cache.", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(body)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.debug("%s: query cache not written (%s)", self.path, exc)


class CachedTextEncoder:
    """A TextEncoder that answers from a :class:`QueryCache` and encodes only the misses
    with ``load_inner()`` (called once, at the first miss: a hit loads no model).

    ``spec`` / ``vector_dim``: those of the index's model (what a Searcher checks).
    ``hits`` / ``misses`` count texts served each way.
    """

    kind = "text"

    def __init__(self, spec: str, vector_dim: int, cache: QueryCache, load_inner: Callable[[], object]):
        self.spec = spec
        self.vector_dim = int(vector_dim)
        self.cache = cache
        self._load_inner = load_inner
        self._inner = None
        self.hits = 0
        self.misses = 0

    @property
    def inner(self):
        """The wrapped encoder (loaded on first use)."""
        if self._inner is None:
            self._inner = self._load_inner()
        return self._inner

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts (normalised by the caller) -> (Q, D) float32, from the cache where possible."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of strings")
        out = np.zeros((len(texts), self.vector_dim), np.float32)
        missing: list[int] = []
        for i, text in enumerate(texts):
            vec = self.cache.get(text)
            if vec is None:
                missing.append(i)
            else:
                out[i] = vec
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if missing:
            miss_texts = [texts[i] for i in missing]
            vectors = np.asarray(self.inner.encode_texts(miss_texts), dtype=np.float32)
            out[missing] = vectors
            self.cache.put_many(list(dict.fromkeys(miss_texts)), vectors[[miss_texts.index(t) for t in dict.fromkeys(miss_texts)]])
        return out


__all__ = ["CACHE_NAME", "MAX_ENTRIES", "QueryCache", "CachedTextEncoder", "cache_key"]
