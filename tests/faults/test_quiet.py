"""Quiet means quiet: no per-image "channel dimension is ambiguous" warnings from
transformers for tiny images, and their pixels are right all the same."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from resedis.cli import main


def test_indexing_tiny_images_prints_nothing(tmp_path, owlv2_spec, capfd):
    root = tmp_path / "tiny"
    root.mkdir()
    for i, size in enumerate([(1, 1), (3, 2), (2, 3), (1, 7), (3, 3)]):
        Image.new("RGB", size, (i * 40, 10, 200)).save(root / f"t{i}.png")
    assert main(["index", str(root), "--db", str(tmp_path / "db"), "--model", owlv2_spec, "--quiet"]) == 0
    out, err = capfd.readouterr()
    assert "ambiguous" not in err and "ambiguous" not in out
    assert err.strip() == "" or all(line.startswith("INFO") for line in err.strip().splitlines()), err


@pytest.mark.parametrize("height,width", [(1, 1), (3, 2), (3, 5), (1, 7)])
def test_tiny_images_are_preprocessed_as_rgb(encoder, height, width):
    """Reference: the same pixels handed over explicitly channels-first."""
    rgb = np.random.default_rng(height * 10 + width).integers(0, 255, (height, width, 3), dtype=np.uint8)
    pixels, sizes = encoder.preprocess([Image.fromarray(rgb)])
    reference = encoder.processor.image_processor(
        images=[rgb.transpose(2, 0, 1)], return_tensors="pt", input_data_format="channels_first")["pixel_values"]
    assert sizes == [(height, width)]
    assert np.array_equal(pixels.numpy(), reference.numpy())
