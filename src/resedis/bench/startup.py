"""How fast a one-off ``resedis search`` starts, as a ratio to ``python -c "import torch"``.

Three commands, each a fresh process, interleaved ``repeats`` times in one run so that a
busy machine slows all of them alike (the medians and their ratios are reported):

* ``import torch`` — the yardstick: ``python -c "import torch"``;
* ``new query`` — ``resedis search TEXT --db DB`` with a TEXT the index has never seen
  (no cached query vector: the light text encoder or transformers encodes it);
* ``repeated query`` — the same command for a TEXT the index answered before (its vector
  comes from the index's query cache);
* ``searcher path`` (once per repeat) — the same query through :class:`resedis.search.Searcher`
  with the full transformers backend and LanceDB, i.e. what a one-off search cost before
  the fast path (:mod:`resedis.search_oneoff`).

Goals (issue 14): new query <= 1.5x, repeated query <= 0.5x the ``import torch`` time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from resedis.errors import ResedisError

GOAL_NEW = 1.5
GOAL_REPEATED = 0.5
REPEATED_TEXT = "the large red diamond"
_SEARCHER_SCRIPT = (
    "import sys; from resedis.search import Searcher; "
    "r = Searcher(sys.argv[1], matrix_dtype='stored').search(sys.argv[2], top_k=20); print(len(r.hits))"
)


def _timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise ResedisError(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return seconds


def build_demo_index(images: Path, db: Path) -> Path:
    """Index ``images`` with the bundled demo model into ``db`` (as ``resedis index`` does,
    sidecar included) for the measurement."""
    from resedis.index import IndexConfig, build_index
    from resedis.search_oneoff import refresh_sidecar

    build_index(images, db, config=IndexConfig(model="demo"), progress=False)
    refresh_sidecar(db)
    return db


def measure_startup(db: str | os.PathLike, *, repeats: int = 3, searcher_path: bool = True) -> dict:
    """Run the commands above against the index ``db`` -> medians (s), ratios, goals, runs."""
    if repeats < 1:
        raise ResedisError(f"repeats must be >= 1, got {repeats}")
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # so the child runs this very package
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    search = [sys.executable, "-m", "resedis", "search", "--db", str(db), "--top-k", "20"]
    _timed(search + [REPEATED_TEXT], env)  # answered once: now in the query cache
    runs: dict[str, list[float]] = {"import_torch": [], "new_query": [], "repeated_query": [], "searcher_path": []}
    for i in range(repeats):
        runs["import_torch"].append(_timed([sys.executable, "-c", "import torch"], env))
        runs["new_query"].append(_timed(search + [f"a red object {uuid.uuid4().hex[:8]} {i}"], env))
        runs["repeated_query"].append(_timed(search + [REPEATED_TEXT], env))
        if searcher_path:
            runs["searcher_path"].append(_timed([sys.executable, "-c", _SEARCHER_SCRIPT, str(db), REPEATED_TEXT], env))
    med = {k: statistics.median(v) for k, v in runs.items() if v}
    torch_s = med["import_torch"]
    out = {
        "db": str(db),
        "repeats": repeats,
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "ratio_to_import_torch": {k: round(v / torch_s, 3) for k, v in med.items() if k != "import_torch"},
        "goal": {"new_query": GOAL_NEW, "repeated_query": GOAL_REPEATED},
        "runs_s": {k: [round(x, 3) for x in v] for k, v in runs.items() if v},
    }
    ratios = out["ratio_to_import_torch"]
    out["meets_goal"] = {"new_query": ratios["new_query"] <= GOAL_NEW, "repeated_query": ratios["repeated_query"] <= GOAL_REPEATED}
    return out


def startup_line(s: dict) -> str:
    """One line for the bench table."""
    r, m = s["ratio_to_import_torch"], s["median_s"]
    line = (f"one-off search vs `import torch` ({m['import_torch']:.2f} s): new query {r['new_query']:.2f}x "
            f"(goal <= {GOAL_NEW}), repeated {r['repeated_query']:.2f}x (goal <= {GOAL_REPEATED})")
    if "searcher_path" in r:
        line += f", Searcher+transformers path {r['searcher_path']:.2f}x"
    return line


__all__ = ["GOAL_NEW", "GOAL_REPEATED", "build_demo_index", "measure_startup", "startup_line"]
