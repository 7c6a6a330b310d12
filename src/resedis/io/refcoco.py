"""RefCOCO / RefCOCO+ / RefCOCOg (the ``refer`` layout) -> :class:`Dataset`.

Layout (``lichengunc/refer``)::

    ROOT/refcoco/refs(unc).p      pickle: list of refs {ref_id, ann_id, image_id, split,
                                  category_id, sentences: [{sent, raw, sent_id, ...}]}
    ROOT/refcoco/instances.json   COCO instances (images, annotations with segmentation)
    (refcoco+: refs(unc).p; refcocog: refs(umd).p or refs(google).p)

``ROOT`` may also be the dataset folder itself. Every sentence becomes one
single-image query: query id ``str(sent_id)``, expression the tokenised ``sent``
(``raw`` when ``sent`` is missing), target = the mask of the ref's annotation
(polygon or RLE, stored as compressed RLE, box from ``toBbox``, xyxy pixels).
The corpus (``Dataset.images``) is every image of the instances file, or only the
images of the kept refs when a ``split`` is chosen.

The pickle is read with :mod:`pickle`: only load refs files you trust.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from resedis.io.coco import check_rle, load_coco_instances
from resedis.masks import normalize_segmentation, rle_area, rle_to_box
from resedis.types import Dataset, FormatError, ImageId, ImageInfo, Instance, Query, Skipped

DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}


def _image_dirs(ddir: Path) -> list[Path]:
    """Where COCO train2014 images usually sit relative to a refer dataset folder."""
    return [ddir / "images", ddir.parent / "images" / "mscoco" / "images" / "train2014",
            ddir.parent / "images" / "train2014", ddir.parent / "train2014"]


def _dataset_dir(root: Path, dataset: str, split_by: str) -> Path:
    for cand in (root / dataset, root):
        if (cand / f"refs({split_by}).p").is_file():
            return cand
    raise FormatError(str(root), "refs", f"no refs({split_by}).p in {root / dataset} or {root}")


def check_split(refs_path: Path, refs: list, split: str) -> None:
    """Raise :class:`FormatError` naming the splits present when no ref has ``split``."""
    present = sorted({r["split"] for r in refs if isinstance(r, dict) and isinstance(r.get("split"), str)})
    if split not in present:
        raise FormatError(str(refs_path), "split", f"no refs with split {split!r}; the splits in this file are: "
                          f"{', '.join(present) if present else '(none: no ref has a split field)'}")


def _load_refs(path: Path) -> list:
    try:
        with open(path, "rb") as f:
            refs = pickle.load(f)
    except Exception as exc:  # pickle raises many types on corrupt input
        raise FormatError(str(path), "<pickle>", f"cannot unpickle: {type(exc).__name__}: {exc}") from None
    if not isinstance(refs, list):
        raise FormatError(str(path), "<root>", f"expected a list of refs, got {type(refs).__name__}")
    return refs


def sentence(src: str, j: int, sent: Any) -> tuple[str, str]:
    """(query id, whitespace-collapsed expression) of ``sentences[j]`` of the ref at ``src``
    (``sent``, falling back to ``raw``); FormatError naming the field when malformed."""
    if not isinstance(sent, dict) or "sent_id" not in sent:
        raise FormatError(src, f"sentences[{j}].sent_id", "missing")
    text = sent.get("sent") or sent.get("raw")
    if not isinstance(text, str) or not text.strip():
        raise FormatError(src, f"sentences[{j}].sent", f"expected a non-empty string, got {text!r}")
    return str(sent["sent_id"]), " ".join(text.split())


def annotation_rle(src: str, ann_id: Any, info: ImageInfo, anns: dict, inst_src: str) -> tuple[dict, dict]:
    """(compressed RLE, annotation) of annotation ``ann_id``, which a ref at ``src`` lists for
    image ``info``; FormatError naming the refs entry (unknown id, other image) or the
    instances file (segmentation missing, malformed or empty)."""
    ann = anns.get(ann_id)
    if ann is None:
        raise FormatError(src, "ann_id", f"unknown annotation id {ann_id!r} (not in {inst_src})")
    if ann.get("image_id") != info.id:
        raise FormatError(src, "ann_id", f"annotation {ann_id!r} belongs to image {ann.get('image_id')!r}, "
                          f"not {info.id!r}")
    where = f"{inst_src} (annotation {ann_id})"
    if "segmentation" not in ann:
        raise FormatError(where, "segmentation", "missing")
    seg = ann["segmentation"]
    if isinstance(seg, dict):
        check_rle(seg, info.height, info.width, where, "segmentation")
    try:
        rle = normalize_segmentation(seg, info.height, info.width)
    except ValueError as exc:
        raise FormatError(where, "segmentation", str(exc)) from None
    if rle_area(rle) <= 0:
        raise FormatError(where, "segmentation", "the mask is empty")
    return rle, ann


def _ref_queries(src: str, ref: Any, anns: dict, images: dict[ImageId, ImageInfo],
                 categories: dict, inst_src: str) -> list[Query]:
    if not isinstance(ref, dict):
        raise FormatError(src, "<ref>", f"expected a dict, got {type(ref).__name__}")
    for key in ("ref_id", "ann_id", "image_id", "sentences"):
        if key not in ref:
            raise FormatError(src, key, "missing")
    info = images.get(ref["image_id"])
    if info is None:
        raise FormatError(src, "image_id", f"unknown image id {ref['image_id']!r} (not in {inst_src})")
    rle, ann = annotation_rle(src, ref["ann_id"], info, anns, inst_src)
    sentences = ref["sentences"]
    if not isinstance(sentences, list) or not sentences:
        raise FormatError(src, "sentences", "expected a non-empty list")
    cat_id = ref.get("category_id", ann.get("category_id"))
    category = categories.get(cat_id)
    queries = []
    for j, sent in enumerate(sentences):
        query_id, expression = sentence(src, j, sent)
        inst = Instance(image_id=info.id, rle=rle, box=rle_to_box(rle), instance_id=str(ref["ann_id"]),
                        attributes={"category_id": cat_id, "ref_id": ref["ref_id"]})
        queries.append(Query(query_id=query_id, expression=expression, instances=[inst],
                             category=category, type=None, sources=[src]))
    return queries


def load_refcoco(
    root: str | Path,
    *,
    dataset: str = "refcoco",
    split_by: str | None = "unc",
    split: str | None = None,
    instances: str | Path | None = None,
    images: str | Path | None = None,
    strict: bool = True,
) -> Dataset:
    """Load RefCOCO-family refs as single-image queries (one per sentence).

    ``split_by``: the refs file variant (``unc``, ``umd``, ``google``); ``None`` picks
    the usual one for ``dataset``. ``split``: keep only refs of that split (``val``,
    ``testA``, ...). ``images``: folder with the COCO ``train2014`` files (``path`` is
    set where a file exists); by default ``images/`` next to the refs file or the
    refer layout's ``images/mscoco/images/train2014``. ``strict=False`` skips bad refs into ``Dataset.skipped``.
    """
    root = Path(root).resolve()
    split_by = split_by or DEFAULT_SPLIT_BY.get(dataset, "unc")
    ddir = _dataset_dir(root, dataset, split_by)
    refs_path = ddir / f"refs({split_by}).p"
    inst_path = Path(instances) if instances is not None else ddir / "instances.json"
    if images is None:
        images = next((c for c in _image_dirs(ddir) if c.is_dir()), None)
    coco = load_coco_instances(inst_path, images_dir=images)
    refs = _load_refs(refs_path)
    if split is not None:
        check_split(refs_path, refs, split)
    queries: list[Query] = []
    skipped: list[Skipped] = []
    used: dict[ImageId, None] = {}
    seen_ids: dict[str, str] = {}
    for i, ref in enumerate(refs):
        src = f"{refs_path}[{i}]"
        if split is not None and isinstance(ref, dict) and ref.get("split") != split:
            continue
        try:
            new = _ref_queries(src, ref, coco.annotations, coco.images, coco.categories, coco.source)
            for q in new:
                if q.query_id in seen_ids:
                    raise FormatError(src, "sent_id", f"duplicate sent_id {q.query_id} (also in {seen_ids[q.query_id]})")
            for q in new:
                seen_ids[q.query_id] = src
        except FormatError as exc:
            if strict:
                raise
            skipped.append(Skipped(source=src, reason=str(exc)))
            continue
        queries.extend(new)
        used.setdefault(new[0].instances[0].image_id, None)
    corpus = {iid: coco.images[iid] for iid in used} if split is not None else coco.images
    name = f"{dataset}({split_by})" + (f"-{split}" if split else "")
    return Dataset(name=name, root=str(ddir), images=corpus, queries=queries, skipped=skipped)
