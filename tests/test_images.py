"""Image discovery and decoding: order, formats, modes, EXIF, and every kind of bad file."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resedis.io.images import (
    DEFAULT_MAX_PIXELS,
    LoadedImage,
    decode_image_bytes,
    discover_images,
    load_image,
    pixel_limit,
    sha256_file,
    to_rgb,
)
from resedis.types import Skipped


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height (valid CRC) followed by a tiny IDAT: a
    'decompression bomb' as far as the header is concerned, a few dozen bytes on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_discovery_recursive_sorted_case_insensitive_skips_hidden(tmp_path):
    img = Image.new("RGB", (4, 4))
    names = ["b.jpg", "A.PNG", "sub/c.JpEg", "sub/deeper/d.webp", "e.bmp", "f.GIF", "g.tif", "h.TIFF"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        img.save(tmp_path / name, format={"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF"}.get(Path(name).suffix[1:].lower(), Path(name).suffix[1:].upper()))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    img.save(tmp_path / ".hidden" / "x.jpg")
    img.save(tmp_path / ".dotfile.jpg")
    (tmp_path / "db").mkdir()
    img.save(tmp_path / "db" / "inside.jpg")

    found = [p.relative_to(tmp_path).as_posix() for p in discover_images(tmp_path, exclude=[tmp_path / "db"])]
    assert found == sorted(names)
    # Deterministic and complete without exclusions too.
    again = [p.relative_to(tmp_path).as_posix() for p in discover_images(tmp_path)]
    assert again == sorted(names + ["db/inside.jpg"])


def test_sha256_streaming_matches_bytes(tmp_path):
    data = os.urandom(3 * (1 << 20) + 123)  # spans several 1 MiB chunks
    path = tmp_path / "blob.jpg"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_load_good_image_reports_facts(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    loaded = load_image(path)
    assert isinstance(loaded, LoadedImage)
    assert (loaded.width, loaded.height) == (50, 30)
    assert loaded.image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(loaded.image), arr)  # PNG is lossless
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.size_bytes == path.stat().st_size
    assert loaded.mtime_ns == path.stat().st_mtime_ns


def test_exif_orientation_applied():
    # 40 wide x 20 high, left half red; EXIF orientation 6 = rotate 90° clockwise for display.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _save(Image.fromarray(arr), "JPEG", exif=exif.tobytes(), quality=95)
    out = decode_image_bytes(data, "rot.jpg")
    assert isinstance(out, Image.Image)
    assert out.size == (20, 40)  # width, height swapped
    px = np.asarray(out).astype(int)
    # After a clockwise turn the old left half (red) is on top.
    assert px[5, 10, 0] > 200 and px[5, 10, 2] < 60
    assert px[35, 10, 0] < 60


@pytest.mark.parametrize(
    "make, expected",
    [
        # palette with a transparent index -> composited on white
        (lambda: _palette_with_transparency(), [(0, 0, (255, 255, 255)), (0, 3, (0, 0, 255))]),
        (lambda: Image.new("LA", (4, 4), (100, 0)), [(0, 0, (255, 255, 255))]),
        (lambda: Image.new("LA", (4, 4), (100, 255)), [(0, 0, (100, 100, 100))]),
        (lambda: Image.new("RGBA", (4, 4), (10, 20, 30, 255)), [(1, 1, (10, 20, 30))]),
        (lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), [(0, 0, (255, 0, 0))]),
        (lambda: Image.new("L", (4, 4), 77), [(2, 2, (77, 77, 77))]),
        (lambda: Image.new("1", (4, 4), 1), [(0, 0, (255, 255, 255))]),
        (lambda: _gray16(65535), [(0, 0, (255, 255, 255))]),
        (lambda: _gray16(257 * 100), [(0, 0, (100, 100, 100))]),
        (lambda: Image.fromarray(np.full((4, 4), 0.5, np.float32)), [(0, 0, (128, 128, 128))]),
    ],
)
def test_to_rgb_modes(make, expected):
    out = to_rgb(make())
    assert out.mode == "RGB"
    px = np.asarray(out)
    for y, x, rgb in expected:
        assert tuple(int(v) for v in px[y, x]) == rgb


def _palette_with_transparency() -> Image.Image:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    img.putpixel((3, 0), 1)
    img.info["transparency"] = 0
    return img


def _gray16(value: int) -> Image.Image:
    return Image.fromarray(np.full((4, 4), value, np.uint16))


def test_sixteen_bit_png_roundtrip_is_scaled_not_clipped():
    ramp = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0 .. 65535
    data = _save(Image.fromarray(ramp), "PNG")
    out = decode_image_bytes(data, "g16.png")
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    got = np.asarray(out)[..., 0].astype(int)
    np.testing.assert_array_equal(got, np.rint(ramp / 257.0).astype(int))
    assert got.max() == 255 and len(np.unique(got)) == 16  # a clip at 255 would collapse the ramp


RED = Image.new("RGB", (8, 6), (255, 0, 0))


def test_gif_first_frame():
    blue = Image.new("RGB", (8, 6), (0, 0, 255))
    gif = _save(RED, "GIF", save_all=True, append_images=[blue])
    out = decode_image_bytes(gif, "a.gif")
    assert isinstance(out, Image.Image) and out.size == (8, 6)
    r, g, b = np.asarray(out)[3, 3]
    assert r > 200 and b < 50


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "WEBP", "PNG", "JPEG"])
def test_formats_decode(fmt):
    out = decode_image_bytes(_save(RED, fmt), f"x.{fmt.lower()}")
    assert isinstance(out, Image.Image), fmt
    assert out.size == (8, 6) and np.asarray(out)[3, 3, 0] > 200, fmt


GOOD_JPEG = _save(Image.new("RGB", (64, 48), (1, 2, 3)), "JPEG")
BAD_FILES = [  # (file name, its bytes or None for a broken symlink, a word the skip reason contains)
    ("zero.jpg", b"", "zero-byte"),
    ("trunc.jpg", GOOD_JPEG[: len(GOOD_JPEG) // 2], "truncated"),
    ("text.png", b"this is not a png at all", "not an image"),
    ("bomb.png", _png_header_only(50_000, 50_000), "too large"),  # > 2x Pillow's limit
    ("big.png", _png_header_only(10_000, 10_000), "too large"),  # in Pillow's warn-only band
    ("broken_link.jpg", None, "unreadable"),
]


@pytest.mark.parametrize("name, data, word", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_are_skipped_with_specific_reasons(tmp_path, name, data, word):
    path = tmp_path / name
    if data is None:
        path.symlink_to(tmp_path / "does-not-exist.jpg")
    else:
        path.write_bytes(data)
    (tmp_path / "ok.jpg").write_bytes(GOOD_JPEG)
    with pixel_limit(DEFAULT_MAX_PIXELS):
        out = load_image(path)
        assert isinstance(out, Skipped), name
        assert out.source == str(path)
        assert word in out.reason, (name, out.reason)
        assert isinstance(load_image(tmp_path / "ok.jpg"), LoadedImage)


def test_pixel_count_check_does_not_rely_on_pillows_warning(tmp_path):
    # Outside pixel_limit Pillow only warns in that band; our own header check still skips it.
    path = tmp_path / "big.png"
    path.write_bytes(_png_header_only(10_000, 10_000))
    with pytest.warns(Image.DecompressionBombWarning):
        out = load_image(path)
    assert isinstance(out, Skipped) and "100000000 pixels" in out.reason


def test_configurable_pixel_limit(tmp_path):
    path = tmp_path / "ok.png"
    Image.new("RGB", (100, 60)).save(path)
    out = load_image(path, max_pixels=5_000)
    assert isinstance(out, Skipped) and "6000 pixels exceeds the limit of 5000" in out.reason
    assert isinstance(load_image(path, max_pixels=6_000), LoadedImage)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied_is_skipped(tmp_path):
    path = tmp_path / "secret.jpg"
    Image.new("RGB", (4, 4)).save(path)
    path.chmod(0)
    try:
        out = load_image(path)
        assert isinstance(out, Skipped) and "permission denied" in out.reason
    finally:
        path.chmod(0o644)
