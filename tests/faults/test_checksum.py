"""Per-image row checksums: any changed stored bit changes them, row order does not."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pyarrow as pa

from resedis.index.checksum import batch_checksums, image_checksum, region_digest_sums


def rows(ids, ranks, boxes, objectness, vectors, batch=1, dtype=None):
    dtype = pa.float16() if dtype is None else dtype
    dim = vectors.shape[1]
    return pa.table({
        "image_id": ids,
        "region": pa.array(ranks, pa.int32()),
        "box": pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(boxes, np.float32).ravel(), pa.float32()), 4),
        "objectness": pa.array(objectness, pa.float32()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), dtype), dim),
        "batch": pa.array([batch] * len(ids), pa.int64()),
    })


def reference_sum(ids, ranks, boxes, objectness, vectors, image_id):
    """The digest sum written out longhand with struct (independent of numpy byte views)."""
    total = 0
    for i, r, b, o, v in zip(ids, ranks, boxes, objectness, vectors):
        if i != image_id:
            continue
        data = i.encode() + b"\0" + struct.pack("<i", r) + struct.pack("<4f", *b) + struct.pack("<f", o)
        data += struct.pack(f"<{len(v)}e", *v)
        total += int.from_bytes(hashlib.sha256(data).digest(), "little")
    return total % (1 << 256)


def sample():
    rng = np.random.default_rng(0)
    ids = ["a.jpg", "a.jpg", "b.jpg"]
    ranks = [0, 1, 0]
    boxes = rng.uniform(0, 50, (3, 4)).astype(np.float32)
    objectness = rng.uniform(-3, 3, 3).astype(np.float32)
    vectors = rng.normal(size=(3, 5)).astype(np.float16)
    return ids, ranks, boxes, objectness, vectors


def test_digest_sums_match_a_longhand_reference():
    ids, ranks, boxes, objectness, vectors = sample()
    sums = region_digest_sums(rows(ids, ranks, boxes, objectness, vectors))
    assert sums[("a.jpg", 1)] == (2, reference_sum(ids, ranks, boxes, objectness, vectors, "a.jpg"))
    assert sums[("b.jpg", 1)] == (1, reference_sum(ids, ranks, boxes, objectness, vectors, "b.jpg"))


def test_row_order_does_not_matter():
    ids, ranks, boxes, objectness, vectors = sample()
    order = [2, 1, 0]
    a = region_digest_sums(rows(ids, ranks, boxes, objectness, vectors))
    b = region_digest_sums(rows([ids[i] for i in order], [ranks[i] for i in order], boxes[order], objectness[order], vectors[order]))
    assert a == b


def test_one_flipped_bit_anywhere_changes_the_checksum():
    ids, ranks, boxes, objectness, vectors = sample()
    image = [("a.jpg", "f" * 64, 60, 40, 2), ("b.jpg", "e" * 64, 60, 40, 1)]
    base = batch_checksums(image, rows(ids, ranks, boxes, objectness, vectors), 1)
    v = vectors.copy()
    v.view(np.uint16)[1, 3] ^= 1  # lowest mantissa bit of one float16
    assert batch_checksums(image, rows(ids, ranks, boxes, objectness, v), 1)[0] != base[0]
    assert batch_checksums(image, rows(ids, ranks, boxes, objectness, v), 1)[1] == base[1]
    b = boxes.copy()
    b.view(np.uint32)[2, 0] ^= 1
    assert batch_checksums(image, rows(ids, ranks, b, objectness, vectors), 1)[1] != base[1]
    assert batch_checksums(image, rows(ids, [1, 0, 0], boxes, objectness, vectors), 1)[0] != base[0]
    changed_row = [("a.jpg", "f" * 64, 61, 40, 2), image[1]]
    assert batch_checksums(changed_row, rows(ids, ranks, boxes, objectness, vectors), 1)[0] != base[0]


def test_regions_of_another_batch_do_not_count():
    ids, ranks, boxes, objectness, vectors = sample()
    image = [("a.jpg", "f" * 64, 60, 40, 2)]
    assert batch_checksums(image, rows(ids, ranks, boxes, objectness, vectors, batch=2), 1) == [
        image_checksum("a.jpg", "f" * 64, 60, 40, 2, 0)
    ]
    assert image_checksum("a.jpg", "f" * 64, 60, 40, 2, 0).startswith("v1:")
