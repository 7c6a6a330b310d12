"""Image files of an index, served by id: lookup, safe resolution, thumbnails.

The catalog maps an image id (the path relative to its indexed root, ``/``-separated)
to the path stored in the index. Requests never name a file: they name an id, which
``security.check_image_id`` vets and the catalog looks up; the stored path is then
resolved with ``security.resolve_inside_roots``.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from resedis.server.security import RequestRefused, check_image_id, resolve_inside_roots

# What PIL raises for a file that is not (or no longer) a decodable image, or a
# decompression bomb: an indexed file changed on disk after indexing.
UNDECODABLE = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _undecodable(exc: Exception) -> RequestRefused:
    if isinstance(exc, Image.DecompressionBombError):
        return RequestRefused(404, "image file is now too large to decode (changed since it was indexed); re-run resedis index")
    return RequestRefused(404, "image file can no longer be decoded (changed since it was indexed?); re-run resedis index")


# Formats every current browser displays natively; others are converted to PNG.
BROWSER_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
}


@dataclass(frozen=True)
class ImageRecord:
    """One indexed image: ``width``/``height`` are pixels after EXIF orientation."""

    image_id: str
    path: str
    width: int
    height: int
    root: str


class ImageCatalog:
    """id -> ImageRecord, plus the set of indexed roots (real paths)."""

    def __init__(self, records: list[ImageRecord]):
        self._by_id = {r.image_id: r for r in records}
        self.roots = sorted({r.root for r in records})

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, image_id: str) -> ImageRecord | None:
        return self._by_id.get(str(image_id))

    def lookup(self, image_id: str) -> ImageRecord:
        """The record of a vetted id; ``RequestRefused`` 400 (bad id) or 404 (unknown)."""
        check_image_id(image_id)
        record = self._by_id.get(image_id)
        if record is None:
            raise RequestRefused(404, "unknown image id")
        return record

    def open_path(self, image_id: str) -> Path:
        """Real path of the file behind an id, checked to lie inside its indexed root."""
        record = self.lookup(image_id)
        return resolve_inside_roots(record.path, [record.root])


def browser_bytes(path: Path) -> tuple[bytes | None, str]:
    """``(None, media type)`` when the file can be sent as is, else ``(PNG bytes, "image/png")``."""
    media = BROWSER_TYPES.get(path.suffix.lower())
    if media is not None:
        return None, media
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            buf = io.BytesIO()
            im.convert("RGBA" if "A" in im.getbands() else "RGB").save(buf, format="PNG")
    except UNDECODABLE as exc:
        raise _undecodable(exc) from None
    return buf.getvalue(), "image/png"


class ThumbnailCache:
    """Thread-safe LRU of JPEG thumbnails, bounded in total bytes.

    Keys include the file's mtime and size, so a changed file is re-rendered.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, path: Path, size: int) -> bytes:
        st = path.stat()
        key = (str(path), size, st.st_mtime_ns, st.st_size)
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return data
            self.misses += 1
        try:
            data = render_thumbnail(path, size)
        except UNDECODABLE as exc:
            raise _undecodable(exc) from None
        with self._lock:
            if key not in self._items and len(data) <= self.max_bytes:
                self._items[key] = data
                self._bytes += len(data)
                while self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= len(old)
        return data


def render_thumbnail(path: Path, size: int) -> bytes:
    """JPEG bytes of the image (EXIF-oriented) fitted inside ``size x size``."""
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (size, size))  # decode at reduced scale: much faster
        im = ImageOps.exif_transpose(im)
        im = im.convert("RGB")
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
