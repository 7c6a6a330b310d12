"""Configuration of the HTTP service (``resedis serve``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from resedis.errors import ResedisError
from resedis.search import DEFAULT_TOP_K
from resedis.threads import check_threads

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServeConfig:
    """Everything ``create_app`` needs; its defaults are ``resedis serve``'s.

    ``db``: the index directory to serve (opened read-only for search).
    ``api_key``: when set, every ``/api`` route requires header ``X-API-Key``.
    ``allow_index_roots``: folders under which ``POST /api/index`` may index; the
    endpoint is disabled when empty.
    ``index_model``: model spec for an index created by ``POST /api/index`` when ``db``
    does not exist yet (an existing index keeps its own model).
    ``segmenter``: model spec for ``masks=true`` (default: the pipelines' SAM default).
    ``grounder``: model spec of the ``owl+rerank`` pipeline's grounding model (default:
    the pipelines' Grounding DINO default).
    ``trusted_hosts``: accepted ``Host`` headers (DNS-rebinding guard); ``None`` derives
    them from ``host`` (loopback names when bound to loopback, anything otherwise).
    ``threads``: CPU threads of torch and numpy's BLAS for this process
    (:func:`resedis.threads.set_threads`, applied by :func:`create_app` before the
    models load); None keeps the library defaults.
    ``default_top_k``: hits of a search that names no ``top_k`` (None: the library's
    :data:`resedis.search.DEFAULT_TOP_K`, at most ``max_top_k``). ``log_level``: uvicorn's.
    """

    db: Path
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    allow_index_roots: list[Path] = field(default_factory=list)
    device: str | None = None
    index_model: str | None = None
    segmenter: str | None = None
    grounder: str | None = None
    max_query_chars: int = 500
    max_top_k: int = 200
    default_top_k: int | None = None
    max_body_bytes: int = 16 * 1024
    thumb_sizes: tuple[int, int] = (32, 1024)
    default_thumb_size: int = 256
    thumb_cache_bytes: int = 64 * 1024 * 1024
    max_pending_searches: int = 64
    result_cache_entries: int = 256
    trusted_hosts: list[str] | None = None
    threads: int | None = None
    log_level: str = "info"

    def __post_init__(self) -> None:
        self.db = Path(self.db)
        self.allow_index_roots = [Path(p) for p in self.allow_index_roots]
        check_threads(self.threads)
        if not 1 <= self.port <= 65535:
            raise ResedisError(f"--port must be in [1, 65535], got {self.port}")
        if self.max_top_k < 1:
            raise ResedisError(f"--max-top-k must be >= 1, got {self.max_top_k}")
        if self.max_query_chars < 1:
            raise ResedisError(f"--max-query-chars must be >= 1, got {self.max_query_chars}")
        if self.log_level not in LOG_LEVELS:
            raise ResedisError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.default_top_k is None:
            self.default_top_k = min(DEFAULT_TOP_K, self.max_top_k)
        if self.api_key is not None and len(self.api_key) < 8:
            raise ResedisError("--api-key must be at least 8 characters long")
        if not (1 <= self.default_top_k <= self.max_top_k):
            raise ResedisError(f"default_top_k must lie in [1, {self.max_top_k}]")
        lo, hi = self.thumb_sizes
        if not (1 <= lo <= self.default_thumb_size <= hi):
            raise ResedisError(f"default_thumb_size must lie in [{lo}, {hi}]")
        for root in self.allow_index_roots:
            if not root.is_dir():
                raise ResedisError(f"--allow-index-root {root}: not a directory")

    @property
    def indexing_enabled(self) -> bool:
        return bool(self.allow_index_roots)

    def effective_trusted_hosts(self) -> list[str]:
        if self.trusted_hosts is not None:
            return list(self.trusted_hosts)
        if is_loopback(self.host):
            return [*LOOPBACK_NAMES, "[::1]"]
        return ["*"]
