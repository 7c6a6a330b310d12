"""Ablation: every pipeline on the same queries, side by side (``resedis eval --pipeline all``).

Per pipeline: the metric suite over the reported queries (the same for every pipeline:
presence is decided by the same :func:`resedis.calibrate.evaluate_with_calibration`
split), mean query latency (model forwards + search + one fusion/ranking pass, per
query, with models and corpora already loaded as in a running server; threshold fitting
and model loading excluded; masks included when asked for), and index cost per
image (disk bytes of the tables it reads, and indexing seconds per image where the
index recorded them). A pipeline that cannot run on this index (e.g. ``clip-crops``
without crop embeddings, ``owl+rerank`` without grounding weights) is listed with the
reason instead of numbers.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from resedis.calibrate import evaluate_with_calibration
from resedis.errors import ResedisError
from resedis.eval import evaluate_predictions
from resedis.index.store import disk_bytes
from resedis.pipelines import PIPELINES
from resedis.query import QueryEngine
from resedis.report import write_report
from resedis.types import Dataset, QueryResult

TABLE_KEYS = ("IR@1", "IR@10", "Pr@50", "BR@1@0.5", "BR@10@0.5", "mAP50", "precision", "recall", "F1", "FA_per_query", "N_acc")
# tables each pipeline reads at query time (index cost)
TABLES = {"owl": ("images", "regions"), "owl+rerank": ("images", "regions"), "clip-crops": ("images", "regions", "crops")}


@dataclass
class AblationRow:
    pipeline: str
    status: str  # "ok" or the reason it could not run
    metrics: dict = field(default_factory=dict)
    query_ms: float | None = None
    index_bytes_per_image: float | None = None
    index_seconds_per_image: float | None = None
    split: dict = field(default_factory=dict)
    results: list[QueryResult] = field(default_factory=list)
    eval_result: object | None = None
    reported: Dataset | None = None  # the queries the metrics are over (a hold-out split reports fewer)

    def to_json(self) -> dict:
        return {"pipeline": self.pipeline, "status": self.status, "metrics": self.metrics, "query_ms": self.query_ms,
                "index_bytes_per_image": self.index_bytes_per_image,
                "index_seconds_per_image": self.index_seconds_per_image,
                "split": {k: v for k, v in self.split.items() if k != "calibration_query_ids"}}


def index_cost(index, pipeline: str) -> tuple[float | None, float | None]:
    """(disk bytes per image of the tables ``pipeline`` reads, indexing seconds per image
    when recorded in the manifest — ``index_seconds_per_image`` and, for crops,
    ``crops.seconds_per_image``)."""
    n = index.count("images")
    if n == 0:
        return None, None
    size = index.table_bytes(TABLES.get(pipeline, ("images", "regions")))
    extra = index.manifest.extra
    secs = extra.get("index_seconds_per_image")
    if pipeline == "clip-crops" and isinstance(secs, (int, float)):
        crop_secs = (extra.get("crops") or {}).get("seconds_per_image")
        secs = secs + crop_secs if isinstance(crop_secs, (int, float)) else None
    return size / n, (float(secs) if isinstance(secs, (int, float)) else None)


def evaluate_pipeline(engine: QueryEngine, dataset: Dataset, pipeline: str | None = None, *, top_k: int | None = None,
                      split: str | float | None = None, iou: str = "box", masks: bool = False) -> AblationRow:
    """Run pipeline ``pipeline`` (None: the default) of ``engine`` on every query of
    ``dataset``, deciding presence by ``split`` (:func:`resedis.calibrate.evaluate_with_calibration`:
    never fitted on what is reported), attach masks when asked, and score the reported
    queries. ``resedis eval --db`` is this function; :func:`run_ablation` runs it per pipeline.
    ``row.eval_result`` is scored on ``row.reported`` (the reported queries)."""
    p = engine.pipeline(pipeline, top_k=top_k)
    results, reported, split_report = evaluate_with_calibration(p, dataset, split, iou=iou)
    query_ms = split_report["query_ms"]
    if masks:
        results = engine.attach_masks(results)
        query_ms += results[0].timings["masks_ms"] if results else 0.0
    ev = evaluate_predictions(reported, results, iou=iou)
    b, s = index_cost(engine.index, p.name)
    return AblationRow(p.name, "ok", dict(ev.metrics), query_ms, b, s, split_report, results, ev, reported)


def run_ablation(
    dataset: Dataset,
    engine: QueryEngine,
    *,
    pipelines: Sequence[str] | None = None,
    top_k: int | None = None,
    split: str | float | None = None,
    iou: str = "box",
    masks: bool = False,
) -> list[AblationRow]:
    """Score each pipeline (default: all registered) of ``engine`` on ``dataset``
    (:func:`evaluate_pipeline`); one row each, a pipeline that cannot run listed with the reason."""
    rows = []
    for name in pipelines or list(PIPELINES):
        try:
            rows.append(evaluate_pipeline(engine, dataset, name, top_k=top_k, split=split, iou=iou, masks=masks))
        except (ResedisError, OSError) as exc:
            rows.append(AblationRow(name, f"not run: {exc}".splitlines()[0]))
    return rows


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def format_table(rows: Sequence[AblationRow]) -> str:
    """Plain-text side-by-side table (one line per pipeline)."""
    head = ["pipeline", *TABLE_KEYS, "query ms", "index B/img"]
    lines = [head]
    for r in rows:
        if r.status != "ok":
            lines.append([r.pipeline, r.status])
            continue
        lines.append([r.pipeline, *(_fmt(r.metrics.get(k)) for k in TABLE_KEYS), _fmt(r.query_ms),
                      _fmt(None if r.index_bytes_per_image is None else round(r.index_bytes_per_image))])
    width = [max(len(line[i]) for line in lines if len(line) > i and len(line) == len(head)) for i in range(len(head))]
    out = []
    for line in lines:
        if len(line) != len(head):
            out.append(f"{line[0].ljust(width[0])}  {line[1]}")
        else:
            out.append("  ".join(c.ljust(w) for c, w in zip(line, width)))
    return "\n".join(out)


_SPLIT_NAMES = {"stored": "stored calibration", "none": "pipeline defaults", "holdout": "hold-out", "kfold": "k-fold"}


def _presence_row(r: AblationRow) -> str:
    """One row of the presence-decision table: how ``r`` decided ``present``."""
    e = html.escape
    sp = r.split
    mode = sp.get("mode")
    split = _SPLIT_NAMES.get(mode, str(mode))
    notes = []
    if mode == "holdout":
        split += f" ({sp.get('calibration_queries')} fitted, {sp.get('evaluated_queries')} reported)"
    elif mode == "kfold":
        split += f" (K = {sp.get('k')})"
        notes.append("threshold and parameters fitted per fold on the other folds")
    elif sp.get("source"):
        notes.append(f"from: {sp['source']}")
    if sp.get("note"):
        notes.append(sp["note"])
    if sp.get("warning"):
        notes.append(f"<span class='warn'>WARNING: {e(sp['warning'])}</span>")
    threshold = "per fold" if mode == "kfold" else _fmt(sp.get("threshold"))
    params = "per fold" if mode == "kfold" else json.dumps(sp.get("params", {}))
    return (f"<tr><td>{e(r.pipeline)}</td><td>{e(split)}</td><td>{e(threshold)}</td><td><code>{e(params)}</code></td>"
            f"<td>{'; '.join(n if n.startswith('<span') else e(n) for n in notes)}</td></tr>")


def _held_out(split: dict) -> str:
    """The queries presence was fitted on (hold-out mode), so a reader can see the split."""
    ids = split.get("calibration_query_ids")
    if split.get("mode") != "holdout" or not ids:
        return ""
    e = html.escape
    return (f"<details class='held-out'><summary>{len(ids)} calibration queries (fitted on, not reported; "
            f"seed {e(str(split.get('seed')))})</summary><p><code>{e(', '.join(map(str, ids)))}</code></p></details>")


def write_ablation(path, dataset: Dataset, rows: Sequence[AblationRow], *, title: str | None = None) -> Path:
    """Self-contained HTML: the side-by-side table, split handling, and links to per-pipeline
    reports written next to it (``<stem>.<pipeline>.html``) via :func:`resedis.report.write_report`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    links = {}
    for r in rows:
        if r.status == "ok" and r.eval_result is not None:
            sub = path.with_name(f"{path.stem}.{r.pipeline.replace('+', '-')}.html")
            write_report(sub, dataset, r.results, r.eval_result, title=f"{dataset.name} · {r.pipeline}")
            links[r.pipeline] = sub.name
    e = html.escape
    head = "".join(f"<th>{e(k)}</th>" for k in ("pipeline", *TABLE_KEYS)) + (
        "<th>mean query ms</th><th>index KiB / image</th><th>index s / image</th>")
    body, presence = [], []
    for r in rows:
        name = f'<a href="{e(links[r.pipeline])}">{e(r.pipeline)}</a>' if r.pipeline in links else e(r.pipeline)
        if r.status != "ok":
            body.append(f"<tr><td>{name}</td><td colspan='{len(TABLE_KEYS) + 3}' class='skip'>{e(r.status)}</td></tr>")
            continue
        cells = "".join(f"<td>{_fmt(r.metrics.get(k))}</td>" for k in TABLE_KEYS)
        kib = None if r.index_bytes_per_image is None else r.index_bytes_per_image / 1024
        body.append(f"<tr><td>{name}</td>{cells}<td>{_fmt(r.query_ms)}</td><td>{_fmt(kib)}</td>"
                    f"<td>{_fmt(r.index_seconds_per_image)}</td></tr>")
        presence.append(_presence_row(r))
    ok = [r for r in rows if r.status == "ok"]
    n_eval = ok[0].split.get("evaluated_queries") if ok else None
    held = _held_out(ok[0].split) if ok else ""
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(title or 'resedis ablation')}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em;font-size:15px}}table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #ccc;padding:4px 6px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
th{{font-size:13px}}.skip{{color:#a00;text-align:left}}.text td,.text th{{text-align:left;max-width:40em;overflow-wrap:anywhere}}
.warn{{color:#a00}}code{{font-size:13px}}</style></head><body>
<h1>{e(title or 'Pipeline ablation')}</h1>
<p>Dataset <b>{e(dataset.name)}</b>: {len(dataset.queries)} queries, {len(dataset.images)} images;
metrics over {e(str(n_eval))} reported queries (the same for every pipeline). Mean query ms = wall time of the
pipeline per query on this machine (model forwards + search + fusion, models already loaded).</p>
<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>
<h2>Presence decision</h2>
<table class="text presence"><thead><tr><th>pipeline</th><th>split</th><th>threshold</th><th>parameters</th><th>notes</th></tr></thead>
<tbody>{''.join(presence)}</tbody></table>
{held}
</body></html>"""
    path.write_text(doc, encoding="utf-8")
    return path
