"""Fixtures of the fault suite: one pristine index per test module, copied for each test
that damages it (:mod:`faultkit` does the damage)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from faultkit import copy_index, settle


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, synth_small) -> Path:
    """12 synthetic images in their own folder (so tests may delete or edit them)."""
    root = tmp_path_factory.mktemp("fault_corpus") / "images"
    root.mkdir()
    for src in sorted((synth_small / "images").glob("*.jpg"))[:12]:
        shutil.copy(src, root / src.name)
    return root


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, corpus, encoder) -> Path:
    """An index of ``corpus`` (tiny OWLv2, 3 batches), settled (only live data files)."""
    from resedis.index import IndexConfig, build_index

    db = tmp_path_factory.mktemp("fault_db") / "db"
    build_index(corpus, db, config=IndexConfig(batch_size=4, max_regions=20), encoder=encoder, progress=False)
    settle(db)
    return db


@pytest.fixture
def db(pristine, tmp_path) -> Path:
    """A private copy of the pristine index, free to damage."""
    return copy_index(pristine, tmp_path / "db")
