"""Dataset formats and prediction files.

``load_dataset(path)`` recognises:

* **ReSeDis** (also the synthetic benchmark): a folder with ``expressions/`` (or
  ``expressions.json``/``.jsonl``) and ``instances.json`` (or
  ``annotations/instances*.json``) -> :func:`resedis.io.resedis_format.load_resedis`;
* **RefCOCO family**: a folder holding ``refs(<split_by>).p`` (directly, or in a
  ``refcoco``/``refcoco+``/``refcocog`` subfolder) -> :func:`resedis.io.refcoco.load_refcoco`.
  The dataset name is the folder's name when it is one of those three.
* **gRefCOCO**: a folder holding ``grefs(<split_by>).json`` (directly, or in a
  ``grefcoco`` subfolder) -> :func:`resedis.io.grefcoco.load_grefcoco`; no-target
  expressions become absent queries (see that module for what this means).

* **D³**: a folder holding ``d3_pkl/`` (or the four pickles ``sentences.pkl``,
  ``annotations.pkl``, ``images.pkl``, ``groups.pkl``) -> :func:`resedis.io.d3.load_d3`;
* **REIRCOCO**: a folder holding one ``*.p``/``*.pkl`` whose records have ``ref_anno`` and
  ``sentences`` (recognised by content; the release fixes no file name) ->
  :func:`resedis.io.reircoco.load_reircoco`.

``split=`` (``train``, ``val``, ``testA``, ...) keeps one split of the split-based
formats (RefCOCO family, gRefCOCO, REIRCOCO): its queries, and as corpus only the images
they refer to. The ReSeDis and D³ formats have no splits; asking for one is an error.

Image decoding for indexing lives in ``resedis.io.images``.
"""

from __future__ import annotations

from pathlib import Path

from resedis.io.coco_results import is_coco_results_file, load_category_map, read_coco_results, write_coco_results
from resedis.io.d3 import d3_pkl_folder, load_d3
from resedis.io.grefcoco import grefs_files, load_grefcoco
from resedis.io.predictions import read_predictions, write_predictions
from resedis.io.refcoco import DEFAULT_SPLIT_BY, load_refcoco
from resedis.io.reircoco import load_reircoco, reircoco_files
from resedis.io.resedis_format import load_resedis
from resedis.errors import ResedisError
from resedis.types import Dataset, FormatError

FORMATS = ("auto", "resedis", "refcoco", "grefcoco", "d3", "reircoco")
_REF_NAMES = ("refcoco", "refcoco+", "refcocog")
_SPLIT_BY_PREFERENCE = ("unc", "umd", "google")


def _is_resedis(root: Path) -> bool:
    has_expr = any((root / n).exists() for n in ("expressions", "expressions.json", "expressions.jsonl"))
    has_inst = (root / "instances.json").is_file() or any((root / "annotations").glob("instances*.json"))
    return has_expr and has_inst


def _refcoco_location(root: Path) -> tuple[Path, str, str] | None:
    """(parent root, dataset name, split_by) for a RefCOCO-family folder, else None."""
    candidates = [root] + [root / n for n in _REF_NAMES if (root / n).is_dir()]
    for folder in candidates:
        found = {p.name[len("refs("):-len(").p")] for p in folder.glob("refs(*).p")}
        if not found:
            continue
        name = folder.name if folder.name in _REF_NAMES else "refcoco"
        preferred = DEFAULT_SPLIT_BY.get(name)
        if preferred in found:
            split_by = preferred
        else:
            split_by = next((s for s in _SPLIT_BY_PREFERENCE if s in found), sorted(found)[0])
        return folder, name, split_by
    return None


def _grefcoco_location(root: Path) -> tuple[Path, str] | None:
    """(gRefCOCO folder, split_by) when ``root`` or ``root/grefcoco`` holds grefs(*).json, else None."""
    for folder in (root, root / "grefcoco"):
        found = grefs_files(folder) if folder.is_dir() else {}
        if found:
            return folder, ("unc" if "unc" in found else next(iter(found)))
    return None


def load_dataset(path: str | Path, *, format: str = "auto", strict: bool = True, split: str | None = None) -> Dataset:
    """Load a benchmark folder into a :class:`Dataset`.

    ``format``: ``auto`` (detect), ``resedis``, ``refcoco``, ``grefcoco``, ``d3`` or ``reircoco``. ``strict=False`` skips
    malformed records into ``Dataset.skipped`` instead of raising :class:`FormatError`.
    ``split``: keep only that split of a RefCOCO-family or gRefCOCO dataset (its queries; the
    corpus becomes the images they refer to). A name absent from the refs file is a
    :class:`FormatError` listing the splits it has; any split for a ReSeDis-format dataset
    (which has none) is a :class:`ResedisError`.

    >>> load_dataset("data/refcoco", split="val").name     # doctest: +SKIP
    'refcoco(unc)-val'
    """
    if format not in FORMATS:
        raise ValueError(f"unknown dataset format {format!r}; choose one of {', '.join(FORMATS)}")
    root = Path(path)
    if not root.is_dir():
        raise FormatError(str(root), "<root>", "dataset directory not found")
    if split is not None and not split.strip():
        raise ResedisError("split: empty name (train, val, testA, ... as written in the refs file)")
    if format in ("auto", "resedis") and (format == "resedis" or _is_resedis(root)):
        if split is not None:
            raise ResedisError(f"{root}: split {split!r} asked for, but this is a ReSeDis-format dataset (the format "
                               "of `resedis synth` too), which has no splits; splits exist in the RefCOCO-family and "
                               "gRefCOCO formats. Keep one folder per split instead")
        return load_resedis(root, strict=strict)
    if format == "d3" or (format == "auto" and d3_pkl_folder(root) is not None):
        if split is not None:
            raise ResedisError(f"{root}: split {split!r} asked for, but D³ has no splits; its evaluation settings "
                               "(inter/intra-scenario) and partitions (FULL/PRES/ABS) are reported by "
                               "`resedis eval --protocol d3`")
        return load_d3(root, strict=strict)
    gref = _grefcoco_location(root) if format in ("auto", "grefcoco") else None
    # a grefs file in ROOT itself names the layout; in a subfolder, RefCOCO keeps precedence
    if gref is not None and (format == "grefcoco" or gref[0] == root or _refcoco_location(root) is None):
        return load_grefcoco(gref[0], split_by=gref[1], split=split, strict=strict)
    if format == "grefcoco":
        raise FormatError(str(root), "grefs", "no grefs(*).json file found (gRefCOCO layout)")
    ref = _refcoco_location(root)
    if ref is not None:
        folder, name, split_by = ref
        return load_refcoco(folder, dataset=name, split_by=split_by, split=split, strict=strict)
    if format == "refcoco":
        raise FormatError(str(root), "refs", "no refs(*).p file found (RefCOCO layout)")
    if format == "reircoco" or reircoco_files(root):
        return load_reircoco(root, split=split, strict=strict)
    raise FormatError(str(root), "<root>", "not a recognised dataset: expected expressions/ + instances.json "
                      "(ReSeDis), refs(*).p + instances.json (RefCOCO family), grefs(*).json + "
                      "instances.json (gRefCOCO), d3_pkl/ (D³) or a REIRCOCO pickle (records with "
                      "ref_anno and sentences)")


__all__ = ["load_dataset", "load_resedis", "load_refcoco", "load_grefcoco", "load_d3", "load_reircoco", "read_predictions", "write_predictions",
           "read_coco_results", "write_coco_results", "load_category_map", "is_coco_results_file", "FORMATS"]
