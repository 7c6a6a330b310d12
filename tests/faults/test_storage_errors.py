"""Disk full, I/O errors and permission errors become one StorageError naming path and cause."""

from __future__ import annotations

import errno

import pytest

from resedis.storage_errors import EXIT_STORAGE, StorageError, storage_error, storage_errors

LANCE_ENOSPC = ("lance error: LanceError(IO): No space left on device (os error 28), "
                "/root/.cargo/registry/src/index.crates.io-1/lance-file-13.0.0/src/writer/structural.rs:258:9")


@pytest.mark.parametrize(
    "exc,cause,code",
    [
        (RuntimeError(LANCE_ENOSPC), "disk full", errno.ENOSPC),
        (OSError(errno.ENOSPC, "No space left on device"), "disk full", errno.ENOSPC),
        (OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device"), "disk full", errno.ENOSPC),
        (OSError(errno.EIO, "Input/output error"), "I/O error", errno.EIO),
        (RuntimeError("lance error: LanceError(IO): Input/output error (os error 5), /x/y.rs:1:1"), "I/O error", errno.EIO),
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied", errno.EACCES),
        (RuntimeError("lance error: Permission denied (os error 13)"), "permission denied", errno.EACCES),
        (OSError(errno.EROFS, "Read-only file system"), "read-only filesystem", errno.EROFS),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded", errno.EDQUOT),
    ],
)
def test_recognised(exc, cause, code):
    err = storage_error(exc, "/data/db")
    assert isinstance(err, StorageError)
    assert (err.cause, err.errno, err.path) == (cause, code, "/data/db")
    text = str(err)
    assert text.startswith("/data/db: " + cause) and "\n" not in text and ".rs" not in text


@pytest.mark.parametrize("exc", [RuntimeError("lance error: schema mismatch"), ValueError("bad"),
                                 OSError(errno.ENOENT, "No such file"), RuntimeError("os error 2")])
def test_other_errors_are_not_storage_errors(exc):
    assert storage_error(exc, "/x") is None


def test_the_path_named_by_the_error_wins_over_the_callers():
    assert storage_error(PermissionError(errno.EACCES, "Permission denied", "/a/b.json"), "/a").path == "/a/b.json"
    err = storage_error(RuntimeError("lance error: LanceError(IO): Generic error writing /data/db/regions.lance/data/x.lance: "
                                     "No space left on device (os error 28), /root/.cargo/x.rs:1:2"), "/data/db")
    assert err.path == "/data/db/regions.lance/data/x.lance"
    assert storage_error(RuntimeError(LANCE_ENOSPC), "/data/db").path == "/data/db"  # Lance named none: the caller's
    assert storage_error(RuntimeError(LANCE_ENOSPC)).path is None  # and none known: none invented


def test_the_cause_chain_is_followed():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("commit failed") from inner
    except RuntimeError as outer:
        assert storage_error(outer, "/db").errno == errno.ENOSPC


def test_the_context_manager_converts_only_storage_errors():
    with pytest.raises(StorageError, match="^/db: disk full"):
        with storage_errors("/db"):
            raise RuntimeError(LANCE_ENOSPC)
    with pytest.raises(ValueError):
        with storage_errors("/db"):
            raise ValueError("not storage")
    assert EXIT_STORAGE not in (0, 1, 2)
