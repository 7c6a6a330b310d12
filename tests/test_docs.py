"""The examples in docs/ run and print what the docs say they print."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def blocks(name: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (DOCS / name).read_text(encoding="utf-8"), re.S)


def test_metrics_worked_example_prints_what_the_doc_says():
    [code] = blocks("metrics.md", "python")
    [printed] = blocks("metrics.md", "text")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/metrics.md", "exec"), {"__name__": "docs_example"})
    assert out.getvalue() == printed


@pytest.mark.slow
def test_api_examples_run_in_order(tmp_path, monkeypatch):
    # One namespace, in document order, in an empty folder: the doc's own asserts check
    # the results (added/unchanged counts, ranking order, thresholds, mask size, ...).
    monkeypatch.chdir(tmp_path)
    code = blocks("api.md", "python")
    assert len(code) >= 5
    namespace: dict = {"__name__": "docs_example"}
    for i, block in enumerate(code):
        exec(compile(block, f"docs/api.md block {i + 1}", "exec"), namespace)
    assert (tmp_path / "shapes.db").is_dir() and (tmp_path / "preds.jsonl").is_file()


def test_source_names_no_markdown_file_outside_the_repository():
    # Docstrings and --help texts may point at docs; every .md they name must exist here
    # (as a path from the repository root, under docs/, or as a file name in the repo).
    root = DOCS.parent
    known = {p.name for p in root.rglob("*.md") if ".git" not in p.parts}
    missing = []
    for path in sorted((root / "src").rglob("*.py")):
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for name in re.findall(r"[\w./-]*\w\.md\b", line):
                name = name.lstrip("./")
                if not ((root / name).is_file() or (DOCS / name).is_file() or name in known):
                    missing.append(f"{path.relative_to(root)}:{lineno}: {name}")
            # design notes kept outside the repository, cited without the .md
            for name in re.findall(r"\bDESIGN\b|\bCONVENTIONS\b|\.\./shared\b", line):
                missing.append(f"{path.relative_to(root)}:{lineno}: {name} (not in the repository)")
    assert not missing, "\n" + "\n".join(missing)
