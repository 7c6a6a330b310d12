"""Storage failures (disk full, I/O error, permission denied, read-only) as one clear error.

The same fault reaches us in three dresses: Python's ``OSError`` with an ``errno``,
pyarrow's ``OSError`` whose message carries ``[Errno 28]``, and LanceDB's
``RuntimeError: lance error: LanceError(IO): No space left on device (os error 28), <rust
source location>`` — the last without a path when the disk was already full.
:func:`storage_error` recognises all three and returns a :class:`StorageError` naming the
path (the one given by the caller who knows what it was writing, else the one in the
message), the cause in words and what to do; :func:`storage_errors` converts them in a
``with`` block. The CLI prints it as one line and exits with :data:`EXIT_STORAGE`.

>>> err = storage_error(RuntimeError("lance error: LanceError(IO): No space left on device (os error 28), /x.rs:1:2"), "/data/db")
>>> str(err)
'/data/db: disk full (No space left on device, errno 28): free space on that filesystem, then run the same command again (what was written so far is kept)'
"""

from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager
from typing import Iterator

from resedis.errors import ResedisError

# sysexits.h EX_IOERR: distinct from 1 (bug) and 2 (usage / input errors).
EXIT_STORAGE = 74

# errno -> (cause in words, what to do)
CAUSES = {
    errno.ENOSPC: ("disk full", "free space on that filesystem, then run the same command again (what was written so far is kept)"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota, then run the same command again"),
    errno.EIO: ("I/O error", "the disk or network storage failed; check it (dmesg, the storage service), then run resedis verify --db DB"),
    errno.EACCES: ("permission denied", "give this user read/write access to that path, or choose another location"),
    errno.EPERM: ("operation not permitted", "give this user read/write access to that path, or choose another location"),
    errno.EROFS: ("read-only filesystem", "use a writable location, or remount it read-write"),
}
_OS_ERROR = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")
_PATH = re.compile(r"(?:(?<=\s)|^)(/[^\s,:'\"]+)")


class StorageError(ResedisError):
    """The storage under a path failed (disk full, I/O error, no permission, read-only)."""

    def __init__(self, path: str | None, cause: str, detail: str, fix: str, code: int):
        self.path, self.cause, self.detail, self.fix, self.errno = path, cause, detail, fix, code
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{cause} ({detail}): {fix}")


def first_line(exc: BaseException) -> str:
    """The first line of an error, without the Rust source location Lance appends."""
    text = str(exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    return re.sub(r",\s*/\S+\.rs:\d+:\d+$", "", text)


def _errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, OSError) and exc.errno in CAUSES:
        return exc.errno
    match = _OS_ERROR.search(str(exc))
    if match:
        code = int(match.group(1) or match.group(2))
        return code if code in CAUSES else None
    return None


def storage_error(exc: BaseException, path: str | os.PathLike | None = None) -> StorageError | None:
    """``exc`` as a StorageError, or None when it is not a storage failure. Follows
    ``__cause__`` / ``__context__``. The path named is the most precise one known: the
    file the error itself names (``OSError.filename``, or a path in Lance's message), else
    ``path`` (what the caller was reading or writing), else none."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StorageError):
            return exc
        code = _errno_of(exc)
        if code is not None:
            cause, fix = CAUSES[code]
            where = getattr(exc, "filename", None) if isinstance(exc, OSError) else None
            if where is None:
                match = _PATH.search(re.sub(r",\s*/\S+\.rs:\d+:\d+", "", str(exc)))
                where = match.group(1) if match else None
            if where is None and path is not None:
                where = str(path)
            return StorageError(str(where) if where else None, cause, f"{os.strerror(code)}, errno {code}", fix, code)
        exc = exc.__cause__ or exc.__context__
    return None


@contextmanager
def storage_errors(path: str | os.PathLike | None) -> Iterator[None]:
    """Turn storage failures raised inside the block into a StorageError naming ``path``."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised unchanged unless it is a storage failure
        converted = storage_error(exc, path)
        if converted is None:
            raise
        raise converted from exc
