"""Validation: run a detector over a labelled corpus, score it with the metric suite,
and fit the presence threshold.

The predictions reproduce the index + search pipeline with the model's own forward:

1. per image, the regions kept are the ``max_regions`` patches of positive visible area
   with the highest objectness after NMS at ``nms_iou`` — as ``OwlBackend.encode_images``
   does (OWL-ViT has no objectness head: its first ``max_regions`` visible patches are
   kept, no NMS);
2. per query, every kept region's score is ``sigmoid(logit)`` with the model's class
   head; per image, regions are NMS-ed at ``nms_iou`` in score order; the ``top_k``
   best detections over the corpus are the query's hits;
3. ``present = score >= threshold``.

Threshold fitting maximises the discovery F1 (docs/metrics.md) over every distinct score:
detections are matched once in score order; since greedy matching in sorted order is
online, the decided set at any threshold is a prefix of that list and its TP count is
a prefix sum, so each candidate costs O(1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from resedis.boxes import box_iou, nms, visible
from resedis.finetune.data import TrainImage
from resedis.finetune.detector import image_features, is_owlv2, text_embeddings
from resedis.models.owl import select_regions
from resedis.types import Hit, Query, QueryResult


@dataclass
class RegionSet:
    """Kept regions of one image: boxes (N, 4) xyxy original pixels, features (N, D)
    (the detector's patch features, input of its class head), objectness (N,)."""

    image: TrainImage
    boxes: np.ndarray
    features: torch.Tensor
    objectness: np.ndarray
    iou: np.ndarray  # (N, N) pairwise box IoU, for per-query NMS


def boxes_to_pixels(boxes: torch.Tensor, image: TrainImage, pad_to_square: bool) -> np.ndarray:
    """(P, 4) normalised cxcywh -> (P, 4) xyxy original pixels, clipped to the image."""
    b = boxes.detach().float().cpu().numpy()
    xyxy = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
    if pad_to_square:
        s = float(max(image.width, image.height))
        xyxy = xyxy * s
    else:
        xyxy = xyxy * np.array([image.width, image.height, image.width, image.height], dtype=np.float32)
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, image.width)
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, image.height)
    return xyxy.astype(np.float32)


@torch.no_grad()
def encode_regions(model, pixels, images: Sequence[TrainImage], indices: Sequence[int], *, batch_size: int,
                   max_regions: int = 100, nms_iou: float = 0.5, progress=None) -> list[RegionSet]:
    """Encode images (``pixels.get(indices)`` -> (B, 3, S, S)) into their kept regions."""
    device = next(model.parameters()).device
    owlv2 = is_owlv2(model)
    out: list[RegionSet] = []
    for start in range(0, len(indices), batch_size):
        chunk = list(indices[start : start + batch_size])
        pv = pixels.get(chunk).to(device)
        feats, fmap = image_features(model, pv)
        boxes = model.box_predictor(feats, fmap)
        obj = model.objectness_predictor(feats) if owlv2 else None
        for j, i in enumerate(chunk):
            img = images[i]
            px = boxes_to_pixels(boxes[j], img, owlv2)
            if obj is not None:
                o = obj[j].float().cpu().numpy()
                keep = select_regions(px, o, max_regions, nms_iou)  # as OwlBackend.encode_images
            else:
                o = np.zeros(px.shape[0], dtype=np.float32)
                keep = np.flatnonzero(visible(px))[:max_regions]
            kb = px[keep]
            out.append(RegionSet(img, kb, feats[j, torch.as_tensor(keep, device=device)].clone(), o[keep],
                                 box_iou(kb, kb)))
        if progress is not None:
            progress.update(len(chunk))
    return out


@torch.no_grad()
def query_scores(model, tokenizer_fn, regions: Sequence[RegionSet], texts: Sequence[str], batch_size: int = 256):
    """Scores of every text on every kept region: list over images of (N_i, Q) float32."""
    device = next(model.parameters()).device
    embeds = []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenizer_fn(list(texts[start : start + batch_size]))
        embeds.append(text_embeddings(model, ids.to(device), mask.to(device)))
    q = torch.cat(embeds) if embeds else torch.zeros(0, 1, device=device)
    scores = []
    for r in regions:
        logits, _ = model.class_predictor(r.features[None], q[None], None)
        scores.append(torch.sigmoid(logits[0].float()).cpu().numpy())
    return scores


def rank_hits(regions: Sequence[RegionSet], scores: Sequence[np.ndarray], column: int, *, top_k: int,
              nms_iou: float, threshold: float, per_image: int = 5) -> list[Hit]:
    """The ``top_k`` hits of one query (column of ``scores``), per-image NMS applied.

    Only the ``top_k`` images with the best region can contribute (an image's best
    region always survives its NMS), and at most ``per_image`` regions per image are
    considered."""
    best = np.array([s[:, column].max() if len(s) else -1.0 for s in scores])
    hits: list[Hit] = []
    for i in np.argsort(-best, kind="stable")[:top_k]:
        s = scores[i][:, column]
        cand = np.argsort(-s, kind="stable")[:per_image]
        kept: list[int] = []
        for c in cand:
            if all(regions[i].iou[c, k] <= nms_iou for k in kept):
                kept.append(int(c))
        for c in kept:
            sc = float(s[c])
            hits.append(Hit(image_id=regions[i].image.image_id, box=tuple(float(v) for v in regions[i].boxes[c]),
                            score=sc, present=sc >= threshold))
    hits.sort(key=lambda h: -h.score)
    return hits[:top_k]


def predict(regions, scores, queries: Sequence[Query], *, top_k: int = 20, nms_iou: float = 0.5,
            threshold: float = 0.5) -> list[QueryResult]:
    """QueryResults of the queries (column q of ``scores`` = queries[q])."""
    return [
        QueryResult(query_id=q.query_id, expression=q.expression,
                    hits=rank_hits(regions, scores, j, top_k=top_k, nms_iou=nms_iou, threshold=threshold))
        for j, q in enumerate(queries)
    ]


def fit_presence_threshold(queries: Sequence[Query], results: Sequence[QueryResult], *,
                           min_n_acc: float | None = None) -> tuple[float, dict]:
    """The threshold maximising discovery F1 (ties: the higher threshold).

    ``min_n_acc``: only thresholds whose N_acc (share of absent queries with nothing
    decided present) is at least this are candidates — an operating point that
    trades recall for fewer hallucinated hits; always satisfiable (a threshold above
    every score has N_acc 1). Returns (threshold, {"F1", "precision", "recall",
    "N_acc"}) at that threshold.
    """
    from resedis.metrics import match_detections

    by_id = {r.query_id: r for r in results}
    scores, tps, absent_max = [], [], []
    n_targets = 0
    for q in queries:
        hits = by_id[q.query_id].hits if q.query_id in by_id else []
        n_targets += len(q.instances)
        matches = match_detections(q, hits)
        scores.extend(m.hit.score for m in matches)
        tps.extend(1.0 if m.is_tp else 0.0 for m in matches)
        if q.is_absent:
            absent_max.append(max((m.hit.score for m in matches), default=-np.inf))
    if not scores:
        return 1.0, {"F1": 0.0, "precision": 0.0, "recall": 0.0, "N_acc": None}
    s = np.asarray(scores)
    t = np.asarray(tps)
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    cum_tp = np.cumsum(t)
    n_dec = np.arange(1, len(s) + 1)
    # a cut is only possible where the next score differs (all equal scores go together)
    last_of_run = np.r_[s[1:] != s[:-1], True]
    prec = cum_tp / n_dec
    rec = cum_tp / max(n_targets, 1)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
    f1 = np.where(last_of_run, f1, -1.0)
    nxt_all = np.r_[s[1:], s[-1] - 1e-3]
    cut = (s + nxt_all) / 2  # the threshold of each cut: between its score and the next
    am = np.asarray(absent_max)
    if min_n_acc is not None and len(am):
        n_acc = (am[None, :] < cut[:, None]).mean(axis=1)
        f1 = np.where(n_acc >= min_n_acc, f1, -1.0)
    if f1.max() <= 0:  # nothing acceptable is better than deciding nothing present
        threshold = float(s[0] + 1e-6)
        return threshold, {"F1": 0.0, "precision": 0.0, "recall": 0.0,
                           "N_acc": float(np.mean(am < threshold)) if len(am) else None}
    best = int(np.flatnonzero(f1 == f1.max())[0])
    threshold = float(cut[best])
    stats = {
        "F1": float(max(f1[best], 0.0)),
        "precision": float(prec[best]) if f1[best] > 0 else 0.0,
        "recall": float(rec[best]) if f1[best] > 0 else 0.0,
        "N_acc": float(np.mean(am < threshold)) if len(am) else None,
    }
    return threshold, stats


#: metric keys recorded per epoch in the training history
HISTORY_METRICS = ("BR@1@0.5", "IR@1", "mAP50", "F1", "precision", "recall", "N_acc", "FA_per_query", "IL_MCC", "cgF1")


def validate_model(model, processor, ts, queries: Sequence[Query], pixels, *, batch_size: int, top_k: int,
                   max_regions: int, max_length: int, progress: bool = False, min_n_acc: float | None = None) -> dict:
    """Predict every query over the corpus, fit the presence threshold, score with the
    metric suite at that threshold. Returns {"metrics", "presence_threshold", "threshold_fit"}."""
    from tqdm import tqdm

    from resedis.metrics import evaluate

    def tok(texts):
        enc = processor.tokenizer(texts, padding="max_length", truncation=True, max_length=max_length,
                                  return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    was_training = model.training
    model.eval()
    bar = tqdm(total=len(ts.images), desc="validate", unit="img", leave=False, disable=not progress)
    regions = encode_regions(model, pixels, ts.images, list(range(len(ts.images))), batch_size=batch_size,
                             max_regions=max_regions, progress=bar)
    bar.close()
    scores = query_scores(model, tok, regions, [q.expression for q in queries])
    model.train(was_training)
    results = predict(regions, scores, queries, top_k=top_k, threshold=1.0)
    threshold, fit = fit_presence_threshold(queries, results, min_n_acc=min_n_acc)
    for r in results:
        for h in r.hits:
            h.present = h.score >= threshold
    metrics = evaluate(list(queries), {r.query_id: r.hits for r in results}, n_images=len(ts.images))
    return {"metrics": metrics, "presence_threshold": threshold, "threshold_fit": fit, "results": results}
