"""Image discovery and robust decoding for indexing.

* :func:`discover_images` walks a folder recursively and returns image files in a
  deterministic order (sorted by POSIX path relative to the root), skipping hidden
  files and folders (names starting with ``.``).
* :func:`load_image` decodes one file into an RGB PIL image with EXIF orientation
  applied, or returns a :class:`~resedis.types.Skipped` with a specific reason. It never
  raises for a bad file: zero-byte, truncated, not an image, too large (decompression
  bomb guard, checked from the header before any pixel is decoded), unreadable.
* :func:`sha256_file` hashes a file by streaming it.

Width and height reported for an image are those *after* EXIF rotation, i.e. the
coordinate frame of every box the index stores.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from resedis.types import Skipped

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# Pillow's own default guard (about 89.5 megapixels); images above it are skipped.
DEFAULT_MAX_PIXELS = 89_478_485

_CHUNK = 1 << 20


@dataclass
class LoadedImage:
    """A decoded image plus the facts the index stores about its file.

    ``image`` is RGB, EXIF-transposed; ``width``/``height`` are its size in pixels.
    """

    path: Path
    image: Image.Image
    sha256: str
    size_bytes: int
    mtime_ns: int

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


def is_image_file(path: Path) -> bool:
    """True when the file name has a supported image extension (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def discover_images(root: str | os.PathLike, exclude: Iterator[Path] | None = None) -> list[Path]:
    """All image files under ``root`` (recursively), sorted by relative POSIX path.

    Hidden files and directories (name starting with ``.``) are skipped, symlinked
    directories are not followed (no cycles); ``exclude`` lists directories to leave out
    (e.g. an index database stored inside the image folder).
    """
    root = Path(root)
    if not root.is_dir():
        from resedis.errors import ResedisError

        raise ResedisError(f"{root}: not a directory (expected a folder of images)")
    excluded = {p.resolve() for p in (exclude or [])}
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        current = Path(dirpath)
        dirnames[:] = [
            d for d in dirnames if not d.startswith(".") and (current / d).resolve() not in excluded
        ]
        for name in filenames:
            if name.startswith("."):
                continue
            path = current / name
            if is_image_file(path):
                found.append((path.relative_to(root).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB.

    Transparency (RGBA, LA, PA, palette with a transparent colour) is composited on
    white. 16-bit and 32-bit integer greyscale (``I;16*``, ``I``) is scaled to 8 bits
    (divided by 257 when values exceed 255); float greyscale (``F``) is taken as 0..1
    when its maximum is at most 1, else clipped to 0..255. CMYK, YCbCr, LAB, HSV, 1 and
    L use Pillow's conversion.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(image)
        if mode == "F":
            arr = arr.astype(np.float64)
            finite = arr[np.isfinite(arr)]
            peak = float(finite.max()) if finite.size else 0.0
            arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
            scaled = arr * 255.0 if peak <= 1.0 else arr
        else:
            arr = arr.astype(np.int64)
            peak = int(arr.max()) if arr.size else 0
            if mode.startswith("I;16") or peak <= 65535:
                scaled = arr / 257.0 if peak > 255 else arr
            else:
                scaled = arr * (255.0 / peak)
        grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")


def _classify_oserror(exc: OSError) -> str:
    text = str(exc)
    if "truncated" in text.lower():
        return f"truncated image data ({text})"
    return f"cannot decode ({text})"


def decode_image_bytes(data: bytes, source: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image | Skipped:
    """Decode in-memory file bytes -> RGB image (EXIF applied) or Skipped(reason)."""
    if not data:
        return Skipped(source, "zero-byte file")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        # Checked from the header, before a single pixel is decoded.
        if max_pixels and width * height > max_pixels:
            return Skipped(
                source,
                f"too large: {width}x{height} = {width * height} pixels exceeds the limit of "
                f"{max_pixels} (decompression-bomb guard; raise max_pixels to allow it)",
            )
        if width <= 0 or height <= 0:
            return Skipped(source, f"invalid image size {width}x{height}")
        image.seek(0)  # first frame of animated GIF/WebP/TIFF
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Skipped(source, f"too large: {exc}")
    except UnidentifiedImageError:
        return Skipped(source, "not an image (format not recognised)")
    except OSError as exc:
        return Skipped(source, _classify_oserror(exc))
    except (ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, MemoryError) as exc:
        return Skipped(source, f"cannot decode ({type(exc).__name__}: {exc})")
    try:
        image = ImageOps.exif_transpose(image) or image
    except Exception as exc:  # a broken EXIF block must not lose an otherwise good image
        log.warning("%s: ignoring unreadable EXIF orientation (%s)", source, exc)
    try:
        return to_rgb(image)
    except (OSError, ValueError) as exc:
        return Skipped(source, f"cannot convert mode {image.mode} to RGB ({exc})")


@contextmanager
def pixel_limit(max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[None]:
    """Make Pillow's own guard agree with ``max_pixels`` for the duration of a run.

    Pillow *warns* between 1x and 2x ``Image.MAX_IMAGE_PIXELS`` (and raises above);
    inside this block that warning is an error, and Pillow's limit is raised to
    ``max_pixels`` when that is larger. Enter it from the main thread before decoding
    threads start (warning filters are process-wide).
    """
    previous = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if previous is not None and max_pixels and max_pixels > previous:
            Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage | Skipped:
    """Read, hash and decode one file. Never raises for a bad or unreadable file.

    Returns a :class:`LoadedImage` (RGB, EXIF-transposed) or ``Skipped(str(path), reason)``.
    """
    path = Path(path)
    source = str(path)
    try:
        stat = path.stat()
        with open(path, "rb") as fh:
            data = fh.read()
    except PermissionError:
        return Skipped(source, "unreadable: permission denied")
    except FileNotFoundError:
        return Skipped(source, "unreadable: file not found (vanished, or a broken symlink)")
    except IsADirectoryError:
        return Skipped(source, "unreadable: is a directory")
    except OSError as exc:
        return Skipped(source, f"unreadable: {exc.strerror or exc}")
    decoded = decode_image_bytes(data, source, max_pixels=max_pixels)
    if isinstance(decoded, Skipped):
        return decoded
    return LoadedImage(
        path=path,
        image=decoded,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        mtime_ns=stat.st_mtime_ns,
    )


def open_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode one image exactly as the indexer does; raises ResedisError if it can't."""
    from resedis.errors import ResedisError

    loaded = load_image(path, max_pixels=max_pixels)
    if isinstance(loaded, Skipped):
        raise ResedisError(f"{loaded.source}: {loaded.reason}")
    return loaded.image
