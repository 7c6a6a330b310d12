"""resedis.finetune: losses vs slow references, assignment, targets, training, checkpoints, resume."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from resedis.finetune import FinetuneConfig, ScratchConfig, build_scratch_owlv2, build_word_tokenizer, finetune
from resedis.finetune.data import PixelStore, TrainingSet, build_training_set, make_batch, normalised_boxes
from resedis.finetune.detector import detect
from resedis.finetune.losses import (
    LossWeights, assign_targets, box_losses, cxcywh_to_xyxy, generalized_box_iou, match_boxes, sigmoid_focal_loss,
)
from resedis.finetune.run import load_detector
from resedis.finetune.train import StepRunner

TINY = ScratchConfig(image_size=64, patch_size=16, vision_hidden=32, vision_layers=1, vision_heads=2, vision_mlp=64,
                     text_hidden=32, text_layers=1, text_heads=2, text_mlp=64)


# ----------------------------------------------------------------------------- references
def slow_giou(a, b):
    """GIoU of two xyxy boxes, written out."""
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    inter_w = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    inter_h = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = inter_w * inter_h
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    c = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (c - union) / c


def slow_focal(logit, target, alpha=0.25, gamma=2.0):
    p = 1.0 / (1.0 + math.exp(-logit))
    if target == 1:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def test_giou_hand_values_and_reference():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    g = generalized_box_iou(a, b)
    assert g[0, 0].item() == pytest.approx(1 / 7 - 2 / 9)  # IoU 1/7, enclosing 9, union 7
    assert g[1, 1].item() == pytest.approx(-1 / 3)  # disjoint: union 2, enclosing 3
    assert g[0, 2].item() == pytest.approx(1.0)  # identical
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1, size=(12, 2))
    wh = rng.uniform(0.05, 0.5, size=(12, 2))
    boxes = torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float64)
    g = generalized_box_iou(boxes[:5], boxes[5:])
    for i, j in itertools.product(range(5), range(7)):
        assert g[i, j].item() == pytest.approx(slow_giou(boxes[i].tolist(), boxes[5 + j].tolist()), abs=1e-9)


def test_focal_loss_matches_formula():
    logits = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0, 2.0], dtype=torch.float64)
    targets = torch.tensor([0, 1, 0, 1, 0, 1], dtype=torch.float64)
    got = sigmoid_focal_loss(logits, targets)
    for x, t, v in zip(logits.tolist(), targets.tolist(), got.tolist()):
        assert v == pytest.approx(slow_focal(x, int(t)), rel=1e-9)
    # gamma 0, no alpha: plain binary cross-entropy
    bce = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0.0)
    assert bce.tolist() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").tolist())


def test_box_losses_hand_values():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]])
    gt = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.4, 0.3, 0.2, 0.2]])
    l1, giou = box_losses(pred, gt)
    assert l1.item() == pytest.approx(0.1)
    # second pair: x-shift by half the width -> IoU 1/3, enclosing == union
    assert giou.item() == pytest.approx(1 - 1 / 3, abs=1e-6)


def test_hungarian_assignment_is_optimal():
    rng = np.random.default_rng(3)
    w = LossWeights()
    for _trial in range(5):
        pred = torch.tensor(np.c_[rng.uniform(0.2, 0.8, (6, 2)), rng.uniform(0.05, 0.3, (6, 2))], dtype=torch.float32)
        gt = torch.tensor(np.c_[rng.uniform(0.2, 0.8, (3, 2)), rng.uniform(0.05, 0.3, (3, 2))], dtype=torch.float32)
        obj = torch.tensor(rng.normal(size=6), dtype=torch.float32)
        cls = torch.tensor(rng.uniform(size=(6, 3)), dtype=torch.float32)

        def cost(p, k, pred=pred, gt=gt, obj=obj, cls=cls):  # the documented cost, one pair at a time
            pb, gb = pred[p].tolist(), gt[k].tolist()
            l1 = sum(abs(x - y) for x, y in zip(pb, gb))
            giou = slow_giou(cxcywh_to_xyxy(pred[p]).tolist(), cxcywh_to_xyxy(gt[k]).tolist())
            return (w.match_l1 * l1 - w.match_giou * giou - w.match_obj / (1 + math.exp(-obj[p].item()))
                    - w.match_cls * cls[p, k].item())

        best = min(sum(cost(p, k) for k, p in enumerate(perm)) for perm in itertools.permutations(range(6), 3))
        pred_idx, gt_idx = match_boxes(pred, gt, objectness=obj, class_prob=cls, weights=w)
        assert gt_idx.tolist() == [0, 1, 2]
        assert len(set(pred_idx.tolist())) == 3
        assert sum(cost(p, k) for p, k in zip(pred_idx, gt_idx)) == pytest.approx(best, abs=1e-4)


def test_one_to_many_assignment_is_optimal():
    rng = np.random.default_rng(5)
    w = LossWeights(matches_per_object=2)
    pred = torch.tensor(np.c_[rng.uniform(0.2, 0.8, (6, 2)), rng.uniform(0.05, 0.3, (6, 2))], dtype=torch.float32)
    gt = torch.tensor(np.c_[rng.uniform(0.2, 0.8, (2, 2)), rng.uniform(0.05, 0.3, (2, 2))], dtype=torch.float32)
    pb, gb = cxcywh_to_xyxy(pred), cxcywh_to_xyxy(gt)
    cost = [[w.match_l1 * float((pred[p] - gt[k]).abs().sum()) - w.match_giou * slow_giou(pb[p].tolist(), gb[k].tolist())
             for k in range(2)] for p in range(6)]
    # brute force: 2 distinct patches for object 0, 2 others for object 1
    best = min(cost[a][0] + cost[b][0] + cost[c][1] + cost[d][1]
               for a, b, c, d in itertools.permutations(range(6), 4) if a < b and c < d)
    pred_idx, gt_idx = match_boxes(pred, gt, weights=w)
    assert gt_idx.tolist() == [0, 0, 1, 1] and len(set(pred_idx.tolist())) == 4
    assert sum(cost[p][k] for p, k in zip(pred_idx, gt_idx)) == pytest.approx(best, abs=1e-4)
    # more copies than patches allow: lowered to P // K
    pred_idx, gt_idx = match_boxes(pred[:3], gt, weights=LossWeights(matches_per_object=5))
    assert gt_idx.tolist() == [0, 1]


def test_ranking_loss_matches_reference():
    from resedis.finetune.losses import ranking_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    targets = torch.zeros(2, 3, 4, dtype=torch.float64)
    targets[0, 1, 0] = targets[1, 2, 0] = 1  # text 0: two positives in two images
    targets[1, 0, 2] = 1  # text 2: one positive; texts 1 and 3: none (skipped)
    labelled = torch.ones(2, 1, 4, dtype=torch.bool)
    labelled[0, 0, 2] = False  # image 0 is unlabelled for text 2

    def ref_text(t):
        allv = [math.exp(logits[b, p, t]) for b in range(2) for p in range(3) if labelled[b, 0, t]]
        posv = [math.exp(logits[b, p, t]) for b in range(2) for p in range(3) if targets[b, p, t] > 0]
        return -math.log(sum(posv) / sum(allv))

    assert ranking_loss(logits, targets, labelled).item() == pytest.approx((ref_text(0) + ref_text(2)) / 2)
    # a text whose positives already dominate costs ~0
    big = logits.clone()
    big[0, 1, 0] = big[1, 2, 0] = big[1, 0, 2] = 50.0
    assert ranking_loss(big, targets, labelled).item() < 1e-9


def test_tokenizer_ids():
    from resedis.synth import VOCABULARY

    tok = build_word_tokenizer(VOCABULARY, 16)
    vocab = tok.get_vocab()
    ids = [vocab[w] for w in VOCABULARY]
    assert len(set(ids)) == len(VOCABULARY) and min(ids) > 0
    enc = tok(["the red circle", "the blue square to the left of a red circle", "zebra"])["input_ids"]
    assert all(row[0] != 0 for row in enc)
    assert enc[0][1:4] == [vocab["the"], vocab["red"], vocab["circle"]]
    assert enc[0] != enc[1][: len(enc[0])]
    eos = vocab["<eos>"]
    assert eos == max(vocab.values())  # OWL pools the highest id: it must be the end token
    assert enc[2] == [vocab["<bos>"], vocab["<unk>"], eos]


# ----------------------------------------------------------------------------- corpora
@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    from resedis.synth import generate

    root = tmp_path_factory.mktemp("ft_corpora")
    generate(root / "train", images=16, queries=20, absent=3, seed=4242, progress=False)
    generate(root / "val", images=12, queries=12, absent=3, seed=4243, progress=False)
    tiny = root / "tiny.json"
    tiny.write_text(json.dumps(TINY.to_dict()))
    return root


def test_training_set_objects_and_positives(corpora):
    from resedis.io import load_dataset

    ds = load_dataset(corpora / "train")
    ts = build_training_set(ds)
    coco = json.loads((corpora / "train" / "instances.json").read_text())
    per_image = {}
    for ann in coco["annotations"]:
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
    assert len(ts.images) == 16
    for img in ts.images:
        assert len(img.objects) == per_image.get(img.image_id, 0)  # every annotated object is a box target
    n_pairs = 0
    for q in ds.queries:
        t = ts.texts.index(q.expression)
        for inst in q.instances:
            img = next(i for i in ts.images if i.image_id == inst.image_id)
            boxes = img.objects[img.positives[t]]
            assert np.abs(boxes - np.asarray(inst.box, dtype=np.float32)).max(axis=1).min() < 1e-3
            n_pairs += 1
    assert n_pairs > 0
    for i, img in enumerate(ts.images):  # negatives are exactly the texts without a target in the image
        assert set(ts.negatives_for(i).tolist()) == set(range(len(ts.texts))) - set(img.positives)


def test_negatives_have_presence_target_zero(corpora):
    from resedis.io import load_dataset

    ts = TrainingSet.concat([build_training_set(load_dataset(corpora / "train")),
                             build_training_set(load_dataset(corpora / "val"))])
    model, proc = build_scratch_owlv2(TINY, ts.texts, seed=0)
    idx = [0, 1, 2, 16, 17]  # three images of the first dataset, two of the second
    batch = make_batch(ts, idx, 4, np.random.default_rng(0))
    pixels = PixelStore(proc, ts.images)
    ids = proc.tokenizer([ts.texts[t] for t in batch.texts], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        out = detect(model, pixels.get(idx), ids["input_ids"], ids["attention_mask"])
    gt = [normalised_boxes(ts.images[i], True) for i in idx]
    tg = assign_targets(out.logits, out.boxes, out.objectness, gt, batch.refs, LossWeights(matches_per_object=2))
    seen = {"neg": 0, "pos": 0, "unlabelled": 0}
    for b, i in enumerate(idx):
        preds_of = {}
        for p_, g_ in zip(tg.matches[b][0].tolist(), tg.matches[b][1].tolist()):
            preds_of.setdefault(g_, []).append(p_)
        for j, t in enumerate(batch.texts):
            ref = batch.refs[b][j]
            if ref is None:
                assert ts.text_groups[t] != ts.images[i].group and not tg.labelled[b, 0, j]
                seen["unlabelled"] += 1
            elif not ref:
                assert tg.labelled[b, 0, j] and tg.cls[b, :, j].sum() == 0  # absent: 0 on every patch
                seen["neg"] += 1
            else:
                want = torch.zeros(tg.cls.shape[1])
                want[[p_ for k in ref for p_ in preds_of[k]]] = 1
                assert torch.equal(tg.cls[b, :, j], want)
                seen["pos"] += 1
        k = len(ts.images[i].objects)
        m = min(2, tg.cls.shape[1] // k) if k else 0  # two patches per object when there are enough
        assert tg.objectness[b].sum() == m * k
    assert all(v > 0 for v in seen.values()), seen


def test_hard_negatives_are_similar_absent_texts(corpora):
    from resedis.io import load_dataset

    ts = build_training_set(load_dataset(corpora / "train"))
    i = next(k for k, img in enumerate(ts.images) if img.positives)
    img = ts.images[i]
    hard = ts.hard_negatives_for(i)
    assert len(hard) > 0 and not set(hard.tolist()) & set(img.positives)

    def jaccard(a, b):
        a, b = set(ts.texts[a].lower().split()), set(ts.texts[b].lower().split())
        return len(a & b) / len(a | b)

    sim = [max(jaccard(int(t), p) for p in img.positives) for t in hard]
    assert sim == sorted(sim, reverse=True)  # best first
    others = set(ts.negatives_for(i).tolist()) - set(hard.tolist())
    assert all(max(jaccard(t, p) for p in img.positives) <= sim[-1] for t in others)
    batch = make_batch(ts, [i], 3, np.random.default_rng(0), hard_fraction=1.0)
    negs = [t for t, ref in zip(batch.texts, batch.refs[0]) if ref == []]
    assert len(negs) == min(3, len(hard)) and set(negs) <= set(hard.tolist())


def test_detect_equals_model_forward(corpora):
    from resedis.io import load_dataset

    ts = build_training_set(load_dataset(corpora / "train"))
    model, proc = build_scratch_owlv2(TINY, ts.texts, seed=1)
    model.eval()
    texts = ts.texts[:3]
    pixels = PixelStore(proc, ts.images).get([0, 1])
    enc = proc.tokenizer(texts, padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        mine = detect(model, pixels, enc["input_ids"], enc["attention_mask"])
        ref = model(input_ids=enc["input_ids"].repeat(2, 1), attention_mask=enc["attention_mask"].repeat(2, 1),
                    pixel_values=pixels)
    assert torch.allclose(mine.logits, ref.logits, atol=1e-5)
    assert torch.allclose(mine.boxes, ref.pred_boxes, atol=1e-6)
    assert torch.allclose(mine.objectness, ref.objectness_logits, atol=1e-6)
    assert mine.logits[0].std() > 0 and not torch.allclose(mine.logits[..., 0], mine.logits[..., 1])


# ----------------------------------------------------------------------------- training
def _val_loss(model, proc, ts, pixels):
    return StepRunner(model, proc, ts, pixels, LossWeights()).mean_loss(4, 4, seed=123)["loss"]


@pytest.fixture(scope="module")
def trained(corpora, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft_run") / "model"
    cfg = FinetuneConfig(epochs=4, batch_size=4, lr=3e-3, warmup_steps=2, negatives_per_image=4, progress=False)
    result = finetune(corpora / "train", out, scratch=TINY, val_dataset=corpora / "val", config=cfg)
    return out, result


def test_finetune_lowers_loss(corpora, trained):
    from resedis.io import load_dataset

    out, result = trained
    assert result.steps == 16 and len(result.history) == 4
    train_ds, val_ds = load_dataset(corpora / "train"), load_dataset(corpora / "val")
    ts_train, ts_val = build_training_set(train_ds), build_training_set(val_ds)
    before, proc = build_scratch_owlv2(TINY, ts_train.texts, seed=0)  # the run's initial weights
    after, _ = load_detector(out / "last")
    for ts in (ts_train, ts_val):
        pixels = PixelStore(proc, ts.images)
        b, a = _val_loss(before, proc, ts, pixels), _val_loss(after, proc, ts, pixels)
        assert a < 0.9 * b, (b, a)
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    for h in result.history:
        assert set(h["metrics"]) >= {"BR@1@0.5", "mAP50", "N_acc"}


def test_rejection_before_and_after_training_is_reported(corpora, trained):
    from resedis.finetune import checkpoint as ckpt
    from resedis.finetune.validate import validate_model
    from resedis.io import load_dataset

    out, result = trained
    rej = result.rejection
    assert rej == ckpt.read_meta(out)["rejection"]
    assert rej["after"] == {k: result.history[-1]["metrics"][k] for k in ("N_acc", "IL_MCC")}
    # "before" is the validation of the run's initial weights, recomputed independently
    val_ds = load_dataset(corpora / "val")
    ts_val = build_training_set(val_ds)
    before, proc = build_scratch_owlv2(TINY, build_training_set(load_dataset(corpora / "train")).texts, seed=0)
    cfg = FinetuneConfig()
    m = validate_model(before, proc, ts_val, val_ds.queries, PixelStore(proc, ts_val.images), batch_size=4,
                       top_k=cfg.top_k, max_regions=cfg.max_regions,
                       max_length=int(before.config.text_config.max_position_embeddings))["metrics"]
    assert rej["before"] == {"N_acc": m["N_acc"], "IL_MCC": m["IL_MCC"]}
    assert rej["before"]["IL_MCC"] is not None and isinstance(rej["collapsed"], bool)


def test_checkpoint_loads_and_matches_index_path(corpora, trained):
    from PIL import Image
    from transformers import Owlv2ForObjectDetection

    from resedis.models import load_model

    out, result = trained
    meta = json.loads((out / "resedis_checkpoint.json").read_text())
    assert 0.0 <= meta["presence_threshold"] <= 1.0
    assert meta["presence_threshold"] == pytest.approx(result.presence_threshold)
    assert meta["best_epoch"] == result.best_epoch and meta["selected_by"] == "BR@1@0.5"
    hf = Owlv2ForObjectDetection.from_pretrained(out)
    assert hf.config.vision_config.image_size == TINY.image_size
    backend = load_model("owlv2:" + str(out), device="cpu")
    texts = ["the red circle", "a small blue square on the left"]
    q = backend.encode_texts(texts)
    assert q.shape == (2, TINY.text_hidden + 1)
    image_path = sorted((corpora / "val" / "images").iterdir())[0]
    with Image.open(image_path) as im:
        boxes_ref, logits_ref, _ = backend.detector_logits(im.convert("RGB"), texts)
    # the training path (PixelStore + detect) sees what the index path sees
    model, proc = load_detector(out)
    from resedis.finetune.data import TrainImage

    with Image.open(image_path) as im:
        w, h = im.size
    store = PixelStore(proc, [TrainImage(0, str(image_path), w, h, np.zeros((0, 4), np.float32))])
    enc = proc.tokenizer(texts, padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        mine = detect(model.eval(), store.get([0]), enc["input_ids"], enc["attention_mask"])
    assert np.allclose(mine.logits[0].numpy(), logits_ref, atol=2e-2)  # float16 pixel cache
    assert np.abs(mine.logits[0].numpy() - logits_ref).mean() < 2e-3


def test_resume_reproduces_uninterrupted_run(corpora, tmp_path):
    cfg = dict(epochs=2, batch_size=4, lr=3e-3, warmup_steps=2, negatives_per_image=4, progress=False)
    full = finetune(corpora / "train", tmp_path / "a", scratch=TINY, config=FinetuneConfig(**cfg))
    part = finetune(corpora / "train", tmp_path / "b", scratch=TINY, config=FinetuneConfig(**cfg, max_steps=3))
    assert part.stopped_early and part.steps == 3 and part.history == []
    rest = finetune(corpora / "train", tmp_path / "b", scratch=TINY, config=FinetuneConfig(**cfg))
    assert rest.resumed_from_step == 3 and rest.steps == full.steps == 8
    assert part.train_losses + rest.train_losses == pytest.approx(full.train_losses, rel=1e-5)
    assert [h["train_loss"] for h in rest.history] == pytest.approx([h["train_loss"] for h in full.history], rel=1e-5)
    a, _ = load_detector(tmp_path / "a" / "last")
    b, _ = load_detector(tmp_path / "b" / "last")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(pa, pb, atol=1e-5), name
    # other settings cannot silently continue that run
    from resedis.errors import ResedisError

    with pytest.raises(ResedisError, match="other settings"):
        finetune(corpora / "train", tmp_path / "b", scratch=TINY, config=FinetuneConfig(**{**cfg, "lr": 1e-3}))


def test_cli_resumes_after_sigkill(corpora, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "resedis", "finetune", "--dataset", str(corpora / "train"),
           "--from-scratch-config", str(corpora / "tiny.json"), "--out", str(out), "--epochs", "3",
           "--batch-size", "2", "--checkpoint-every", "1", "--lr", "1e-3", "--warmup-steps", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = out / "last" / "trainer_state.pt"
    deadline = time.time() + 120
    step = 0
    while time.time() < deadline and proc.poll() is None:
        if state.is_file():
            try:
                step = torch.load(state, weights_only=False)["step"]
            except Exception:  # replaced while reading: try again
                step = 0
            if step >= 3:
                break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert step >= 3
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["resumed_from_step"] >= step and summary["steps"] == 3 * 8
    assert (out / "model.safetensors").is_file() and (out / "resedis_checkpoint.json").is_file()


def test_cli_needs_a_model(corpora, tmp_path, capsys):
    from resedis.cli import main

    assert main(["finetune", "--dataset", str(corpora / "train"), "--out", str(tmp_path / "x")]) == 2
    assert "--model" in capsys.readouterr().err


def test_presence_threshold_maximises_f1():
    """The prefix-sum fit equals a brute-force search with the metric suite."""
    from resedis.finetune.validate import fit_presence_threshold
    from resedis.metrics import evaluate
    from resedis.types import Hit, Instance, Query, QueryResult

    rng = np.random.default_rng(11)
    queries, results = [], []
    for qi in range(16):
        insts = [Instance(image_id=int(i), rle={}, box=(10.0 * i, 0.0, 10.0 * i + 10, 10.0))
                 for i in rng.choice(8, size=int(rng.integers(0, 3)), replace=False)]
        queries.append(Query(query_id=f"q{qi}", expression=f"e{qi}", instances=insts))
        hits = []
        for _ in range(int(rng.integers(1, 6))):
            i = int(rng.integers(0, 8))
            box = (10.0 * i, 0.0, 10.0 * i + 10, 10.0) if rng.random() < 0.6 else (10.0 * i + 6, 0.0, 10.0 * i + 16, 10.0)
            hits.append(Hit(image_id=i, box=box, score=float(np.round(rng.uniform(), 2)), present=False))
        results.append(QueryResult(query_id=f"q{qi}", expression=f"e{qi}", hits=hits))

    def f1_at(t):
        res = {r.query_id: [Hit(h.image_id, h.box, h.score, h.score >= t) for h in r.hits] for r in results}
        m = evaluate(queries, res)
        return m["F1"], m["N_acc"]

    threshold, fit = fit_presence_threshold(queries, results)
    scores = sorted({h.score for r in results for h in r.hits})
    table = [(t, *f1_at(t)) for t in scores + [1.01]]
    best = max(f for _, f, _ in table)
    assert best > 0
    f1, n_acc = f1_at(threshold)
    assert f1 == pytest.approx(best) and fit["F1"] == pytest.approx(best)
    assert fit["N_acc"] == pytest.approx(n_acc)
    # constrained operating point: best F1 among thresholds with N_acc >= m
    for m in (0.5, 0.75, 1.0):
        t_m, fit_m = fit_presence_threshold(queries, results, min_n_acc=m)
        want = max(f for _, f, n in table if n is not None and n >= m)
        f1_m, n_acc_m = f1_at(t_m)
        assert n_acc_m >= m and f1_m == pytest.approx(want) and fit_m["F1"] == pytest.approx(want)


@pytest.mark.parametrize("family", ["owlv2", "owlvit"])
def test_finetune_from_checkpoint_with_frozen_backbone(corpora, tiny_models, tmp_path, family):
    """Starting from an existing checkpoint (the tiny random ones), OWLv2 and OWL-ViT:
    --freeze-backbone leaves both towers untouched and trains the heads."""
    from resedis.finetune.detector import base_model

    before, _ = load_detector(f"{family}:{tiny_models[family]}")
    cfg = FinetuneConfig(epochs=1, batch_size=4, lr=1e-3, warmup_steps=1, negatives_per_image=2,
                         freeze_backbone=True, max_steps=2, progress=False)
    result = finetune(corpora / "train", tmp_path / "ft", model=f"{family}:{tiny_models[family]}", config=cfg)
    assert result.steps == 2 and all(math.isfinite(v) for v in result.train_losses)
    after, _ = load_detector(tmp_path / "ft" / "last")
    base_names = {n for n, _ in base_model(before).named_parameters()}
    prefix = "owlv2." if family == "owlv2" else "owlvit."
    changed = {n for (n, a), (_, b) in zip(before.named_parameters(), after.named_parameters()) if not torch.equal(a, b)}
    assert changed and all(not n.startswith(prefix) for n in changed), changed
    assert any(n.startswith("class_head.") for n in changed) and any(n.startswith("box_head.") for n in changed)
    assert base_names  # the towers exist and were left as they were
