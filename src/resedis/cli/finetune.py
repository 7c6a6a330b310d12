"""``resedis finetune``: train an OWL detector for referring search and discovery."""

from __future__ import annotations

import argparse
import json

from resedis.cli.options import given, non_negative_int, positive_float, positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune (or train from scratch) an OWLv2/OWL-ViT detector on a labelled dataset",
        description=(
            "Train an OWL detector on referring expressions: each example is an image, the dataset "
            "expressions with targets in it (positives) and sampled expressions absent from it "
            "(negatives). Loss: sigmoid focal loss on the query logits with Hungarian box "
            "assignment, L1 + generalised-IoU box losses, objectness focal loss. Validates each "
            "epoch with the metric suite, keeps the best model in OUT_DIR (loadable as "
            "owlv2:/abs/OUT_DIR, presence threshold in OUT_DIR/resedis_checkpoint.json) and a resume point in "
            "OUT_DIR/last: rerunning the same command after an interruption continues from it."
        ),
    )
    p.add_argument("--dataset", nargs="+", metavar="DIR",
                   help="training dataset(s) (any format `resedis eval` reads); several are trained on together, "
                        "each its own pool of negatives (required unless --refit-threshold)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="SPEC", help="checkpoint to start from, e.g. owlv2:/path/to/dir or owlv2:google/owlv2-base-patch16-ensemble")
    src.add_argument("--from-scratch-config", metavar="JSON",
                     help="train a randomly initialised OWLv2 with this architecture (ScratchConfig fields: "
                          "image_size, patch_size, vision_hidden, vision_layers, ..., vocabulary)")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="output directory (best model + OUT_DIR/last resume point)")
    p.add_argument("--val-dataset", metavar="DIR", help="validation dataset: metrics each epoch, best-model selection, presence threshold fit")
    p.add_argument("--split", metavar="NAME", help="train on this split of each --dataset (RefCOCO-family / gRefCOCO: "
                   "train, val, testA, ... as in the refs file; an error for a ReSeDis-format dataset) (default: all splits)")
    p.add_argument("--val-split", metavar="NAME", help="validate (and fit the threshold, also with --refit-threshold) on "
                   "this split of --val-dataset, e.g. val (default: all splits)")
    p.add_argument("--epochs", type=positive_int, help="training epochs (default: FinetuneConfig.epochs)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate of AdamW (default: FinetuneConfig.lr)")
    p.add_argument("--batch-size", type=positive_int, help="images per step (default: FinetuneConfig.batch_size)")
    p.add_argument("--negatives", type=non_negative_int, dest="negatives_per_image", help="absent expressions sampled per image per step (default: FinetuneConfig.negatives_per_image)")
    p.add_argument("--hard-negatives", type=float, dest="hard_negative_fraction", metavar="FRACTION",
                   help="share of the sampled negatives taken from absent expressions sharing the most words with "
                        "the image's positives (default: FinetuneConfig.hard_negative_fraction)")
    p.add_argument("--category-texts", action="store_true",
                   help="also train on the category names of the dataset's instances.json as expressions, each "
                        "denoting every object of its category in the image")
    p.add_argument("--matches-per-object", type=positive_int,
                   help="patches assigned to each object by the Hungarian matching (1: one-to-one as in DETR/OWL; "
                        ">1: one-to-many, faster convergence from scratch) (default: LossWeights.matches_per_object)")
    p.add_argument("--rank-loss", type=float, dest="rank", metavar="WEIGHT",
                   help="weight of the retrieval loss (each text's target patches must outscore every patch of "
                        "every image in the batch; softmax cross-entropy); 0 = off (default: LossWeights.rank)")
    p.add_argument("--warmup-steps", type=non_negative_int, help="linear warm-up steps before cosine decay (default: FinetuneConfig.warmup_steps)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: FinetuneConfig.weight_decay)")
    p.add_argument("--freeze-backbone", action="store_true", help="train only the detection heads; image and text towers frozen")
    p.add_argument("--seed", type=non_negative_int, help="seed of initialisation, batch order and negatives (default: FinetuneConfig.seed)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)")
    p.add_argument("--max-steps", type=positive_int, help="stop after this many optimizer steps in total (saving a resume point)")
    p.add_argument("--checkpoint-every", type=non_negative_int, help="also save the resume point every N steps (default: FinetuneConfig.checkpoint_every)")
    p.add_argument("--select-metric", help="validation metric that picks the best model, or val_loss (default: FinetuneConfig.select_metric)")
    p.add_argument("--min-n-acc", type=float, metavar="X",
                   help="presence threshold = max F1 among thresholds whose validation N_acc (absent queries with "
                        "nothing found) is >= X (default: plain max F1)")
    p.add_argument("--refit-threshold", action="store_true",
                   help="no training: recompute the presence threshold of the model in --out on --val-dataset "
                        "(with --min-n-acc) and store it in OUT_DIR/resedis_checkpoint.json")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def _with_split(path: str, split: str | None):
    """``path`` as given (finetune loads it), or the Dataset of one split of it."""
    if split is None:
        return path
    from resedis.io import load_dataset

    return load_dataset(path, split=split)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from resedis.errors import ResedisError
    from resedis.finetune import FinetuneConfig, LossWeights, ScratchConfig, finetune
    from resedis.finetune.checkpoint import find_last

    if args.refit_threshold:
        from resedis.finetune import refit_threshold

        if args.val_dataset is None:
            raise ResedisError("--refit-threshold needs --val-dataset")
        meta = refit_threshold(args.out, _with_split(args.val_dataset, args.val_split), min_n_acc=args.min_n_acc,
                               device=args.device)
        print(json.dumps({k: meta[k] for k in ("presence_threshold", "threshold_fit", "min_n_acc")}, indent=2))
        return 0
    if not args.dataset:
        raise ResedisError("--dataset DIR is required (the training data)")
    for d in args.dataset:
        if not Path(d).is_dir():
            raise ResedisError(f"--dataset {d}: not a directory")
    if args.val_dataset is not None and not Path(args.val_dataset).is_dir():
        raise ResedisError(f"--val-dataset {args.val_dataset}: not a directory")
    scratch = None
    if args.from_scratch_config is not None:
        try:
            scratch = ScratchConfig.from_json(args.from_scratch_config)
        except (OSError, ValueError, TypeError) as exc:
            raise ResedisError(f"--from-scratch-config {args.from_scratch_config}: {exc}") from None
    if args.model is None and scratch is None and find_last(Path(args.out)) is None:
        raise ResedisError("give --model SPEC or --from-scratch-config JSON (or an --out holding a run to resume)")
    config = FinetuneConfig(
        progress=not args.no_progress,
        loss=LossWeights(**given(args, "matches_per_object", "rank")),
        **given(args, "epochs", "lr", "batch_size", "negatives_per_image", "hard_negative_fraction", "category_texts",
                "weight_decay", "warmup_steps", "freeze_backbone", "seed", "device", "max_steps", "checkpoint_every",
                "select_metric", "min_n_acc"),
    )
    try:
        config.validate()
    except ValueError as exc:
        raise ResedisError(str(exc)) from None
    if args.val_split is not None and args.val_dataset is None:
        raise ResedisError("--val-split needs --val-dataset")
    train = [_with_split(d, args.split) for d in args.dataset]
    val = _with_split(args.val_dataset, args.val_split) if args.val_dataset is not None else None
    result = finetune(train, args.out, model=args.model, scratch=scratch, val_dataset=val, config=config)
    summary = {
        "out_dir": str(result.out_dir),
        "steps": result.steps,
        "resumed_from_step": result.resumed_from_step,
        "stopped_early": result.stopped_early,
        "best_epoch": result.best_epoch,
        "best_score": result.best_score,
        "presence_threshold": result.presence_threshold,
        "last_epoch": result.history[-1] if result.history else None,
    }
    print(json.dumps(summary, indent=2))
    return 0
