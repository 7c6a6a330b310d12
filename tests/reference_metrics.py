"""A slow, obvious reference implementation of docs/metrics.md, written separately from
``resedis.metrics`` to cross-check it. Plain loops over Python lists; only the pairwise
IoU primitives of ``resedis.masks`` are shared. Not for production use.
"""

from __future__ import annotations

from resedis.boxes import box_iou
from resedis.masks import mask_iou


def ref_sorted(hits):
    # explicit (−score, position) key: ties keep file order
    indexed = [(-h.score, pos, h) for pos, h in enumerate(hits)]
    indexed.sort(key=lambda t: (t[0], t[1]))
    return [t[2] for t in indexed]


def ref_pair_iou(hit, inst, mode):
    if inst.image_id != hit.image_id:
        return 0.0
    if mode == "mask" and hit.mask is not None and inst.rle is not None:
        return float(mask_iou([hit.mask], [inst.rle])[0, 0])
    return float(box_iou([list(hit.box)], [list(inst.box)])[0, 0])


def ref_greedy(query, hits, mode, thr=0.5):
    """hits already sorted; returns list of matched instance index or None."""
    used = [False] * len(query.instances)
    out = []
    for h in hits:
        best_j, best_v = None, -1.0
        for j, inst in enumerate(query.instances):
            if used[j] or inst.image_id != h.image_id:
                continue
            v = ref_pair_iou(h, inst, mode)
            if v >= thr and v > best_v:
                best_j, best_v = j, v
        if best_j is not None:
            used[best_j] = True
        out.append(best_j)
    return out


def ref_best_iou(query, hit, mode):
    best = 0.0
    for inst in query.instances:
        if inst.image_id == hit.image_id:
            best = max(best, ref_pair_iou(hit, inst, mode))
    return best


def ref_ap(flags, npos):
    """VOC-style: sentinel-padded recall/precision envelope, area by recall changes."""
    if npos == 0 or not flags:
        return 0.0
    rec, prec = [], []
    tp = 0
    for i, f in enumerate(flags):
        tp += 1 if f else 0
        rec.append(tp / npos)
        prec.append(tp / (i + 1))
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    ap = 0.0
    for i in range(1, len(mrec)):
        if mrec[i] != mrec[i - 1]:
            ap += (mrec[i] - mrec[i - 1]) * mpre[i]
    return ap


def ref_evaluate(queries, results, iou="box", n_images=None):
    ks, taus = (1, 5, 10), (0.5, 0.7, 0.9)
    ir = {k: [] for k in ks}
    br = {(k, t): [] for k in ks for t in taus}
    aps = []
    pr_count, pr_hits = 0, 0
    tp_sum = decided_sum = target_sum = 0
    fa = []
    absent_total, absent_ok = 0, 0
    for q in queries:
        hits = ref_sorted(list(results.get(q.query_id, [])))
        G = []
        for inst in q.instances:
            if inst.image_id not in G:
                G.append(inst.image_id)
        ranking = []
        for h in hits:
            if h.image_id not in ranking:
                ranking.append(h.image_id)
        if G:
            for k in ks:
                found = 0
                for g in G:
                    if g in ranking[:k]:
                        found += 1
                ir[k].append(found / min(k, len(G)))
            for k in ks:
                for t in taus:
                    hit = 0.0
                    for h in hits[:k]:
                        if h.image_id in G and ref_best_iou(q, h, iou) >= t:
                            hit = 1.0
                    br[(k, t)].append(hit)
            if hits and hits[0].image_id in G:
                pr_count += 1
                if ref_best_iou(q, hits[0], iou) >= 0.5:
                    pr_hits += 1
            matched = ref_greedy(q, hits, iou)
            aps.append(ref_ap([m is not None for m in matched], len(q.instances)))
        decided = [h for h in hits if h.present]
        dm = ref_greedy(q, decided, iou)
        tp = sum(1 for m in dm if m is not None)
        tp_sum += tp
        decided_sum += len(decided)
        target_sum += len(q.instances)
        fa_imgs = []
        for h in decided:
            if h.image_id not in G and h.image_id not in fa_imgs:
                fa_imgs.append(h.image_id)
        fa.append(len(fa_imgs))
        if not G:
            absent_total += 1
            if not decided:
                absent_ok += 1

    def avg(xs):
        return sum(xs) / len(xs) if xs else 0.0

    out = {f"IR@{k}": avg(ir[k]) for k in ks}
    out["Pr@50"] = pr_hits / pr_count if pr_count else 0.0
    out["Pr@50_count"] = pr_count
    for k in ks:
        for t in taus:
            out[f"BR@{k}@{t}"] = avg(br[(k, t)])
    out["mAP50"] = avg(aps)
    p = tp_sum / decided_sum if decided_sum else 0.0
    r = tp_sum / target_sum if target_sum else 0.0
    out["precision"], out["recall"] = p, r
    out["F1"] = 2 * p * r / (p + r) if (p + r) > 0 else 0.0
    out["FA_per_query"] = avg(fa)
    out["N_acc"] = absent_ok / absent_total if absent_total else None
    out["queries"] = len(queries)
    out["absent_queries"] = absent_total
    out.update(ref_presence(queries, results, iou, n_images))
    return out


# ---------------------------------------------------------------- SA-Co presence metrics
# Written from the definitions (sam3/eval/cgf1_eval.py in facebookresearch/sam3): one
# (query, image) pair at a time, predictions = present detections, max-total-IoU one-to-one
# assignment found by exhaustive search over subsets (no scipy), then thresholded.
SACO_THRESHOLDS = [0.5 + 0.05 * i for i in range(10)]


def ref_best_assignment(ious):
    """Matched IoUs of a one-to-one assignment maximising their sum (bitmask search)."""
    n_dt = len(ious)
    n_gt = len(ious[0]) if n_dt else 0
    memo = {}

    def best(i, used):
        if i == n_dt:
            return 0.0, []
        key = (i, used)
        if key not in memo:
            cand = best(i + 1, used)  # leave prediction i unmatched
            for j in range(n_gt):
                if not used & (1 << j):
                    s, picked = best(i + 1, used | (1 << j))
                    if s + ious[i][j] > cand[0] + 1e-15:
                        cand = (s + ious[i][j], [ious[i][j]] + picked)
            memo[key] = cand
        return memo[key]

    return best(0, 0)[1]


def ref_presence(queries, results, iou="box", n_images=None):
    il = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    tps = [0] * len(SACO_THRESHOLDS)
    pos_dt = n_gt_total = 0
    for q in queries:
        decided = [h for h in results.get(q.query_id, []) if h.present]
        images = []
        for x in [i.image_id for i in q.instances] + [h.image_id for h in decided]:
            if x not in images:
                images.append(x)
        for img in images:
            dts = [h for h in decided if h.image_id == img]
            gts = [i for i in q.instances if i.image_id == img]
            n_gt_total += len(gts)
            if dts and gts:
                il["tp"] += 1
                pos_dt += len(dts)
                matched = ref_best_assignment([[ref_pair_iou(d, g, iou) for g in gts] for d in dts])
                for k, t in enumerate(SACO_THRESHOLDS):
                    tps[k] += sum(1 for v in matched if v >= t - 1e-9)
            elif dts:
                il["fp"] += 1
            else:
                il["fn"] += 1
        if n_images is not None:
            il["tn"] += n_images - len(images)
    f1s = []
    for tp in tps:
        p = tp / pos_dt if pos_dt else 0.0
        r = tp / n_gt_total if n_gt_total else 0.0
        f1s.append(2 * p * r / (p + r) if p + r > 0 else 0.0)
    pmf1 = sum(f1s) / len(f1s)
    if n_images is None:
        return {"IL_MCC": None, "pmF1": pmf1, "cgF1": None}
    tp, fp, fn, tn = il["tp"], il["fp"], il["fn"], il["tn"]
    denom = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    mcc = (tp * tn - fp * fn) / denom ** 0.5 if denom else 0.0
    return {"IL_MCC": mcc, "pmF1": pmf1, "cgF1": pmf1 * mcc}
