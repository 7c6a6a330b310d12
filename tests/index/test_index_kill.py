"""SIGKILL at the worst instant of a commit, deterministically: a real ``python -m resedis
index`` kills itself (``kill -9``) right after a batch's regions are appended and before its
``images`` rows (the commit point), so the kill is known to leave orphan regions and
unindexed images behind; the rerun must then repair the orphans and finish the work.

The random-instant kill test in ``test_index.py`` checks consistency wherever the kill
lands; this one proves there was something to repair."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from resedis.index import IndexConfig, build_index, open_index
from resedis.index.store import REGIONS
from resedis.search_corpus import load_corpus
from test_index import check_consistent, draw_corpus

# Runs the CLI with lancedb's table append wrapped: the KILL_AT-th append to the
# ``images`` table SIGKILLs the process instead (after that batch's regions were added).
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from lancedb.table import LanceTable

    kill_at = int(os.environ["KILL_AT"])
    appends = {"images": 0}
    original = LanceTable.add

    def add(self, data, *args, **kwargs):
        if self.name == "images":
            appends["images"] += 1
            if appends["images"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(self, data, *args, **kwargs)

    LanceTable.add = add
    from resedis.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_kill_between_regions_and_images_leaves_orphans_that_the_rerun_repairs(tmp_path, owlv2_spec, encoder):
    images = tmp_path / "images"
    paths = draw_corpus(images, 8, seed=21)
    db = tmp_path / "db"
    batch = 2
    cmd = [sys.executable, "-c", KILLER, "index", str(images), "--db", str(db), "--model", owlv2_spec,
           "--batch-size", str(batch), "--max-regions", "4", "--device", "cpu", "--quiet"]
    env = dict(os.environ, KILL_AT="3", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]

    # What the kill left: two committed batches, and the third batch's regions without
    # their images rows (orphans) - work the rerun has to repair.
    index = open_index(db)
    committed = index.read("images", ["image_id"])["image_id"].to_pylist()
    assert len(committed) == 2 * batch
    orphans = index.orphan_keys()
    assert len(orphans) == batch and not {image_id for image_id, _ in orphans} & set(committed)
    stats = index.stats()
    assert stats["orphan_regions"] > 0 and stats["images"] == 2 * batch
    assert index.regions_table.count_rows() == stats["regions"] + stats["orphan_regions"]
    assert len(load_corpus(index)) == stats["regions"]  # readers never see the orphans

    report = build_index(images, db, config=IndexConfig(batch_size=batch), progress=False, encoder=encoder)
    assert (report.added, report.unchanged, report.updated) == (len(paths) - 2 * batch, 2 * batch, 0)
    index = open_index(db)
    check_consistent(index)  # no orphan left, no duplicate, regions == sum(n_regions)
    assert index.orphan_keys() == set()
    stats = index.stats()
    assert stats["images"] == len(paths) and stats["orphan_regions"] == 0
    assert index.read(REGIONS, ["image_id"]).num_rows == stats["regions"]
