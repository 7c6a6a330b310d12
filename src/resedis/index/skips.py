"""Which recorded skips are worth retrying: the file's fault, or a passing one.

A file is skipped (recorded in the ``skipped`` table with a reason) when it cannot be
indexed. Whether to try it again on the next run depends on whose fault it was:

* **file** — the file itself is bad (undecodable, truncated, zero bytes, too many pixels,
  not an image, refused by the folder walk): retrying can only fail again until the file
  changes, so it is retried when its size or mtime changes (or with ``retry_skipped``);
* **transient** — the cause may pass without the file changing (the model or device
  failed, out of memory, an I/O error or a permission problem while reading): retried on
  every run.

The kind is read from the reason text, which the few places that write skips word
consistently (:func:`resedis.io.images.load_image`, the writer's model fallback), so skips
recorded by older versions are classified too.

>>> skip_kind("model failed on this image (RuntimeError: CUDA out of memory)")
'transient'
>>> skip_kind("not an image (format not recognised)")
'file'
"""

from __future__ import annotations

TRANSIENT, FILE = "transient", "file"

# Reason prefixes of causes outside the file: the model/device, and reading the file
# ("unreadable: ..." is an OS error on open/read, including permissions, which chmod
# fixes without changing size or mtime).
_TRANSIENT_PREFIXES = ("model failed", "unreadable:")
# Words that mark a passing cause wherever they appear in a reason.
_TRANSIENT_WORDS = ("MemoryError", "out of memory", "Input/output error", "Errno 5]", "Resource temporarily unavailable")

RETRY = {TRANSIENT: "retried on the next run", FILE: "retried when the file changes (or with --retry-skipped)"}


def skip_kind(reason: str) -> str:
    """``"transient"`` or ``"file"`` for a recorded skip reason (see the module doc)."""
    if reason.startswith(_TRANSIENT_PREFIXES) or any(word in reason for word in _TRANSIENT_WORDS):
        return TRANSIENT
    return FILE


def should_retry(reason: str, size_mtime_now: tuple[int, int], size_mtime_then: tuple[int, int], *, retry_skipped: bool) -> bool:
    """Whether a recorded skip is tried again this run: always with ``retry_skipped``, when
    its cause may have passed, or when the file changed since it was recorded."""
    return retry_skipped or skip_kind(reason) == TRANSIENT or size_mtime_now != size_mtime_then
