"""The self-contained HTML evaluation report (one file: inline SVG plots, base64 JPEGs)."""

from __future__ import annotations

import datetime as _dt
from html import escape
from pathlib import Path
from typing import Any, Sequence

from resedis import metrics as M
from resedis.eval import EvalResult
from resedis.report import analysis, svg
from resedis.report.gallery import FP_COLOR, GT_COLOR, TP_COLOR, DrawnBox, render_thumbnail
from resedis.types import Dataset, QueryResult

METRIC_HELP = {
    "IR@K": "image recall: share of the query's target images among the top-K ranked images",
    "Pr@50": "of the queries whose top-1 image is a target image, the share whose top box has IoU ≥ 0.5",
    "BR@K@τ": "box recall: one of the K best detections lies in a target image with IoU ≥ τ to a target there",
    "mAP50": "mean over non-absent queries of all-point AP at IoU 0.5",
    "precision": "detections decided present that match a target instance / all decided present",
    "recall": "target instances matched by a present detection / all target instances",
    "F1": "harmonic mean of discovery precision and recall",
    "FA_per_query": "distinct non-target images decided present, per query (false alarms)",
    "N_acc": "share of absent queries for which nothing was decided present",
    "IL_MCC": "SA-Co image-level presence: Matthews correlation over all (query, image) pairs",
    "pmF1": "SA-Co positive micro F1: instance F1 on pairs with targets, mean over IoU 0.50:0.95",
    "cgF1": "SA-Co concept-grounding F1 = pmF1 × IL_MCC",
}

BREAKDOWN_COLUMNS = ["IR@1", "IR@5", "Pr@50", "BR@1@0.5", "BR@5@0.5", "mAP50", "precision", "recall", "F1", "FA_per_query", "N_acc"]
BREAKDOWN_TITLES = {
    "type": "By expression type",
    "targets": "By ground-truth layout",
    "category": "By category",
}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1f2933;background:#f6f7f9}
main{max-width:1240px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:24px;margin:8px 0 2px}h2{font-size:19px;margin:30px 0 10px;border-bottom:1px solid #d9dde3;padding-bottom:4px}
h3{font-size:16px;margin:18px 0 8px}.sub{color:#52606d}
table{border-collapse:collapse;background:#fff;margin:6px 0 12px}
th,td{border:1px solid #d9dde3;padding:4px 9px;text-align:right;white-space:nowrap}
th{background:#eef1f4;font-weight:600}td.l,th.l{text-align:left;white-space:normal}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.card{background:#fff;border:1px solid #d9dde3;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:22px}.card span{color:#52606d;font-size:12px}
.warn{background:#fff8e1;border:1px solid #f0c36d;border-radius:6px;padding:8px 14px}
.ok{background:#e8f5e9;border:1px solid #a5d6a7;border-radius:6px;padding:8px 14px}
.plots{display:flex;flex-wrap:wrap;gap:16px}.plots figure{margin:0;background:#fff;border:1px solid #d9dde3;padding:6px}
figcaption{font-size:12px;color:#52606d;max-width:460px;padding:4px}
.q{background:#fff;border:1px solid #d9dde3;border-radius:6px;padding:10px 12px;margin:12px 0}
.q .expr{font-size:16px;font-weight:600}.q .meta{color:#52606d;font-size:12px;margin:2px 0 8px}
.imgs{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:10px}.imgs figure{margin:0}.imgs img{display:block;max-width:100%;height:auto;border:1px solid #ccc}
.legend span{display:inline-block;margin-right:16px}.sw{display:inline-block;width:14px;height:10px;margin-right:5px;vertical-align:middle}
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4f}"
    return escape(str(v))


def _rgb(c: tuple[int, int, int]) -> str:
    return f"rgb{tuple(c)}"


def _shade(v: Any, *, lower_is_better: bool = False) -> str:
    """A green background whose strength follows a [0, 1] score."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return ""
    x = max(0.0, min(1.0, float(v)))
    if lower_is_better:
        x = 1.0 / (1.0 + float(v))
    return f' style="background:rgba(22,163,74,{0.05 + 0.3 * x:.2f})"'


def _header(dataset: Dataset, results: Sequence[QueryResult], ev: EvalResult, title: str) -> str:
    from resedis.version import __version__

    n_det = sum(len(h) for h in ev.results.values())
    root = f" ({escape(str(dataset.root))})" if dataset.root else ""
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        f"<h1>{escape(title)}</h1>"
        f'<div class="sub">dataset <b>{escape(dataset.name)}</b>{root}: {len(dataset.images)} images, '
        f"{ev.metrics['queries']} queries ({ev.metrics['absent_queries']} absent) · "
        f"{len(results)} prediction lines, {n_det} detections scored · IoU: {escape(ev.iou)} · "
        f"resedis {escape(__version__)} · {stamp}</div>"
    )


def _warnings(dataset: Dataset, ev: EvalResult) -> str:
    items = list(ev.warnings)
    if dataset.skipped:
        shown = "; ".join(f"{s.source}: {s.reason}" for s in dataset.skipped[:10])
        more = f"; ... and {len(dataset.skipped) - 10} more" if len(dataset.skipped) > 10 else ""
        items.append(f"{len(dataset.skipped)} dataset record(s) were skipped while loading: {shown}{more}")
    if not items:
        return '<p class="ok">No problems found: every prediction names a known query and image.</p>'
    lis = "".join(f"<li>{escape(w)}</li>" for w in items)
    return f'<div class="warn"><b>Warnings</b><ul>{lis}</ul></div>'


def _metrics_section(m: dict) -> str:
    cards = [
        ("IR@1", "image recall at 1"), ("BR@1@0.5", "box recall at 1, IoU 0.5"), ("mAP50", "mean AP at IoU 0.5"),
        ("F1", "discovery F1"), ("FA_per_query", "false-alarm images / query"), ("N_acc", "absent queries rejected"),
    ]
    out = ['<div class="cards">']
    out += [f'<div class="card"><b>{_fmt(m.get(k))}</b>{escape(k)}<br><span>{escape(d)}</span></div>' for k, d in cards]
    out.append("</div>")
    # Retrieval and discovery metrics in one table; box recall as a K × τ grid.
    rows = [("IR@1", "IR@K"), ("IR@5", "IR@K"), ("IR@10", "IR@K"), ("Pr@50", "Pr@50")]
    rows += [("mAP50", "mAP50"), ("precision", "precision"), ("recall", "recall"), ("F1", "F1")]
    rows += [("FA_per_query", "FA_per_query"), ("N_acc", "N_acc")]
    rows += [("IL_MCC", "IL_MCC"), ("pmF1", "pmF1"), ("cgF1", "cgF1")]
    out.append('<div class="plots"><table><tr><th class="l">metric</th><th>value</th><th class="l">meaning</th></tr>')
    for key, help_key in rows:
        val = _fmt(m.get(key))
        if key == "Pr@50":
            val += f" <small>(n={_fmt(m.get('Pr@50_count'))})</small>"
        out.append(f'<tr><td class="l">{escape(key)}</td><td>{val}</td><td class="l">{escape(METRIC_HELP[help_key])}</td></tr>')
    out.append("</table><table><tr><th>box recall</th>")
    out += [f"<th>τ = {t}</th>" for t in M.TAUS]
    out.append("</tr>")
    for k in M.K_VALUES:
        cells = "".join(f"<td{_shade(m.get(f'BR@{k}@{t}'))}>{_fmt(m.get(f'BR@{k}@{t}'))}</td>" for t in M.TAUS)
        out.append(f"<tr><th>BR@{k}</th>{cells}</tr>")
    out.append(f'<tr><td colspan="4" class="l"><small>{escape(METRIC_HELP["BR@K@τ"])}</small></td></tr></table></div>')
    return "".join(out)


def _plots_section(dataset: Dataset, ev: EvalResult, matches: dict) -> str:
    precision, recall, _ = M.precision_recall_curve(dataset.queries, ev.results, iou=ev.iou)
    m = ev.metrics
    # Start the curve at recall 0 with the first precision, so a step is drawn.
    xs = [0.0] + [float(r) for r in recall]
    ys = ([float(precision[0])] if precision.size else []) + [float(p) for p in precision]
    pr = svg.line_chart(
        "Precision–recall (pooled detections, IoU 0.5)",
        [svg.Series("all detections by score", xs, ys, "#2563eb", step=True)],
        xlabel="recall",
        ylabel="precision",
        markers=[svg.Marker("presence decision", float(m["recall"]), float(m["precision"]), "#f59e0b")],
    )
    sep = analysis.separation(matches)
    auc = "n/a" if sep.auc is None else f"{sep.auc:.3f}"
    hist = svg.histogram(
        "Scores: target vs other detections",
        [
            ("target (TP at IoU 0.5)", sep.target_scores, _rgb(TP_COLOR)),
            ("other", sep.other_scores, _rgb(FP_COLOR)),
        ],
        note=f"AUC {auc}",
    )
    tp_line = "n/a" if sep.target_present is None else f"{sep.target_present:.1%}"
    fp_line = "n/a" if sep.other_absent is None else f"{sep.other_absent:.1%}"
    return (
        '<div class="plots">'
        f"<figure>{pr}<figcaption>All {int(precision.size)} detections of all queries pooled and sorted by score; each is "
        "matched to the targets of its own query and image as for mAP50. The dot is the operating point "
        "of the predictions' own <code>present</code> decisions.</figcaption></figure>"
        f"<figure>{hist}<figcaption>Each group normalised to its own total. Rank AUC {auc} = chance that a "
        f"target detection outscores a non-target one. The <code>present</code> flag keeps {tp_line} of "
        f"target detections and rejects {fp_line} of the others.</figcaption></figure></div>"
    )


# Averages over non-absent queries (and recall, over target instances): meaningless for
# a group of absent queries only, where resedis.metrics reports 0.0.
_NEEDS_TARGETS = {"IR@1", "IR@5", "Pr@50", "BR@1@0.5", "BR@5@0.5", "mAP50", "recall"}


def _breakdown_table(name: str, groups: dict[str, dict]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in BREAKDOWN_COLUMNS)
    out = [f"<h3>{escape(BREAKDOWN_TITLES.get(name, name))}</h3><table>"]
    out.append(f'<tr><th class="l">{escape(name)}</th><th>queries</th><th>absent</th>{head}</tr>')
    for label, m in groups.items():
        only_absent = m["queries"] == m["absent_queries"]
        cells = "".join(
            '<td title="no target in this group">—</td>'
            if only_absent and c in _NEEDS_TARGETS
            else f"<td{_shade(m.get(c), lower_is_better=c == 'FA_per_query')}>{_fmt(m.get(c))}</td>"
            for c in BREAKDOWN_COLUMNS
        )
        out.append(f'<tr><td class="l">{escape(label)}</td><td>{m["queries"]}</td><td>{m["absent_queries"]}</td>{cells}</tr>')
    out.append("</table>")
    return "".join(out)


def _card(dataset: Dataset, row: dict, matches: list, thumb: int) -> str:
    q = dataset.query(row["query_id"])
    meta = [f"type {row['type']}", f"category {row['category']}", f"query {row['query_id']}"]
    if row["absent"]:
        meta.append("absent: nothing should be found")
        scores = f"{row['n_decided']} detections decided present · false-alarm images {row['fa_images']}"
    else:
        meta.append(f"{row['n_targets']} target instance(s) in {row['n_target_images']} image(s)")
        scores = (
            f"AP50 {_fmt(row['AP50'])} · BR@1@0.5 {_fmt(row['BR@1@0.5'])} · IR@1 {_fmt(row['IR@1'])} · "
            f"present TP {row['tp']}, FP {row['fp']}, false-alarm images {row['fa_images']}"
        )
    figs = []
    for p in analysis.panels(q, matches):
        info = dataset.images[p.image_id]
        boxes = [
            DrawnBox(m.hit.box, m.is_tp, m.hit.present, f"#{rank} {m.hit.score:.2f}") for rank, m in p.matches
        ]
        uri = render_thumbnail(info, p.targets, boxes, max_side=thumb)
        role = "target image" if p.is_target else "not a target"
        rank = f"rank {p.rank}" if p.rank is not None else "not retrieved"
        if p.is_target and (p.rank is None or p.rank > 3):
            role = "missed target image"
        cap = f"{rank} · {role} · image {p.image_id}"
        figs.append(
            f'<figure><img src="{uri}" alt="{escape(cap)}" loading="lazy">'
            f"<figcaption>{escape(cap)}</figcaption></figure>"
        )
    if not figs:
        figs.append("<p>No detections and no target images.</p>")
    return (
        f'<div class="q"><div class="expr">“{escape(q.expression)}”</div>'
        f'<div class="meta">{escape(" · ".join(str(x) for x in meta))}<br>{escape(scores)}</div>'
        f'<div class="imgs">{"".join(figs)}</div></div>'
    )


def _gallery_section(dataset: Dataset, ev: EvalResult, matches: dict, n: int, thumb: int) -> str:
    best, worst, absent = analysis.select_gallery(ev.per_query, n)
    legend = (
        '<p class="legend">'
        f'<span><i class="sw" style="background:{_rgb(TP_COLOR)}"></i>detection matching a target (IoU ≥ 0.5)</span>'
        f'<span><i class="sw" style="background:{_rgb(FP_COLOR)}"></i>detection matching no target</span>'
        f'<span><i class="sw" style="background:{_rgb(GT_COLOR)}"></i>ground-truth target (dashed box, tinted mask)</span>'
        "<span>solid = decided present, dashed = not present; label = #rank score</span></p>"
    )
    out = [legend]
    for heading, rows in (
        ("Best queries (by AP50, then BR@1@0.5, IR@1)", best),
        ("Worst queries", worst),
        ("Absent queries (most false alarms first)", absent),
    ):
        out.append(f"<h3>{escape(heading)}</h3>")
        if not rows:
            out.append("<p>none</p>")
        out += [_card(dataset, r, matches[r["query_id"]], thumb) for r in rows]
    return "".join(out)


def build_report_html(
    dataset: Dataset,
    results: Sequence[QueryResult],
    eval_result: EvalResult,
    *,
    title: str | None = None,
    gallery_size: int = 6,
    thumb_size: int = 320,
) -> str:
    """The report as one HTML string (see :func:`write_report`)."""
    title = title or f"resedis evaluation: {dataset.name}"
    matches = analysis.match_all(dataset, eval_result)
    body = [
        _header(dataset, results, eval_result, title),
        _warnings(dataset, eval_result),
        "<h2>Metrics</h2>",
        _metrics_section(eval_result.metrics),
        "<h2>Ranking and presence</h2>",
        _plots_section(dataset, eval_result, matches),
        "<h2>Breakdowns</h2>",
    ]
    body += [_breakdown_table(name, groups) for name, groups in eval_result.breakdown.items()]
    body.append("<h2>Gallery</h2>")
    body.append(_gallery_section(dataset, eval_result, matches, gallery_size, thumb_size))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>"
        + "".join(body)
        + "</main></body></html>\n"
    )


def write_report(
    path: str | Path,
    dataset: Dataset,
    results: Sequence[QueryResult],
    eval_result: EvalResult,
    *,
    title: str | None = None,
    gallery_size: int = 6,
    thumb_size: int = 320,
) -> Path:
    """Write ONE self-contained HTML file: metrics table, pooled precision–recall curve,
    target vs non-target score histograms, breakdowns by type / layout / category, and a
    gallery of the ``gallery_size`` best and worst queries (plus absent ones) with boxes
    drawn on JPEG thumbnails (longer side ≤ ``thumb_size`` px, inlined as base64).

    ``results`` are the prediction lines as read (for counts); the scored detections
    come from ``eval_result`` (unknown ids already excluded). Returns the path.
    """
    if gallery_size < 0:
        raise ValueError(f"gallery_size must be ≥ 0, got {gallery_size}")
    if not 32 <= thumb_size <= 320:
        raise ValueError(f"thumb_size must be in [32, 320] px, got {thumb_size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    html = build_report_html(
        dataset, results, eval_result, title=title, gallery_size=gallery_size, thumb_size=thumb_size
    )
    path.write_text(html, encoding="utf-8")
    return path
