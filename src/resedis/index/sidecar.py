"""The region sidecar: the committed region matrix of a local index in one file that a
one-off search reads with numpy alone, without importing LanceDB (3.6 s measured).

``DB/regions.sidecar`` holds exactly what :func:`resedis.search_corpus.load_corpus`
returns (committed regions only, in table order): image ids and paths, each region's
image row, its box (xyxy original px, float32), its vector as stored (float16 or
float32; the int8/int4 codes with their per-row ``step`` and ``bias`` for a compact
index, :mod:`resedis.quant`) and whether it is hidden (no visible area: never returned). Layout: 8 bytes magic ``RSDSIDE1``, a little-endian u64 header length, a JSON
header, then the arrays, each 64-byte aligned (memory-mapped on read).

**Never stale.** The header records :func:`tables_stamp`: a digest of every version
manifest of ``images.lance`` and ``regions.lance`` (name, size, mtime) and of the
regions table's ``_indices`` entries. Every Lance commit (a batch, an orphan clean-up, an
ANN build, a compaction) adds or removes a version manifest, so any change to the tables
changes the stamp; :func:`read_sidecar` returns None for a sidecar whose stamp is not the
tables' current one (the caller then reads the tables through LanceDB, as without a
sidecar). A writer that saw the tables change while it read them does not write.

**Only for exact search.** An index with an ANN index over its regions gets no sidecar
(:func:`sidecar_allowed`): its searches go through the ANN path, and a second copy of a
large region matrix would double the index on disk. Below the ANN threshold (200k regions
by default) the sidecar costs ``rows × (2·dim + 20)`` bytes for a float16 index.

The file is a cache: deleting it is always safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SIDECAR_NAME = "regions.sidecar"
SIDECAR_FORMAT = "resedis-region-sidecar-v2"
_MAGIC = b"RSDSIDE1"
_ALIGN = 64
_TABLES = ("images.lance", "regions.lance")


def tables_stamp(db: str | os.PathLike) -> str | None:
    """Digest of the Lance version manifests (and ANN index entries) of a local index's
    ``images`` and ``regions`` tables; None when a table has no version yet."""
    root = Path(db)
    lines: list[str] = []
    for table in _TABLES:
        for sub in ("_versions", "_indices"):
            folder = root / table / sub
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except FileNotFoundError:
                if sub == "_versions":
                    return None
                continue
            for entry in entries:
                st = entry.stat()
                lines.append(f"{table}/{sub}/{entry.name}\t{st.st_size}\t{st.st_mtime_ns}")
    return "sha256:" + hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def has_ann_index(db: str | os.PathLike) -> bool:
    """True when the regions table holds a vector index (``regions.lance/_indices`` non-empty)."""
    folder = Path(db) / "regions.lance" / "_indices"
    return folder.is_dir() and any(folder.iterdir())


def sidecar_allowed(db: str | os.PathLike) -> bool:
    """Whether a local index gets a sidecar: only when its searches are exact (no ANN index)."""
    return not has_ann_index(db)


@dataclass
class SidecarRegions:
    """The committed regions of an index as read from its sidecar (arrays memory-mapped).

    image_ids / paths: per image row; region_image (N,) int64; boxes (N, 4) float32 xyxy
    original px; vectors (N, D) as stored; hidden (N,) bool: regions never returned (no
    visible area, :class:`resedis.search_corpus.Corpus`); ``versions``: the (images, regions) Lance table
    versions it was written from; ``stamp``: :func:`tables_stamp` at that time.
    """

    image_ids: list[str]
    paths: list[str]
    region_image: np.ndarray
    boxes: np.ndarray
    vectors: np.ndarray
    hidden: np.ndarray
    versions: tuple[int, int]
    stamp: str
    storage: str = "float16"  # the index's storage format: float16/float32 vectors, or int8/int4 codes
    step: np.ndarray | None = None  # compact storage: per-row step and exact bias
    bias: np.ndarray | None = None


def sidecar_path(db: str | os.PathLike) -> Path:
    return Path(db) / SIDECAR_NAME


def write_sidecar(
    db: str | os.PathLike,
    *,
    stamp: str,
    versions: tuple[int, int],
    image_ids: list[str],
    paths: list[str],
    region_image: np.ndarray,
    boxes: np.ndarray,
    vectors: np.ndarray,
    hidden: np.ndarray | None = None,
    storage: str | None = None,
    step: np.ndarray | None = None,
    bias: np.ndarray | None = None,
) -> Path | None:
    """Write ``DB/regions.sidecar`` atomically (temp file, fsync, rename) for the tables
    state ``stamp``. Returns its path, or None (nothing written) when the tables no longer
    have that stamp, the index has an ANN index, or the directory is not writable."""
    root = Path(db)
    if not sidecar_allowed(root):
        remove_sidecar(root)
        return None
    arrays = {
        "region_image": np.ascontiguousarray(region_image, dtype=np.int64),
        "boxes": np.ascontiguousarray(boxes, dtype=np.float32),
        "vectors": np.ascontiguousarray(vectors),
        "hidden": np.ascontiguousarray(np.zeros(len(region_image), bool) if hidden is None else hidden, dtype=np.bool_),
    }
    n = arrays["region_image"].shape[0]
    if step is not None or bias is not None:  # compact storage: codes + per-row step and bias
        if vectors.dtype not in (np.int8, np.uint8) or step is None or bias is None or storage not in ("int8", "int4"):
            raise ValueError(f"sidecar codes must be int8/uint8 with step, bias and storage int8/int4, got {vectors.dtype}, {storage!r}")
        arrays["step"] = np.ascontiguousarray(step, dtype=np.float32)
        arrays["bias"] = np.ascontiguousarray(bias, dtype=np.float32)
        if arrays["step"].shape != (n,) or arrays["bias"].shape != (n,):
            raise ValueError("sidecar arrays disagree on the number of regions")
    elif vectors.dtype not in (np.float16, np.float32):
        raise ValueError(f"sidecar vectors must be float16 or float32, got {vectors.dtype}")
    storage = storage or ("float16" if vectors.dtype == np.float16 else "float32")
    if (arrays["boxes"].shape != (n, 4) or arrays["vectors"].ndim != 2 or arrays["vectors"].shape[0] != n
            or arrays["hidden"].shape != (n,)):
        raise ValueError("sidecar arrays disagree on the number of regions")
    specs, offset = {}, 0
    for name, arr in arrays.items():
        offset = -(-offset // _ALIGN) * _ALIGN
        specs[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset}
        offset += arr.nbytes
    header = json.dumps({
        "format": SIDECAR_FORMAT, "stamp": stamp, "versions": list(versions),
        "image_ids": list(image_ids), "paths": list(paths), "arrays": specs, "storage": storage,
    }).encode("utf-8")
    data_start = -(-(len(_MAGIC) + 8 + len(header)) // _ALIGN) * _ALIGN
    try:
        fd, tmp = tempfile.mkstemp(prefix=".regions.sidecar.", dir=root)
    except OSError as exc:
        log.debug("%s: no sidecar written (%s)", root, exc)
        return None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(_MAGIC + struct.pack("<Q", len(header)) + header)
            for name, arr in arrays.items():
                fh.seek(data_start + specs[name]["offset"])
                fh.write(arr.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        if tables_stamp(root) != stamp:  # the tables moved on while we read them
            log.debug("%s: tables changed while the sidecar was prepared; not written", root)
            os.unlink(tmp)
            return None
        os.replace(tmp, sidecar_path(root))
    except OSError as exc:
        log.debug("%s: no sidecar written (%s)", root, exc)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return None
    return sidecar_path(root)


def read_sidecar(db: str | os.PathLike) -> SidecarRegions | None:
    """The sidecar of a local index when it matches the tables' current state, else None
    (missing, stale, unreadable, or the index has an ANN index; the reason is logged)."""
    root = Path(db)
    path = sidecar_path(root)
    if not path.is_file():
        log.debug("%s: no region sidecar", root)
        return None
    if has_ann_index(root):
        log.debug("%s: index has an ANN index; sidecar ignored", root)
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_MAGIC) + 8)
            if len(head) != len(_MAGIC) + 8 or head[: len(_MAGIC)] != _MAGIC:
                log.info("%s: not a region sidecar; ignored", path)
                return None
            (n,) = struct.unpack("<Q", head[len(_MAGIC):])
            header = json.loads(fh.read(n).decode("utf-8"))
        if header.get("format") != SIDECAR_FORMAT:
            log.info("%s: sidecar format %r not %r; ignored", path, header.get("format"), SIDECAR_FORMAT)
            return None
        current = tables_stamp(root)
        if header.get("stamp") != current:
            log.info("%s: region sidecar is stale (the index changed since it was written); reading the tables", root)
            return None
        data_start = -(-(len(_MAGIC) + 8 + n) // _ALIGN) * _ALIGN
        size = path.stat().st_size
        arrays = {}
        for name, spec in header["arrays"].items():
            dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
            count = int(np.prod(shape)) if shape else 1
            begin = data_start + spec["offset"]
            if begin + count * dtype.itemsize > size:
                log.info("%s: sidecar truncated; ignored", path)
                return None
            arrays[name] = (np.memmap(path, dtype=dtype, mode="r", offset=begin, shape=shape)
                            if count else np.zeros(shape, dtype))
        return SidecarRegions(
            image_ids=header["image_ids"], paths=header["paths"], region_image=arrays["region_image"],
            boxes=arrays["boxes"], vectors=arrays["vectors"], hidden=np.asarray(arrays["hidden"]), versions=tuple(header["versions"]), stamp=current,
            storage=header.get("storage") or ("float16" if arrays["vectors"].dtype == np.float16 else "float32"),
            step=arrays.get("step"), bias=arrays.get("bias"),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.info("%s: unreadable region sidecar (%s); ignored", path, exc)
        return None


def remove_sidecar(db: str | os.PathLike) -> None:
    """Delete ``DB/regions.sidecar`` if present."""
    try:
        sidecar_path(db).unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.debug("%s: could not remove the sidecar (%s)", db, exc)


__all__ = [
    "SIDECAR_NAME",
    "SidecarRegions",
    "has_ann_index",
    "read_sidecar",
    "remove_sidecar",
    "sidecar_allowed",
    "sidecar_path",
    "tables_stamp",
    "write_sidecar",
]
