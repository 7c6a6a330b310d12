"""Checkpoint layout of ``resedis finetune`` and atomic writes.

``OUT_DIR/``            the BEST model so far: a transformers checkpoint (config.json,
                        model.safetensors, processor and tokenizer files) loadable with
                        ``from_pretrained(OUT_DIR)`` and as ``owlv2:/abs/OUT_DIR`` (or
                        ``owlv2:./OUT_DIR``), plus ``resedis_checkpoint.json``
                        (:data:`META_FILE`: presence threshold, validation metrics, history;
                        checkpoints written before it had its own name hold it as
                        ``resedis.json``, still read).
``OUT_DIR/last/``       the resume point: the latest model + ``trainer_state.pt``
                        (optimizer, step, epoch, RNG states, history, best score).

``last/`` is replaced atomically: written to a temporary sibling, the old one renamed
away, the new one renamed in, the old one deleted (a crash between the two renames
leaves ``.last-old-*``, which :func:`find_last` falls back to). The best model's files
are each written to a temporary file and moved into OUT_DIR with ``os.replace``;
the metadata goes last, so it never describes weights that are not there yet.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from resedis.models.checkpoint import CHECKPOINT_META, read_checkpoint_meta

STATE_FILE = "trainer_state.pt"
META_FILE = CHECKPOINT_META


def _write_model(model, processor, dest: Path) -> None:
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar on every save
    try:
        model.save_pretrained(dest)
        if processor is not None:
            processor.save_pretrained(dest)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    os.chmod(dest, 0o755)  # temp dirs/files are private; the results are ordinary files
    for f in Path(dest).iterdir():
        if f.is_file():
            os.chmod(f, 0o644)


def save_last(out_dir: Path, model, processor, state: dict) -> Path:
    """Atomically replace ``OUT_DIR/last`` with the model and ``state`` (torch-saved)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".last-tmp-", dir=out_dir))
    try:
        _write_model(model, processor, tmp)
        torch.save(state, tmp / STATE_FILE)
        os.chmod(tmp / STATE_FILE, 0o644)
        final = out_dir / "last"
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=".last-old-", dir=out_dir))
            os.rename(final, old / "last")
        os.rename(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def find_last(out_dir: Path) -> Path | None:
    """The resume checkpoint directory, or None when there is none."""
    out_dir = Path(out_dir)
    if (out_dir / "last" / STATE_FILE).is_file():
        return out_dir / "last"
    olds = sorted(out_dir.glob(".last-old-*/last"), key=lambda p: p.stat().st_mtime, reverse=True)
    for p in olds:
        if (p / STATE_FILE).is_file():
            return p
    return None


def load_state(last_dir: Path) -> dict:
    return torch.load(Path(last_dir) / STATE_FILE, map_location="cpu", weights_only=False)


def save_best(out_dir: Path, model, processor, meta: dict) -> None:
    """Write the model to OUT_DIR (file by file, each moved in atomically), then META_FILE."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".best-tmp-", dir=out_dir))
    try:
        _write_model(model, processor, tmp)
        for f in sorted(tmp.iterdir()):
            if f.is_file():
                os.replace(f, out_dir / f.name)
        write_meta(out_dir, meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_meta(out_dir: Path, meta: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".resedis-", suffix=".json", dir=out_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, Path(out_dir) / META_FILE)


def read_meta(model_dir: Path) -> dict | None:
    """The checkpoint metadata (:data:`META_FILE`, or the pre-rename ``resedis.json``), or None."""
    return read_checkpoint_meta(model_dir)
