"""``finetune(...)``: the public entry point — data, model, loop, validation, checkpoints."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from resedis.errors import ResedisError
from resedis.finetune import checkpoint as ckpt
from resedis.finetune.data import PixelStore, TrainingSet, build_training_set, make_batch
from resedis.finetune.scratch import ScratchConfig, build_scratch_owlv2
from resedis.finetune.train import (
    RESUME_KEYS, FinetuneConfig, StepRunner, config_dict, epoch_batches, lr_factor, rng_state, set_rng_state,
    steps_per_epoch, trainable_parameters,
)
from resedis.finetune.rejection import REJECTION_KEYS, rejection_summary
from resedis.finetune.validate import HISTORY_METRICS, validate_model
from resedis.models.checkpoint import load_checkpoint
from resedis.models.owl import OWL_FAMILIES
from resedis.models.resolver import resolve_device, resolve_weights
from resedis.models.spec import ALIASES, MODELS, parse_spec
from resedis.types import Dataset

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    out_dir: Path
    steps: int  # optimizer steps done in total (all sessions)
    resumed_from_step: int | None
    best_epoch: int | None
    best_score: float | None
    presence_threshold: float | None
    history: list[dict] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)  # per step, this session only
    stopped_early: bool = False  # max_steps reached before the last epoch ended
    rejection: dict | None = None  # resedis.finetune.rejection.rejection_summary (with a validation split)


def _load_dataset(ds) -> Dataset:
    if isinstance(ds, Dataset):
        return ds
    from resedis.io import load_dataset

    return load_dataset(ds)


def load_detector(spec_or_dir: str | Path):
    """A model spec (``owlv2:/dir``, ``owlv2:./dir``, ``owlv2:org/name``, ``demo``) or a
    checkpoint directory (a ``Path``, or a string not starting with a family or alias
    name, e.g. ``/runs/best``) -> (model, processor), float32 on the CPU.

    Loaded by the same :func:`resedis.models.checkpoint.load_checkpoint` as inference, so
    training preprocesses exactly as search will (the PIL image processor)."""
    if isinstance(spec_or_dir, Path) or spec_or_dir.partition(":")[0].strip().lower() not in {*MODELS, *ALIASES}:
        path, name, classes = Path(spec_or_dir).expanduser(), str(spec_or_dir), OWL_FAMILIES
    else:
        parsed = parse_spec(spec_or_dir)
        if parsed.family not in OWL_FAMILIES:
            raise ResedisError(f"finetune trains OWL detectors (owlv2:..., owlvit:...), not {parsed.family!r}")
        path, name = resolve_weights(parsed), str(parsed)
        classes = {parsed.family: OWL_FAMILIES[parsed.family]}
    model, processor = load_checkpoint(path, classes, spec=name)
    return model, processor


def _check_resume(saved: dict, config: FinetuneConfig, out_dir: Path) -> None:
    diff = {k: (saved.get(k), getattr(config, k)) for k in RESUME_KEYS if saved.get(k) != getattr(config, k)}
    if diff:
        detail = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ResedisError(f"{out_dir}/last holds a run with other settings ({detail}); "
                           "rerun with the same settings to resume, or choose another --out")


def finetune(dataset, out_dir, *, model: str | None = None, scratch: ScratchConfig | None = None,
             val_dataset=None, config: FinetuneConfig | None = None) -> FinetuneResult:
    """Train an OWL detector on ``dataset`` (a Dataset or a path ``load_dataset`` reads,
    or a list of them: trained on together, each its own pool of negatives).

    Exactly one of ``model`` (spec or directory of a checkpoint to start from) and
    ``scratch`` (architecture of a randomly initialised OWLv2) is needed — unless
    ``OUT_DIR/last`` exists, in which case the run resumes from it. See
    :mod:`resedis.finetune.checkpoint` for what is written where.
    """
    from tqdm import tqdm

    config = config or FinetuneConfig()
    config.validate()
    out_dir = Path(out_dir)
    device = resolve_device(config.device)
    train_list = [_load_dataset(d) for d in (dataset if isinstance(dataset, (list, tuple)) else [dataset])]
    if not train_list:
        raise ResedisError("no training dataset given")
    val_ds = _load_dataset(val_dataset) if val_dataset is not None else None
    parts = [build_training_set(d, category_texts=config.category_texts) for d in train_list]
    ts = TrainingSet.concat(parts)
    vs = build_training_set(val_ds) if val_ds is not None else None

    last = ckpt.find_last(out_dir)
    state = None
    if last is not None:
        state = ckpt.load_state(last)
        _check_resume(state["config"], config, out_dir)
        net, processor = load_detector(last)
        log.info("resuming from %s at step %d", last, state["step"])
    elif model is not None and scratch is not None:
        raise ResedisError("give either a model to start from or a from-scratch config, not both")
    elif model is not None:
        net, processor = load_detector(model)
    elif scratch is not None:
        net, processor = build_scratch_owlv2(scratch, texts=ts.texts, seed=config.seed)
    else:
        raise ResedisError("no model: pass --model SPEC or --from-scratch-config JSON")
    net.to(device).train()
    max_length = int(net.config.text_config.max_position_embeddings)

    params = trainable_parameters(net, config.freeze_backbone)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    groups = [img.group for img in ts.images]
    spe = steps_per_epoch(groups, config.batch_size)
    total = config.epochs * spe
    step = 0
    history: list[dict] = []
    best_score = None
    best_epoch = None
    threshold = None
    epoch_sums = {"loss": 0.0, "n": 0}
    rejection_before = None
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        step, history = state["step"], state["history"]
        best_score, best_epoch, threshold = state["best_score"], state["best_epoch"], state["presence_threshold"]
        epoch_sums = state["epoch_sums"]
        rejection_before = state.get("rejection_before")
    resumed_from = step if state is not None else None

    pixels = PixelStore(processor, ts.images)
    val_pixels = PixelStore(processor, vs.images) if vs is not None else None
    runner = StepRunner(net, processor, ts, pixels, config.loss)
    meta_base = {
        "config": config_dict(config),
        "scratch": scratch.to_dict() if scratch is not None else (state or {}).get("scratch"),
        "base_model": model if model is not None else (state or {}).get("base_model"),
        "train_datasets": [{"name": d.name, "root": d.root, "images": len(p.images), "texts": len(p.texts),
                            "skipped": len(p.skipped)} for d, p in zip(train_list, parts)],
        "val_dataset": None if val_ds is None else {"name": val_ds.name, "root": val_ds.root,
                                                    "images": len(vs.images), "queries": len(val_ds.queries)},
    }

    def save_last() -> None:
        ckpt.save_last(out_dir, net, processor, {
            "config": config_dict(config), "step": step, "optimizer": opt.state_dict(), "rng": rng_state(),
            "history": history, "best_score": best_score, "best_epoch": best_epoch,
            "presence_threshold": threshold, "epoch_sums": epoch_sums,
            "scratch": meta_base["scratch"], "base_model": meta_base["base_model"],
            "rejection_before": rejection_before,
        })

    def validate(model_net):
        return validate_model(model_net, processor, vs, val_ds.queries, val_pixels, batch_size=config.batch_size,
                              top_k=config.top_k, max_regions=config.max_regions, max_length=max_length,
                              progress=config.progress, min_n_acc=config.min_n_acc)

    if vs is not None and state is None:
        # rejection of absent queries before any step, to compare with after (rejection.py)
        rejection_before = {k: validate(net)["metrics"].get(k) for k in REJECTION_KEYS}

    losses: list[float] = []
    stopped = False
    start_epoch = step // spe
    try:
        for epoch in range(start_epoch, config.epochs):
            batches = epoch_batches(config.seed, epoch, groups, config.batch_size)
            first = step - epoch * spe
            bar = tqdm(total=spe, initial=first, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
                       disable=not config.progress, dynamic_ncols=True)
            t0 = time.time()
            for b in range(first, spe):
                if config.max_steps is not None and step >= config.max_steps:
                    stopped = True
                    break
                idx = batches[b]
                batch = make_batch(ts, idx, config.negatives_per_image, np.random.default_rng([config.seed, step]),
                                   config.hard_negative_fraction)
                for g in opt.param_groups:
                    g["lr"] = config.lr * lr_factor(step, config.warmup_steps, total)
                terms = runner.loss(batch)
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                opt.step()
                step += 1
                value = float(terms["loss"].detach())
                losses.append(value)
                epoch_sums["loss"] += value
                epoch_sums["n"] += 1
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}", cls=f"{float(terms['cls'].detach()):.3f}",
                                giou=f"{float(terms['giou'].detach()):.3f}")
                if config.checkpoint_every and step % config.checkpoint_every == 0 and step % spe != 0:
                    save_last()
            bar.close()
            if stopped:
                break
            entry = {"epoch": epoch + 1, "step": step, "train_loss": epoch_sums["loss"] / max(epoch_sums["n"], 1),
                     "epoch_wall_s": round(time.time() - t0, 1)}
            epoch_sums = {"loss": 0.0, "n": 0}
            if vs is not None:
                runner_val = StepRunner(net, processor, vs, val_pixels, config.loss)
                entry["val_loss"] = runner_val.mean_loss(config.batch_size, config.negatives_per_image, config.seed)["loss"]
                res = validate(net)
                entry["metrics"] = {k: res["metrics"].get(k) for k in HISTORY_METRICS}
                entry["presence_threshold"] = res["presence_threshold"]
                score = -entry["val_loss"] if config.select_metric == "val_loss" else res["metrics"][config.select_metric]
                log.info("epoch %d: train %.4f val %.4f %s", epoch + 1, entry["train_loss"], entry["val_loss"],
                         json.dumps(entry["metrics"]))
                if best_score is None or score > best_score:
                    best_score, best_epoch, threshold = float(score), epoch + 1, res["presence_threshold"]
                    ckpt.save_best(out_dir, net, processor, {
                        **meta_base, "presence_threshold": threshold, "threshold_source": "validation",
                        "threshold_fit": res["threshold_fit"], "min_n_acc": config.min_n_acc,
                        "selected_by": config.select_metric,
                        "best_epoch": best_epoch, "best_step": step, "val_metrics": res["metrics"],
                        "history": history + [entry],
                    })
            history.append(entry)
            save_last()
    except KeyboardInterrupt:
        save_last()
        raise
    if stopped:
        save_last()
    elif vs is None and history:
        # no validation split: the final model is the result; its threshold is fitted on
        # the (first) TRAINING dataset (optimistic; recorded as such)
        first = parts[0] if len(parts) > 1 else ts
        res = validate_model(net, processor, first, train_list[0].queries,
                             pixels if first is ts else PixelStore(processor, first.images),
                             batch_size=config.batch_size, top_k=config.top_k, max_regions=config.max_regions,
                             max_length=max_length, min_n_acc=config.min_n_acc)
        threshold = res["presence_threshold"]
        ckpt.save_best(out_dir, net, processor, {
            **meta_base, "presence_threshold": threshold, "threshold_source": "training",
            "threshold_fit": res["threshold_fit"], "selected_by": "last epoch (no validation split)",
            "best_epoch": history[-1]["epoch"], "best_step": step, "train_metrics": res["metrics"],
            "history": history,
        })
    elif history and (meta := ckpt.read_meta(out_dir)) is not None:
        meta["history"] = history  # full history, also epochs after the best one
        if rejection_before is not None and "metrics" in history[-1]:
            rejection = rejection_summary(rejection_before, history[-1]["metrics"])
            meta["rejection"] = rejection
            for reason in rejection["reasons"]:
                log.warning("rejection of absent queries collapsed during fine-tuning: %s (validation split, "
                            "before the first step vs after the last epoch)", reason)
        ckpt.write_meta(out_dir, meta)
    return FinetuneResult(out_dir=out_dir, steps=step, resumed_from_step=resumed_from, best_epoch=best_epoch,
                          best_score=best_score, presence_threshold=threshold, history=history,
                          train_losses=losses, stopped_early=stopped,
                          rejection=(ckpt.read_meta(out_dir) or {}).get("rejection") if vs is not None else None)


def refit_threshold(model_dir, val_dataset, *, min_n_acc: float | None = None, device: str | None = None,
                    batch_size: int = 16, top_k: int = 20, max_regions: int = 100) -> dict:
    """Recompute the presence threshold of the model in ``model_dir`` on ``val_dataset``
    (max discovery F1, optionally subject to N_acc >= ``min_n_acc``) and store it in
    ``model_dir/resedis_checkpoint.json`` (the weights are not touched). Returns the new metadata.

    Checkpoint selection by a threshold-free metric (BR@1@0.5, the default) does not
    depend on the threshold, so this equals training with ``min_n_acc`` set.
    """
    model_dir = Path(model_dir)
    net, processor = load_detector(model_dir)
    net.to(resolve_device(device)).eval()
    ds = _load_dataset(val_dataset)
    vs = build_training_set(ds)
    res = validate_model(net, processor, vs, ds.queries, PixelStore(processor, vs.images), batch_size=batch_size,
                         top_k=top_k, max_regions=max_regions,
                         max_length=int(net.config.text_config.max_position_embeddings), min_n_acc=min_n_acc)
    meta = ckpt.read_meta(model_dir) or {}
    meta.update({"presence_threshold": res["presence_threshold"], "threshold_source": "validation",
                 "threshold_fit": res["threshold_fit"], "min_n_acc": min_n_acc, "val_metrics": res["metrics"],
                 "threshold_dataset": {"name": ds.name, "root": ds.root, "queries": len(ds.queries)}})
    ckpt.write_meta(model_dir, meta)
    return meta
