"""Shared, memoised setup for the pipeline tests: tiny models, a synthetic corpus, an index
with crops. Built once per test process (plain functions, not fixtures, so every test
module gets the same objects)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_CACHE: dict[str, object] = {}


@dataclass
class Env:
    root: Path
    tiny: dict[str, Path]
    synth: Path
    db: Path  # OWL index + clip crops
    dataset: object

    def spec(self, family: str) -> str:
        return f"{family}:{self.tiny[family]}"


def env() -> Env:
    if "env" in _CACHE:
        return _CACHE["env"]  # type: ignore[return-value]
    from resedis.index import IndexConfig, build_index
    from resedis.io import load_dataset
    from resedis.index.crops import CropConfig, add_crops
    from resedis.synth import generate
    from resedis.testing.tiny import make_tiny_checkpoints
    from resedis.testing.tiny_extra import make_extra_checkpoints

    root = Path(tempfile.mkdtemp(prefix="resedis-pipetest-"))
    tiny = dict(make_tiny_checkpoints(root / "tiny", ["owlv2", "clip", "siglip"]))
    tiny.update(make_extra_checkpoints(root / "tiny"))
    synth = root / "synth"
    generate(synth, images=8, queries=10, absent=2, seed=7, progress=False)
    db = root / "db"
    build_index(synth / "images", db, config=IndexConfig(model=f"owlv2:{tiny['owlv2']}", max_regions=12, batch_size=4),
                progress=False)
    add_crops(db, CropConfig(model=f"clip:{tiny['clip']}", max_crops=5), progress=False)
    e = Env(root, tiny, synth, db, load_dataset(synth))
    _CACHE["env"] = e
    return e


def models(e: Env):
    """A Models pool shared by the tests (tiny backends loaded once)."""
    if "models" not in _CACHE:
        from resedis.pipelines import Models

        _CACHE["models"] = Models("cpu")
    return _CACHE["models"]


def copy_db(e: Env, dest: Path) -> Path:
    """A private copy of the shared index (for tests that write calibration / masks)."""
    import shutil

    out = Path(dest) / "db"
    shutil.copytree(e.db, out)
    return out
