"""Detection losses for OWL-style detectors: focal, L1, generalised IoU, and the
box-to-target assignment.

Conventions: boxes handed to these functions are **normalised** to the model's
square input (the OWL processors pad an image to a square at the bottom/right and
resize it), in ``cxcywh`` (centre x, centre y, width, height) as the OWL box head
predicts them, or ``xyxy`` where a function says so. All values lie in [0, 1].

Assignment (documented, used by :func:`match_boxes`): for each image, the predicted
boxes of all P patches are matched one-to-one to the image's K annotated objects with
the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the cost

    C[p, k] = w_l1 * |b_p - g_k|_1 (cxcywh)  -  w_giou * GIoU(b_p, g_k)
              -  w_obj * sigmoid(objectness_p)  -  w_cls * mean_t sigmoid(logit[p, t])

where the last mean runs over the texts that refer to object k in this batch (0 when
none do). Each object takes exactly one patch (P >= K is required); unmatched
patches are background for every text and for objectness.

One-to-many option (``LossWeights.matches_per_object = m > 1``, as in the one-to-many
branch of H-DETR): every object is repeated m times in the cost matrix, so it takes
its m cheapest distinct patches (m is lowered for an image where P < K * m). All m
are positives of the object's texts and of objectness and all regress its box. Dense
targets make training from scratch converge much faster; at search time the
per-image NMS removes the duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def pairwise_iou_and_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a (N, 4), b (M, 4) xyxy -> IoU (N, M) and union area (N, M)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=1e-9), union


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU (Rezatofighi et al. 2019): a (N, 4), b (M, 4) xyxy -> (N, M) in [-1, 1].

    ``GIoU = IoU - (|C| - |A ∪ B|) / |C|`` with C the smallest box enclosing both.
    """
    iou, union = pairwise_iou_and_union(a, b)
    lt = torch.minimum(a[:, None, :2], b[None, :, :2])
    rb = torch.maximum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing.clamp(min=1e-9)


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Element-wise sigmoid focal loss (Lin et al. 2017), same shape as ``logits``.

    ``FL = -alpha_t * (1 - p_t)^gamma * log(p_t)`` with ``p_t = p`` for target 1 and
    ``1 - p`` for target 0, ``alpha_t = alpha`` for target 1 and ``1 - alpha`` for 0
    (``alpha < 0`` disables the weighting). Computed from logits for stability.
    """
    targets = targets.to(logits.dtype)
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


@dataclass
class LossWeights:
    """Weights of the loss terms and of the matching cost (DETR / OWL-ViT defaults)."""

    cls: float = 2.0
    l1: float = 5.0
    giou: float = 2.0
    objectness: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    match_l1: float = 5.0
    match_giou: float = 2.0
    match_obj: float = 1.0
    match_cls: float = 2.0
    matches_per_object: int = 1
    rank: float = 0.0  # weight of the optional retrieval (ranking) loss, see detection_loss


def match_boxes(
    pred_boxes: torch.Tensor,
    gt_boxes: torch.Tensor,
    *,
    objectness: torch.Tensor | None = None,
    class_prob: torch.Tensor | None = None,
    weights: LossWeights | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian assignment of predicted boxes to ground-truth objects of ONE image.

    pred_boxes (P, 4) and gt_boxes (K, 4): normalised cxcywh. objectness (P,) logits
    or None. class_prob (P, K): mean sigmoid class probability of the texts referring
    to each object (0 where none does) or None. Returns (pred_idx, gt_idx), int64
    arrays of length K * m (every object is assigned m patches, m =
    ``weights.matches_per_object`` lowered to P // K), sorted by gt_idx.
    """
    w = weights or LossWeights()
    k = gt_boxes.shape[0]
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if pred_boxes.shape[0] < k:
        raise ValueError(f"{k} objects but only {pred_boxes.shape[0]} predicted boxes: cannot assign")
    with torch.no_grad():
        pb, gb = pred_boxes.float(), gt_boxes.float()
        cost = w.match_l1 * torch.cdist(pb, gb, p=1)
        cost = cost - w.match_giou * generalized_box_iou(cxcywh_to_xyxy(pb), cxcywh_to_xyxy(gb))
        if objectness is not None:
            cost = cost - w.match_obj * torch.sigmoid(objectness.float())[:, None]
        if class_prob is not None:
            cost = cost - w.match_cls * class_prob.float()
    from scipy.optimize import linear_sum_assignment

    m = max(1, min(int(w.matches_per_object), pred_boxes.shape[0] // k))
    c = cost.cpu().numpy()
    if m > 1:
        c = np.repeat(c, m, axis=1)  # column j*m + r = copy r of object j
    rows, cols = linear_sum_assignment(c)
    cols = cols // m
    order = np.argsort(cols, kind="stable")
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


def box_losses(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed L1 (cxcywh) and summed (1 - GIoU) over matched pairs: pred, gt (M, 4) cxcywh."""
    if pred.shape[0] == 0:
        zero = pred.sum() * 0.0
        return zero, zero
    l1 = (pred - gt).abs().sum()
    giou = torch.diag(generalized_box_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(gt)))
    return l1, (1.0 - giou).sum()


@dataclass
class Targets:
    """Training targets of one step (see :func:`assign_targets`).

    cls (B, P, T) 0/1: patch p of image b is assigned to an object text t denotes;
    labelled (B, 1, T) bool: False where refs[b][t] is None (pair left out of the loss);
    objectness (B, P) 0/1: patch p is assigned to some object; matches[b] =
    (pred_idx, gt_idx) of image b.
    """

    cls: torch.Tensor
    labelled: torch.Tensor
    objectness: torch.Tensor
    matches: list[tuple[np.ndarray, np.ndarray]]


def assign_targets(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    objectness: torch.Tensor | None,
    gt_boxes: list[torch.Tensor],
    refs: list[list[list[int]]],
    weights: LossWeights | None = None,
) -> Targets:
    """Match each image's objects to patches (:func:`match_boxes`) and derive the targets.

    A text absent from an image (``refs[b][t] == []``) gets target 0 on every patch of
    that image: the presence signal. ``refs[b][t] is None`` marks an unlabelled pair.
    """
    w = weights or LossWeights()
    b_count, p_count, t_count = logits.shape
    cls_targets = torch.zeros_like(logits, requires_grad=False)
    labelled = torch.tensor([[r is not None for r in row] for row in refs], dtype=torch.bool,
                            device=logits.device).reshape(b_count, 1, t_count)
    obj_targets = torch.zeros((b_count, p_count), dtype=logits.dtype, device=logits.device)
    prob = torch.sigmoid(logits.detach())
    matches = []
    for b in range(b_count):
        k_count = gt_boxes[b].shape[0]
        if k_count == 0:
            matches.append((np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)))
            continue
        class_prob = torch.zeros((p_count, k_count), dtype=prob.dtype, device=prob.device)
        n_ref = torch.zeros(k_count, dtype=prob.dtype, device=prob.device)
        for t, objs in enumerate(refs[b]):
            for k in objs or ():
                class_prob[:, k] += prob[b, :, t]
                n_ref[k] += 1
        class_prob = class_prob / n_ref.clamp(min=1)
        pred_idx, gt_idx = match_boxes(
            boxes[b].detach(),
            gt_boxes[b].to(boxes.device, boxes.dtype),
            objectness=None if objectness is None else objectness[b].detach(),
            class_prob=class_prob,
            weights=w,
        )
        preds_of: dict[int, list[int]] = {}
        for p, g in zip(pred_idx.tolist(), gt_idx.tolist()):
            preds_of.setdefault(g, []).append(p)
        for t, objs in enumerate(refs[b]):
            for k in objs or ():
                cls_targets[b, preds_of[k], t] = 1.0
        obj_targets[b, torch.as_tensor(pred_idx, device=logits.device)] = 1.0
        matches.append((pred_idx, gt_idx))
    return Targets(cls=cls_targets, labelled=labelled, objectness=obj_targets, matches=matches)


def detection_loss(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    objectness: torch.Tensor | None,
    gt_boxes: list[torch.Tensor],
    refs: list[list[list[int]]],
    weights: LossWeights | None = None,
) -> dict[str, torch.Tensor]:
    """The training loss of one step.

    logits (B, P, T), boxes (B, P, 4) cxcywh, objectness (B, P) or None;
    gt_boxes[b] (K_b, 4) cxcywh normalised; refs[b][t] = indices of image b's objects
    that text t denotes ([] = text absent from the image: all its targets are 0;
    None = unlabelled pair, left out).

    Terms (returned unweighted, with ``loss`` = the weighted sum):
    ``cls``  sigmoid focal loss summed over all labelled (patch, text) pairs, target 1
             exactly on the patches assigned (:func:`match_boxes`) to an object the
             text denotes, divided by the number of such positives;
    ``l1``, ``giou``  summed over assigned (patch, object) pairs / number of objects;
    ``objectness``  sigmoid focal loss over all patches, target 1 on patches assigned
             to any object / number of objects (0 for OWL-ViT);
    ``rank`` (optional, ``weights.rank > 0``) the retrieval loss: for every text with a
             target in the batch, the multi-positive softmax cross-entropy of its logits
             over ALL labelled patches of ALL images of the batch,
             ``-log(sum_pos exp(l) / sum_all exp(l))``, averaged over those texts. It
             trains directly what corpus-scale search needs — the target patch must
             outscore every patch of every other image — which the focal loss, whose
             gradient vanishes on negatives already below ~0.05, barely does.
    Also returns ``positives`` and ``objects`` counts (float tensors).
    """
    w = weights or LossWeights()
    tg = assign_targets(logits, boxes, objectness, gt_boxes, refs, w)
    n_pos = tg.cls.sum()
    n_obj = tg.objectness.sum()
    focal = sigmoid_focal_loss(logits, tg.cls, alpha=w.focal_alpha, gamma=w.focal_gamma)
    cls = (focal * tg.labelled).sum() / n_pos.clamp(min=1)
    pred = [boxes[b, torch.as_tensor(p, device=boxes.device)] for b, (p, _) in enumerate(tg.matches) if len(p)]
    gt = [gt_boxes[b].to(boxes.device, boxes.dtype)[torch.as_tensor(g, device=boxes.device)]
          for b, (_, g) in enumerate(tg.matches) if len(g)]
    if pred:
        l1, giou = box_losses(torch.cat(pred), torch.cat(gt))
    else:
        l1 = giou = boxes.sum() * 0.0
    l1 = l1 / n_obj.clamp(min=1)
    giou = giou / n_obj.clamp(min=1)
    if objectness is not None:
        obj = sigmoid_focal_loss(objectness, tg.objectness, alpha=w.focal_alpha, gamma=w.focal_gamma).sum()
        obj = obj / n_obj.clamp(min=1)
    else:
        obj = logits.sum() * 0.0
    total = w.cls * cls + w.l1 * l1 + w.giou * giou + w.objectness * obj
    rank = ranking_loss(logits, tg.cls, tg.labelled) if w.rank > 0 else logits.sum() * 0.0
    total = total + w.rank * rank
    return {"loss": total, "cls": cls, "l1": l1, "giou": giou, "objectness": obj, "rank": rank,
            "positives": n_pos, "objects": n_obj}


def ranking_loss(logits: torch.Tensor, targets: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Multi-positive softmax retrieval loss over all patches of the batch, per text.

    logits, targets (B, P, T); labelled (B, 1, T). Texts without a positive are skipped;
    unlabelled (image, text) pairs are excluded from the denominator. Returns the mean.
    """
    b, p, t = logits.shape
    flat = logits.permute(2, 0, 1).reshape(t, b * p)  # (T, B*P)
    pos = targets.permute(2, 0, 1).reshape(t, b * p) > 0
    valid = labelled.expand(b, p, t).permute(2, 0, 1).reshape(t, b * p)
    has_pos = pos.any(dim=1)
    if not bool(has_pos.any()):
        return logits.sum() * 0.0
    flat, pos, valid = flat[has_pos], pos[has_pos], valid[has_pos]
    neg_inf = torch.finfo(flat.dtype).min
    all_lse = torch.logsumexp(torch.where(valid, flat, neg_inf), dim=1)
    pos_lse = torch.logsumexp(torch.where(pos, flat, neg_inf), dim=1)
    return (all_lse - pos_lse).mean()
