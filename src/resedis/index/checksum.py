"""Per-image checksums of the stored rows, so that bit rot in the tables is detectable.

An image's checksum covers its ``images`` row (id, content hash, size, region count) and
every one of its region rows (rank, box, objectness, vector) exactly as stored, bytes
and all: it is computed at commit from the Arrow rows about to be written, and
``resedis verify`` recomputes it from the rows read back. A flipped bit in a box, a
vector or the image row then shows as a mismatch even where the damaged value still
decodes (a float that became ``1.5e16`` or NaN is still a float).

Region rows are combined order-independently (the sum of their sha256 digests modulo
2**256), so a reader can stream the regions table in any order and keep one integer per
image. Checksums are strings ``"v1:<hex>"``; an image indexed before checksums were
recorded has none (null).
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
import pyarrow as pa

from resedis.index.columns import stored_vector_arrays

CHECKSUM_VERSION = "v1"
_MOD = 1 << 256


def _matrix(column: pa.ChunkedArray | pa.Array, width: int) -> np.ndarray:
    """A fixed-size-list column -> (N, width) numpy array in its stored type (no cast)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], type=column.type)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, width)


def region_digest_sums(rows: pa.Table) -> dict[tuple[str, int], tuple[int, int]]:
    """``(image_id, batch) -> (number of region rows, sum of their digests mod 2**256)`` for
    region rows (columns image_id, region, box, objectness, the stored vector columns, batch)."""
    if rows.num_rows == 0:
        return {}
    ids = rows["image_id"].to_pylist()
    batches = rows["batch"].to_pylist()
    ranks = np.asarray(rows["region"].to_numpy(zero_copy_only=False), "<i4")
    boxes = np.ascontiguousarray(_matrix(rows["box"], 4), "<f4")
    objectness = np.asarray(rows["objectness"].to_numpy(zero_copy_only=False), "<f4")
    # the vector as stored: ``vector``, or a compact format's codes, step, bias and ANN column
    stored = [np.ascontiguousarray(a, a.dtype.newbyteorder("<")) for a in stored_vector_arrays(rows)]
    out: dict[tuple[str, int], tuple[int, int]] = {}
    for i, (image_id, batch) in enumerate(zip(ids, batches)):
        h = hashlib.sha256(image_id.encode("utf-8"))
        h.update(b"\0")
        h.update(ranks[i].tobytes())
        h.update(boxes[i].tobytes())
        h.update(objectness[i].tobytes())
        for arr in stored:
            h.update(arr[i].tobytes())
        key = (image_id, batch)
        count, total = out.get(key, (0, 0))
        out[key] = (count + 1, (total + int.from_bytes(h.digest(), "little")) % _MOD)
    return out


def merge_sums(into: dict, more: dict) -> None:
    """Add the digest sums ``more`` (from another chunk of rows) into ``into``."""
    for key, (count, total) in more.items():
        c, t = into.get(key, (0, 0))
        into[key] = (c + count, (t + total) % _MOD)


def image_checksum(image_id: str, sha256: str, width: int, height: int, n_regions: int, digest_sum: int) -> str:
    """The checksum of one image: its row's identity fields and the sum of its region digests."""
    h = hashlib.sha256(f"resedis-rows-{CHECKSUM_VERSION}\0{image_id}\0{sha256}\0".encode())
    h.update(np.asarray([width, height, n_regions], "<i8").tobytes())
    h.update(int(digest_sum % _MOD).to_bytes(32, "little"))
    return f"{CHECKSUM_VERSION}:{h.hexdigest()}"


def batch_checksums(
    image_rows: Iterable[tuple[str, str, int, int, int]], region_rows: pa.Table, batch: int
) -> list[str]:
    """The checksums of a batch about to be committed: ``image_rows`` are
    ``(image_id, sha256, width, height, n_regions)`` in row order, ``region_rows`` the
    batch's region rows as they will be written."""
    sums = region_digest_sums(region_rows)
    return [
        image_checksum(i, s, w, h, n, sums.get((i, batch), (0, 0))[1]) for i, s, w, h, n in image_rows
    ]
