"""Errors shown to users without a traceback by the CLI and as 4xx by the service."""

from __future__ import annotations

from resedis.types import FormatError


class ResedisError(Exception):
    """Base class for errors caused by input, configuration or missing resources."""


class WeightsNotFoundError(ResedisError):
    """Model weights could not be found; the message says where we looked and what to do."""


class IndexMismatchError(ResedisError):
    """The index was built with a different model / schema than the one asked for."""


class DamagedIndexError(ResedisError):
    """The index on disk is damaged (a table lost, rows that fail to decode); the message
    names what and says to run ``resedis verify`` / ``resedis repair``."""


#: exit status of a damaged index (sysexits EX_DATAERR): `resedis verify` / `repair`, and any
#: command that finds the index damaged (storage failures: resedis.storage_errors.EXIT_STORAGE)
EXIT_DAMAGED = 65


class MissingExtraError(ResedisError):
    """An optional dependency is not installed; the message names the extra."""

    def __init__(self, package: str, extra: str):
        super().__init__(f"{package} is not installed; install it with: pip install 'resedis[{extra}]'")


__all__ = ["ResedisError", "WeightsNotFoundError", "IndexMismatchError", "DamagedIndexError", "MissingExtraError", "FormatError"]
