"""Image discovery and robust decoding for indexing.

* :func:`walk_images` walks a folder recursively and returns image files in a
  deterministic order (sorted by POSIX path relative to the root), skipping hidden
  files and folders (names starting with ``.``), plus the symlinks it refused, each with
  its reason (:func:`discover_images`: the files only). Symlinks: see :func:`walk_images`.
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


@dataclass
class ImageWalk:
    """What :func:`walk_images` found under a folder.

    ``files``: image files to index, sorted by POSIX path relative to the root.
    ``refused``: ``(path, reason)`` of entries not indexed although their name looks like
    an image or a folder (symlinks leaving the root, second routes to one file, symlink
    loops, unreadable folders), sorted by path; the indexer records them as skips.
    """

    files: list[Path]
    refused: list[tuple[Path, str]]


@dataclass
class _Found:
    rel: str
    path: Path
    target: Path  # real path of the file
    physical: bool  # reached without passing a symlink below the root


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def walk_images(
    root: str | os.PathLike, exclude: Iterator[Path] | None = None, *, follow_symlinks: bool = False
) -> ImageWalk:
    """All image files under ``root`` (recursively), and what was refused.

    Hidden files and folders (name starting with ``.``) are left out; ``exclude`` lists
    folders to leave out (e.g. an index database inside the image folder). Symlinks:

    * a file symlink whose real target lies inside ``root`` is indexed under the link's
      path, unless the target is reached another way too: one file is indexed once, under
      its own (physical) path when the walk reaches it, else under the first path in
      sorted order; the other routes are refused ("same file as ...");
    * a symlink whose target lies outside ``root`` is refused ("... outside ...") unless
      ``follow_symlinks``; a folder symlink leaving ``root`` is then walked too;
    * a folder symlink whose target lies inside ``root`` is not walked (its target is
      walked at its real place, or is hidden/excluded on purpose); no folder is walked
      twice, so symlink cycles end; a symlink that loops on itself is refused.
    """
    root = Path(root)
    if not root.is_dir():
        from resedis.errors import ResedisError

        raise ResedisError(f"{root}: not a directory (expected a folder of images)")
    real_root = _real(root)
    excluded = {_real(Path(p)) for p in (exclude or [])}
    visited = {real_root}
    found: list[_Found] = []
    refused: list[tuple[str, Path, str]] = []
    hint = "not followed; pass --follow-symlinks (IndexConfig.follow_symlinks) to index it"
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            if folder == root:
                from resedis.errors import ResedisError

                raise ResedisError(f"{root}: cannot list the folder ({exc.strerror or exc})") from None
            refused.append((folder.relative_to(root).as_posix(), folder, f"unreadable folder: {exc.strerror or exc}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            rel = path.relative_to(root).as_posix()
            if not entry.is_symlink():
                if entry.is_dir(follow_symlinks=False):
                    real = _real(path)
                    if real not in excluded and real not in visited:
                        visited.add(real)
                        stack.append(path)
                elif is_image_file(path):
                    real = _real(path)
                    found.append(_Found(rel, path, real, real == real_root / rel))
                continue
            try:
                target, exists = path.resolve(strict=True), True
            except FileNotFoundError:  # dangling: indexing records it as unreadable
                target, exists = _real(path), False
            except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
                if is_image_file(path):
                    refused.append((rel, path, "symlink loop: the link never reaches a file"))
                continue
            inside = target.is_relative_to(real_root)
            if exists and target.is_dir():
                if inside or target in excluded or target in visited:
                    continue
                if not follow_symlinks:
                    refused.append((rel, path, f"symlinked folder leading outside {real_root} (to {target}): {hint}"))
                    continue
                visited.add(target)
                stack.append(path)
            elif is_image_file(path):
                if inside or follow_symlinks:
                    found.append(_Found(rel, path, target, False))
                else:
                    refused.append((rel, path, f"symlink leading outside {real_root} (to {target}): {hint}"))
    by_target: dict[Path, list[_Found]] = {}
    for f in found:
        by_target.setdefault(f.target, []).append(f)
    files: list[tuple[str, Path]] = []
    for group in by_target.values():
        group.sort(key=lambda f: (not f.physical, f.rel))
        kept = group[0]
        files.append((kept.rel, kept.path))
        refused.extend((f.rel, f.path, f"same file as {kept.rel} (another route through a symlink): indexed once, "
                        f"as {kept.rel}") for f in group[1:])
    files.sort(key=lambda item: item[0])
    refused.sort(key=lambda item: item[0])
    return ImageWalk([path for _, path in files], [(path, reason) for _, path, reason in refused])


def discover_images(
    root: str | os.PathLike, exclude: Iterator[Path] | None = None, *, follow_symlinks: bool = False
) -> list[Path]:
    """The image files :func:`walk_images` would index, sorted by relative POSIX path."""
    return walk_images(root, exclude, follow_symlinks=follow_symlinks).files


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
