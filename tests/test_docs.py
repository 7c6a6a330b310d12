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
