"""gRefCOCO (generalised referring expressions, Liu et al., CVPR 2023) -> :class:`Dataset`.

Layout (as the dataset's reference loader reads it)::

    ROOT/grefcoco/grefs(unc).json   JSON list of refs (see below)
    ROOT/grefcoco/instances.json    COCO instances (images, annotations with segmentation)
    ROOT/images/train2014/          COCO train2014 images (optional: paths are filled when found)

``ROOT`` may also be the ``grefcoco`` folder itself. One ref::

    {"ref_id": 0, "image_id": 581857, "split": "train",
     "ann_id": [1719310, 1719311] | 1719310 | [-1],     # [-1]: no target in this image
     "category_id": [1, 1] | 1,   "no_target": false,  "file_name": "...",  # (file_name unused)
     "sentences": [{"sent": "two men on the left", "raw": "...", "sent_id": 12, "tokens": [...]}]}

Format sources (read, not copied): ``gres_model/data/datasets/grefer.py`` and
``gres_model/data/datasets/grefcoco.py`` in henghuiding/ReLA (``grefs(<split_by>).json``
next to ``instances.json``; ``ann_id`` an int or a list, ``[-1]`` meaning no target;
``category_id`` an int or a list; one sample per sentence), and
``mdetr/scripts/fine-tuning/grefexp_coco_format.py`` in henghuiding/gRefCOCO. The
``no_target`` boolean is not read by that code; it appears in the released JSON and must
agree with ``ann_id == [-1]`` when present. Refs whose ``sentences`` list is empty exist in
the release; the maintainers say to skip them (gRefCOCO issues #3 and #8).

Mapping to resedis:

* every sentence is one single-image query: query id ``str(sent_id)``, expression the
  tokenised ``sent`` (``raw`` when ``sent`` is missing), whitespace-normalised;
* targets: one :class:`Instance` per listed annotation (several for a multi-target ref),
  mask as compressed RLE, box from ``toBbox`` (xyxy pixels). Crowd annotations that a
  ref lists are kept as targets (ReLA's training loader drops them; the expression still
  refers to them);
* ``Query.type`` is ``single-target``, ``multi-target`` or ``no-target`` (so the eval
  breakdown reports the three gRefCOCO groups); ``Query.category`` the category name, or
  the distinct names joined by ``+`` when the targets differ in category.

**No-target expressions.** A no-target sentence becomes a query with *no instances*, so
resedis scores it as an *absent* query (docs/metrics.md): any ``present`` detection anywhere
in the corpus is a false alarm, and N-acc counts it correct only when nothing at all is
decided present. gRefCOCO only asserts absence from the expression's *own* image, so over
a many-image corpus this is stricter than gRefCOCO's per-image N-acc: a real match in
another image is counted against the system. The same caveat holds for every gRefCOCO
(and RefCOCO) query, whose targets are annotated in one image only: read discovery
precision, FA_per_query and N-acc on these corpora as lower bounds.

The corpus (``Dataset.images``) is every image of the instances file, or, when a
``split`` is chosen, only the images of the kept refs (no-target ones included).
Malformed refs raise :class:`FormatError` naming the file (``grefs(unc).json[i]``) and
the field; ``strict=False`` records them in ``Dataset.skipped`` instead. Refs without
sentences and annotation ids listed twice in one ref are not errors: they are listed in
``Dataset.skipped`` in both modes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from resedis.io.coco import CocoInstances, load_coco_instances, read_json
from resedis.io.refcoco import annotation_rle, check_split, sentence
from resedis.masks import rle_to_box
from resedis.types import Dataset, FormatError, ImageId, ImageInfo, Instance, Query, Skipped

DEFAULT_SPLIT_BY = "unc"
DATASET_DIR = "grefcoco"
NO_TARGET = -1


def grefs_files(folder: Path) -> dict[str, Path]:
    """``{split_by: path}`` for every ``grefs(<split_by>).json`` directly in ``folder``."""
    return {p.name[len("grefs("):-len(").json")]: p for p in sorted(folder.glob("grefs(*).json"))}


def _dataset_dir(root: Path, split_by: str) -> Path:
    for cand in (root / DATASET_DIR, root):
        if (cand / f"grefs({split_by}).json").is_file():
            return cand
    raise FormatError(str(root), "grefs", f"no grefs({split_by}).json in {root / DATASET_DIR} or {root}")


def _image_dirs(ddir: Path) -> list[Path]:
    """Where COCO train2014 images usually sit relative to a gRefCOCO folder."""
    return [ddir / "images", ddir.parent / "images" / "train2014", ddir.parent / "train2014",
            ddir.parent / "images" / "mscoco" / "images" / "train2014"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ann_ids(src: str, ref: dict) -> list[int]:
    raw = ref["ann_id"]
    ids = raw if isinstance(raw, list) else [raw]
    if not ids or not all(_is_int(a) for a in ids):
        raise FormatError(src, "ann_id", f"expected an int or a non-empty list of ints, got {raw!r}")
    if NO_TARGET in ids and ids != [NO_TARGET]:
        raise FormatError(src, "ann_id", f"-1 (no target) mixed with annotation ids in {raw!r}")
    no_target = ids == [NO_TARGET]
    if "no_target" in ref:
        flag = ref["no_target"]
        if not isinstance(flag, bool):
            raise FormatError(src, "no_target", f"expected true/false, got {flag!r}")
        if flag != no_target:
            raise FormatError(src, "no_target", f"{flag} disagrees with ann_id {raw!r} ([-1] means no target)")
    return ids


def _target(src: str, ann_id: int, info: ImageInfo, coco: CocoInstances) -> tuple[dict, Any]:
    """(compressed RLE, category id) of one listed annotation."""
    rle, ann = annotation_rle(src, ann_id, info, coco.annotations, coco.source)
    return rle, ann.get("category_id")


def _category(ref: dict, target_cats: list[Any], categories: dict) -> str | None:
    raw = ref.get("category_id", target_cats)
    ids = raw if isinstance(raw, list) else [raw]
    names: dict[str, None] = {}
    for cid in ids:
        if cid in categories:
            names.setdefault(categories[cid], None)
    return "+".join(names) or None


def _ref_queries(src: str, ref: Any, coco: CocoInstances) -> tuple[list[Query], list[Skipped]]:
    """Queries of one ref (one per sentence), plus notes on what was left out of it."""
    if not isinstance(ref, dict):
        raise FormatError(src, "<ref>", f"expected an object, got {type(ref).__name__}")
    for key in ("ref_id", "ann_id", "image_id", "sentences"):
        if key not in ref:
            raise FormatError(src, key, "missing")
    info = coco.images.get(ref["image_id"])
    if info is None:
        raise FormatError(src, "image_id", f"unknown image id {ref['image_id']!r} (not in {coco.source})")
    ann_ids = _ann_ids(src, ref)
    notes: list[Skipped] = []
    targets: list[tuple[int, dict, Any]] = []
    if ann_ids != [NO_TARGET]:
        for ann_id in ann_ids:
            if any(t[0] == ann_id for t in targets):
                notes.append(Skipped(source=src, reason=f"annotation {ann_id} listed twice in ann_id; kept once"))
                continue
            targets.append((ann_id, *_target(src, ann_id, info, coco)))
    sentences = ref["sentences"]
    if not isinstance(sentences, list):
        raise FormatError(src, "sentences", f"expected a list, got {type(sentences).__name__}")
    if not sentences:
        notes.append(Skipped(source=src, reason="ref has no sentences: no query to load"))
        return [], notes
    kind = "no-target" if not targets else ("single-target" if len(targets) == 1 else "multi-target")
    category = _category(ref, [t[2] for t in targets], coco.categories)
    queries = []
    for j, sent in enumerate(sentences):
        query_id, expression = sentence(src, j, sent)
        instances = [Instance(image_id=info.id, rle=rle, box=rle_to_box(rle), instance_id=str(ann_id),
                              attributes={"category_id": cat, "ref_id": ref["ref_id"]})
                     for ann_id, rle, cat in targets]
        queries.append(Query(query_id=query_id, expression=expression, instances=instances,
                             category=category, type=kind, sources=[src], scope=[info.id]))
    return queries, notes


def load_grefcoco(
    root: str | Path,
    *,
    split_by: str = DEFAULT_SPLIT_BY,
    split: str | None = None,
    instances: str | Path | None = None,
    images: str | Path | None = None,
    strict: bool = True,
) -> Dataset:
    """Load gRefCOCO refs as single-image queries (one per sentence; see the module doc).

    ``root``: the ``grefcoco`` folder or its parent. ``split_by``: the refs file variant
    (the release has ``unc`` only). ``split``: keep only refs of that split (``train``,
    ``val``, ``testA``, ``testB``). ``instances``: the COCO instances file (default
    ``instances.json`` next to the refs). ``images``: folder with the COCO ``train2014``
    files (default: the first of ``<ddir>/images``, ``<root>/images/train2014``, ... that
    exists). ``strict=False`` skips malformed refs into ``Dataset.skipped``.

    >>> ds = load_grefcoco("datasets", split="val")        # doctest: +SKIP
    >>> sum(q.is_absent for q in ds.queries)               # no-target sentences  # doctest: +SKIP
    """
    root = Path(root).resolve()
    ddir = _dataset_dir(root, split_by)
    refs_path = ddir / f"grefs({split_by}).json"
    inst_path = Path(instances) if instances is not None else ddir / "instances.json"
    if images is None:
        images = next((c for c in _image_dirs(ddir) if c.is_dir()), None)
    coco = load_coco_instances(inst_path, images_dir=images)
    refs = read_json(refs_path)
    if not isinstance(refs, list):
        raise FormatError(str(refs_path), "<root>", f"expected a list of refs, got {type(refs).__name__}")
    if split is not None:
        check_split(refs_path, refs, split)
    queries: list[Query] = []
    skipped: list[Skipped] = []
    used: dict[ImageId, None] = {}
    seen_ids: dict[str, str] = {}
    for i, ref in enumerate(tqdm(refs, desc="reading gRefCOCO refs", unit="ref", file=sys.stderr,
                                 disable=len(refs) < 5000)):
        src = f"{refs_path}[{i}]"
        if split is not None and isinstance(ref, dict) and ref.get("split") != split:
            continue
        try:
            new, notes = _ref_queries(src, ref, coco)
            mine: set[str] = set()
            for q in new:
                if q.query_id in seen_ids or q.query_id in mine:
                    raise FormatError(src, "sent_id", f"duplicate sent_id {q.query_id} "
                                      f"(also in {seen_ids.get(q.query_id, src)})")
                mine.add(q.query_id)
            seen_ids.update((qid, src) for qid in mine)
        except FormatError as exc:
            if strict:
                raise
            skipped.append(Skipped(source=src, reason=str(exc)))
            continue
        skipped.extend(notes)
        queries.extend(new)
        if new:
            used.setdefault(coco.images[ref["image_id"]].id, None)
    corpus = {iid: coco.images[iid] for iid in used} if split is not None else coco.images
    name = f"grefcoco({split_by})" + (f"-{split}" if split else "")
    return Dataset(name=name, root=str(ddir), images=corpus, queries=queries, skipped=skipped)
