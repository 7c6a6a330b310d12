"""Skips whose cause may pass are retried on the next run; skips caused by the file only
when it changes, or with retry_skipped; the report says which is which."""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

from resedis.index import IndexConfig, build_index, open_index
from resedis.index.skips import FILE, TRANSIENT, skip_kind
from resedis.index.verify import verify_index
from resedis.models.base import PREPROCESS_SPLIT


class FailsOn:
    """The real tiny encoder, except that it raises on images of the given widths (a model
    or device failure, e.g. out of GPU memory, on those images only)."""

    def __init__(self, inner, widths):
        self.inner, self.widths = inner, set(widths)
        self.spec, self.vector_dim, self.model = inner.spec, inner.vector_dim, inner.model
        self.capabilities = type(inner.capabilities)(c for c in inner.capabilities if c != PREPROCESS_SPLIT)

    def preprocessing(self):
        return self.inner.preprocessing()

    def __getattr__(self, name):  # everything else from the real encoder, except the preprocess split
        if name in ("preprocess", "encode_preprocessed", "inner"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def encode_images(self, images, max_regions=100, nms_iou=0.5):
        if any(im.width in self.widths for im in images):
            raise RuntimeError("CUDA out of memory (simulated)")
        return self.inner.encode_images(images, max_regions, nms_iou)


def test_kinds_from_reasons():
    assert skip_kind("model failed on this image (RuntimeError: CUDA out of memory)") == TRANSIENT
    assert skip_kind("unreadable: Input/output error") == TRANSIENT
    assert skip_kind("unreadable: permission denied") == TRANSIENT
    assert skip_kind("cannot decode (MemoryError: )") == TRANSIENT
    for reason in ("zero-byte file", "not an image (format not recognised)", "cannot decode (OSError: truncated)",
                   "too large: 1e9 pixels exceed 1e8 (decompression-bomb guard; raise max_pixels to allow it)",
                   "invalid image size 0x0"):
        assert skip_kind(reason) == FILE, reason


def corpus_with(tmp_path: Path, corpus: Path) -> Path:
    root = tmp_path / "images"
    shutil.copytree(corpus, root)
    Image.new("RGB", (13, 30), (200, 0, 0)).save(root / "odd13.png")
    Image.new("RGB", (17, 30), (0, 200, 0)).save(root / "odd17.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # the file's own fault
    return root


def test_model_failures_are_retried_and_indexed_on_the_next_run(tmp_path, corpus, encoder):
    root = corpus_with(tmp_path, corpus)
    db = tmp_path / "db"
    config = IndexConfig(batch_size=4, max_regions=10)
    first = build_index(root, db, config=config, progress=False, encoder=FailsOn(encoder, {13, 17}))
    kinds = {Path(s["path"]).name: s["kind"] for s in first.to_json()["skipped"]}
    assert kinds == {"odd13.png": TRANSIENT, "odd17.png": TRANSIENT, "broken.png": FILE}
    assert "2 transient" in first.summary() and "1 file" in first.summary()

    second = build_index(root, db, config=config, progress=False, encoder=encoder)
    assert second.added == 2  # both retried without any change to the files
    names = set(open_index(db).read("images", ["image_id"])["image_id"].to_pylist())
    assert {"odd13.png", "odd17.png"} <= names
    assert [Path(s.source).name for s in second.skipped] == ["broken.png"]
    assert second.new_skipped == 0  # the broken file was not read again
    assert verify_index(db).ok


def test_a_file_caused_skip_waits_for_a_change_or_retry_skipped(tmp_path, corpus, encoder):
    root = corpus_with(tmp_path, corpus)
    db = tmp_path / "db"
    build_index(root, db, config=IndexConfig(batch_size=4, max_regions=10), progress=False, encoder=encoder)
    again = build_index(root, db, progress=False, encoder=encoder)
    assert (again.added, again.new_skipped) == (0, 0)
    forced = build_index(root, db, config=IndexConfig(retry_skipped=True), progress=False, encoder=encoder)
    assert forced.new_skipped == 1  # read again, still broken
    Image.new("RGB", (20, 20), (1, 2, 3)).save(root / "broken.png")  # fixed: the file changed
    fixed = build_index(root, db, progress=False, encoder=encoder)
    assert fixed.added == 1 and fixed.skipped == []
