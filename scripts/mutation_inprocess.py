"""Mutation testing of one module in ONE process: mutmut 3 generates the mutants (the same
ones ``scripts/mutation.sh`` runs), then pytest runs the given tests once per mutant inside
this process (mutmut's trampolines read ``MUTANT_UNDER_TEST`` at call time), -x, so a
mutant costs its failing test, not a forked pytest session. For fast, model-free test
files on a loaded machine (``mutmut run`` spends ~20 s per mutant there); tests that
build indexes with a model belong to ``scripts/mutation.sh``.

    python scripts/mutation_inprocess.py src/resedis/thresholds.py -- tests/test_thresholds_mutants.py
    python scripts/mutation_inprocess.py src/resedis/search.py --only x_rank_hits x_sigmoid -- tests/test_search_mutants.py

Prints one line per mutant (killed / SURVIVED / timeout) and ``killed / total = score``; a
mutant whose tests run past ``--timeout`` seconds (an endless loop) is stopped by SIGALRM
inside the running test, counted killed and listed as a timeout. Inspect a survivor with
``cd $MUTATION_WORK/<module> && python -m mutmut show <name>``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def generate(file: str, work: Path) -> Path:
    """Scratch copy of src/ + pyproject.toml with mutmut's mutants of ``file`` -> mutants/src."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(REPO / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__"))
    text = (REPO / "pyproject.toml").read_text()
    (work / "pyproject.toml").write_text(re.sub(r"^only_mutate = .*$", f'only_mutate = ["{file}"]', text, flags=re.M))
    code = "import mutmut.__main__ as m; m.create_mutants(1)"
    subprocess.run([sys.executable, "-c", code], cwd=work, check=True, stdout=subprocess.DEVNULL)
    # mutmut copies the Python files only: add the package data (the bundled demo model)
    for path in (work / "src").rglob("*"):
        target = work / "mutants" / "src" / path.relative_to(work / "src")
        if path.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return work / "mutants" / "src"


class MutantTimeout(Exception):
    """Raised inside the running test by SIGALRM: the mutant's tests ran past ``--timeout``."""


_fired: list[bool] = []


def _alarm(signum, frame):
    _fired.append(True)
    raise MutantTimeout("the mutant's tests ran past --timeout (an endless loop?)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="module to mutate, e.g. src/resedis/thresholds.py")
    parser.add_argument("--only", nargs="*", default=[], help="function name prefixes (x_rank_hits, xǁCorpusǁ...)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per mutant (default 60)")
    parser.add_argument("pytest_args", nargs="+", help="after --: the tests to run for each mutant")
    args = parser.parse_args()
    module = args.file.removeprefix("src/").removesuffix(".py").replace("/", ".")
    work = Path(os.environ.get("MUTATION_WORK", "/tmp/resedis-mutation")) / (Path(args.file).stem + "-inprocess")
    src = generate(args.file, work)
    meta = json.loads((src / (args.file.removeprefix("src/") + ".meta")).read_text())
    names = [n for n in meta["exit_code_by_key"]
             if not args.only or any(n.startswith(f"{module}.{p}") for p in args.only)]

    sys.path.insert(0, str(src))
    os.environ["MUTANT_UNDER_TEST"] = ""
    import pytest

    import resedis

    assert resedis.__file__.startswith(str(src)), resedis.__file__
    pytest_args = ["-x", "-q", "-p", "no:cacheprovider", "--no-header", *args.pytest_args]
    if pytest.main(pytest_args) != 0:
        print("the tests fail without a mutant", file=sys.stderr)
        return 2
    survived, timed_out = [], []
    signal.signal(signal.SIGALRM, _alarm)
    for name in names:
        os.environ["MUTANT_UNDER_TEST"] = name
        _fired.clear()
        signal.setitimer(signal.ITIMER_REAL, args.timeout)
        try:
            killed = pytest.main(pytest_args) != 0
        except MutantTimeout:  # raised outside a test (collection, a fixture's teardown)
            killed = True
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        killed = killed or bool(_fired)
        print("RESULT", "timeout " if _fired else "killed  " if killed else "SURVIVED", name, flush=True)
        if _fired:
            timed_out.append(name)
        if not killed:
            survived.append(name)
    total = len(names)
    print(f"{module}: {total - len(survived)}/{total} killed = {100 * (total - len(survived)) / max(total, 1):.1f}%")
    for name in survived:
        print(f"    survived: {name}")
    for name in timed_out:
        print(f"    timeout (counted killed): {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
