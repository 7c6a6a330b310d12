"""A procedurally rendered referring-search benchmark in the ReSeDis format.

``generate(out_dir, images=..., queries=..., absent=..., seed=...)`` writes::

    out_dir/images/000001.jpg ...          JPEG (quality 90), 240-800 px per side
    out_dir/instances.json                 COCO: images, annotations (visible-mask RLE,
                                           bbox [x, y, w, h] from the mask, area,
                                           category_id = shape, attributes {shape, color, size})
    out_dir/expressions/q00001_000042.json one file per (query, target image):
        {"image_id", "expression", "category", "target_annotation": {str(ann_id): RLE},
         "query_id", "type"}; an absent query has one file q00007_absent.json with
         image_id null and an empty target_annotation.

Query mix (see :mod:`resedis.synth.queries`): of the non-absent queries, ~20% aim to be
multi-image (2+ target images), ~15% multi-instance (2+ targets in one image), the rest
single-image; types are balanced round-robin within each kind as far as the corpus
allows (large corpora favour relations: few attribute-only phrases pick out a single
image among thousands). A kind the corpus cannot supply is reported in ``shortfalls``
and its places are filled by the others; if the corpus cannot give enough distinct
queries at all, :class:`ResedisError` says how many it could give.

The targets of every query are exactly the objects of the whole corpus that satisfy
it under the semantics in :mod:`resedis.synth.grammar`. Same seed -> byte-identical
files (for the same package version).

Example::

    from resedis.synth import generate
    summary = generate("bench", images=200, queries=150, absent=20, seed=0)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from resedis.errors import ResedisError
from resedis.masks import encode_mask, rle_area, rle_to_box
from resedis.synth.grammar import NEXT_TO_FRACTION, SUPERLATIVE_RATIO, VOCABULARY, Expression, ObjectTable, evaluate
from resedis.synth.queries import SelectedQuery, select_queries
from resedis.synth.scene import COLORS, SHAPES, SIZES, render_scene, sample_image_size
from resedis.synth.writer import check_out_dir, staged_dir, write_json

__all__ = ["generate", "VOCABULARY", "SHAPES", "COLORS", "SIZES", "Expression", "ObjectTable", "evaluate"]

JPEG_QUALITY = 90


def _check_counts(images: int, queries: int, absent: int, seed: int) -> None:
    for name, value in (("images", images), ("queries", queries), ("absent", absent), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ResedisError(f"synth: {name} must be an integer, got {value!r}")
    if images < 1:
        raise ResedisError(f"synth: images must be >= 1, got {images}")
    if queries < 1:
        raise ResedisError(f"synth: queries must be >= 1, got {queries}")
    if not 0 <= absent <= queries:
        raise ResedisError(f"synth: absent must be between 0 and queries ({queries}), got {absent}")
    if seed < 0:
        raise ResedisError(f"synth: seed must be >= 0, got {seed}")


def generate(
    out_dir: str | Path,
    *,
    images: int = 200,
    queries: int = 150,
    absent: int = 20,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Render ``images`` scenes and write ``queries`` queries (``absent`` of them absent).

    Raises :class:`ResedisError` for bad counts, a non-empty ``out_dir`` (unless
    ``overwrite``), or a corpus too small to give the queries asked for. Returns a
    summary dict (counts of images, annotations, expression files, query types and
    target-set kinds, any bucket shortfalls, seconds taken).
    """
    _check_counts(images, queries, absent, seed)
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite=overwrite)
    start = time.perf_counter()
    image_seeds = np.random.SeedSequence(seed).spawn(images)
    with staged_dir(out_dir, overwrite=overwrite) as stage:
        (stage / "images").mkdir()
        (stage / "expressions").mkdir()
        coco_images, annotations, columns = _render_all(stage / "images", image_seeds, progress=progress)
        table = ObjectTable(**columns)
        selected, mix = select_queries(
            table, queries=queries, absent=absent, rng=np.random.default_rng(np.random.SeedSequence([seed, 1]))
        )
        n_files = _write_expressions(stage / "expressions", selected, annotations, coco_images, progress=progress)
        write_json(stage / "instances.json", _coco(coco_images, annotations, seed))
    present = [q for q in selected if q.type != "absent"]
    per_image = [np.unique(table.image[q.targets], return_counts=True) for q in present]
    return {
        "out_dir": str(out_dir),
        "seed": seed,
        "images": len(coco_images),
        "annotations": len(annotations),
        "queries": len(selected),
        "absent": sum(1 for q in selected if q.type == "absent"),
        "expression_files": n_files,
        "types": {t: sum(1 for q in selected if q.type == t) for t in ("attribute", "position", "relation", "absent")},
        "single_image": sum(1 for imgs, _ in per_image if len(imgs) == 1),
        "multi_image": sum(1 for imgs, _ in per_image if len(imgs) >= 2),
        "multi_instance": sum(1 for _, counts in per_image if counts.max() >= 2),
        "max_target_images": mix["max_target_images"],
        "quotas": mix["requested"],
        "shortfalls": mix["shortfalls"],
        "seconds": round(time.perf_counter() - start, 3),
    }


def _render_all(images_dir: Path, seeds, *, progress: bool):
    coco_images: list[dict] = []
    annotations: list[dict] = []
    cols: dict[str, list] = {k: [] for k in ("image", "shape", "color", "size", "box", "area", "width", "height")}
    for index, seq in enumerate(tqdm(seeds, desc="synth: rendering", unit="img", disable=not progress)):
        rng = np.random.default_rng(seq)
        width, height = sample_image_size(rng)
        scene = render_scene(rng, width, height)
        image_id = index + 1
        file_name = f"{image_id:06d}.jpg"
        Image.fromarray(scene.image).save(images_dir / file_name, "JPEG", quality=JPEG_QUALITY, subsampling=0)
        coco_images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj in scene.objects:
            rle = encode_mask(obj.mask)
            x0, y0, x1, y1 = rle_to_box(rle)
            area = rle_area(rle)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": SHAPES.index(obj.shape) + 1,
                    "segmentation": rle,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": area,
                    "iscrowd": 0,
                    "attributes": {"shape": obj.shape, "color": obj.color, "size": obj.size},
                }
            )
            cols["image"].append(index)
            cols["shape"].append(SHAPES.index(obj.shape))
            cols["color"].append(list(COLORS).index(obj.color))
            cols["size"].append(SIZES.index(obj.size))
            cols["box"].append((x0, y0, x1, y1))
            cols["area"].append(area)
            cols["width"].append(width)
            cols["height"].append(height)
    return coco_images, annotations, cols


def _write_expressions(out: Path, selected: list[SelectedQuery], annotations, coco_images, *, progress: bool) -> int:
    n_files = 0
    width = max(5, len(str(len(selected))))
    for k, query in enumerate(tqdm(selected, desc="synth: expressions", unit="query", disable=not progress)):
        query_id = f"q{k + 1:0{width}d}"
        base = {"expression": query.expression.text(), "category": query.expression.head.shape}
        if query.type == "absent":
            record = {"image_id": None, **base, "target_annotation": {}, "query_id": query_id, "type": "absent"}
            write_json(out / f"{query_id}_absent.json", record)
            n_files += 1
            continue
        by_image: dict[int, dict] = {}
        for obj_index in query.targets:  # table rows are annotations in order
            ann = annotations[int(obj_index)]
            by_image.setdefault(ann["image_id"], {})[str(ann["id"])] = ann["segmentation"]
        for image_id, targets in by_image.items():
            record = {"image_id": image_id, **base, "target_annotation": targets, "query_id": query_id, "type": query.type}
            write_json(out / f"{query_id}_{image_id:06d}.json", record)
            n_files += 1
    return n_files


def _coco(coco_images: list[dict], annotations: list[dict], seed: int) -> dict:
    return {
        "info": {
            "description": "resedis synthetic referring-search benchmark",
            "generator": "resedis.synth",
            "seed": seed,
            "mask": "segmentation is the VISIBLE region (later objects occlude earlier ones)",
            "grammar": {"next_to_fraction": NEXT_TO_FRACTION, "superlative_ratio": SUPERLATIVE_RATIO},
        },
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": s, "supercategory": "shape"} for k, s in enumerate(SHAPES)],
    }
