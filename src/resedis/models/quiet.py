"""Library warnings said once, in our words, instead of once per image.

transformers' image processors guess the channel axis of an array from its shape and warn
"The channel dimension is ambiguous" when a side is 1 or 3 pixels long. For the RGB PIL
images resedis passes, the layout is known and the pixels come out right (checked against
an explicitly channels-first reference in tests/faults/test_quiet.py); the warnings come
from the processors' internal steps re-guessing on their own channels-first arrays, twice
per tiny image, even with ``--quiet``. :func:`quiet_ambiguous_channels` drops those
records from transformers' logger and says once, at debug level, why.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

AMBIGUOUS = "channel dimension is ambiguous"
TRANSFORMERS_IMAGE_LOGGER = "transformers.image_utils"


class AmbiguousChannelsFilter(logging.Filter):
    """Drops transformers' per-image "channel dimension is ambiguous" warnings; the first
    one dropped is replaced by one line of ours."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if AMBIGUOUS not in record.getMessage():
            return True
        with self._lock:
            self.dropped += 1
            first = self.dropped == 1
        if first:
            log.debug(
                "some images have a side of 1-3 pixels, which transformers' image processor finds "
                "ambiguous; their layout is known (RGB PIL images), so its per-image warnings "
                "about it are silenced"
            )
        return False


_installed: AmbiguousChannelsFilter | None = None
_install_lock = threading.Lock()


def quiet_ambiguous_channels() -> AmbiguousChannelsFilter:
    """Install the filter on transformers' image logger (once per process); returns it."""
    global _installed
    with _install_lock:
        if _installed is None:
            _installed = AmbiguousChannelsFilter()
            logging.getLogger(TRANSFORMERS_IMAGE_LOGGER).addFilter(_installed)
        return _installed
