"""Search on CUDA: the index built and queried on a GPU returns the detector's own
scores, as the CPU tests in test_search.py prove on CPU. Skipped without a CUDA device.

Tolerance: |Δlogit| <= 2e-3 · max(1, |logit|). Looser than the CPU bound (1e-4) because
on a GPU the index (images in batches) and the reference forward (one image) may run
different kernels, and cuDNN convolutions may use TF32 (10-bit mantissa inputs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"
    ),
]

QUERIES = ["red circle", "a small blue square on the left", "green triangle"]
TOLERANCE = 2e-3


def logit_of(score: float) -> float:
    return float(np.log(score) - np.log1p(-score))


def check_search_equals_forward(device: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    from resedis.index import IndexConfig, build_index, open_index
    from resedis.io.images import open_rgb
    from resedis.models import load_model
    from resedis.search import Searcher
    from resedis.synth import generate

    generate(tmp_path / "synth", images=4, queries=4, absent=1, seed=5, progress=False)
    backend = load_model(f"owlv2:{tiny_models['owlv2']}", device)
    patches = len(backend.encode_patches([Image.new("RGB", (32, 32))])[0])
    config = IndexConfig(max_regions=patches, nms_iou=1.0, vector_dtype="float32", batch_size=4, device=device)
    build_index(tmp_path / "synth" / "images", tmp_path / "db", config=config, progress=False, encoder=backend)
    index = open_index(tmp_path / "db")
    total = index.stats()["regions"]
    searcher = Searcher(index, encoder=backend, nms_iou=1.0)
    paths = {r["image_id"]: r["path"] for r in index.read("images", ["image_id", "path"]).to_pylist()}
    assert len(paths) == 4
    for query in QUERIES:
        forward = {i: backend.detector_logits(open_rgb(p), [query]) for i, p in paths.items()}
        hits = searcher.search(query, top_k=total).hits
        assert len(hits) == total > 0
        used = {i: np.zeros(len(forward[i][0]), bool) for i in paths}
        for hit in hits:
            boxes, logits, _ = forward[hit.image_id]
            same_box = np.flatnonzero(np.all(np.abs(boxes - np.asarray(hit.box)) <= 1e-2, axis=1) & ~used[hit.image_id])
            assert len(same_box), f"{device} {query!r}: no forward box equals {hit.box} in {hit.image_id}"
            logit = logit_of(hit.score)
            best = same_box[np.argmin(np.abs(logits[same_box, 0] - logit))]
            used[hit.image_id][best] = True
            ref = float(logits[best, 0])
            assert abs(ref - logit) <= TOLERANCE * max(1.0, abs(ref)), (device, query, hit.image_id, ref, logit)
        # Every forward box of positive area was found (boxes of no visible area may be dropped).
        for image_id, (boxes, _, _) in forward.items():
            visible = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            assert used[image_id][visible].all(), f"{device} {query!r}: regions of {image_id} missing"


def test_search_on_cuda_equals_the_detectors_own_forward(tiny_models, tmp_path):
    check_search_equals_forward("cuda", tiny_models, tmp_path)
