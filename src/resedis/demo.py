"""``resedis demo``: the bundled model finding things in a fresh synthetic corpus, offline.

1. renders a synthetic corpus (``resedis synth``; default seed 2024, never used in
   training — the bundled model was trained on seeds 1000-1119, validated on 101);
2. indexes it with the bundled demo model (:func:`demo_model_dir`);
3. runs every query of the corpus through search — presence decided by the model's own
   ``presence_threshold`` (:mod:`resedis.thresholds`; a calibration stored in the index
   later wins) — and scores them with the metric suite;
4. writes ``OUT/index.html``: a few example queries (attribute, position, relation,
   absent) with their top hits drawn over the images, and the metrics; plus the full
   evaluation report ``OUT/report.html`` and ``OUT/predictions.jsonl``.

>>> from resedis.demo import run_demo
>>> summary = run_demo("/tmp/resedis-demo")          # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from resedis.errors import IndexMismatchError, ResedisError
from resedis.models.checkpoint import read_checkpoint_meta
from resedis.models.spec import demo_model_dir

log = logging.getLogger(__name__)

DEMO_SEED = 2024
#: the fewest images ``resedis demo`` renders (fewer leave too few queries of each type)
MIN_IMAGES = 10
#: where ``resedis demo`` writes when no output folder is given
DEFAULT_OUT = "resedis-demo"
EXAMPLE_TYPES = ("attribute", "position", "relation", "absent")


def demo_model_spec() -> str:
    """``owlv2:<package>/assets/demo_model``; the model spec ``demo`` is its alias (and the
    spelling an index records: :func:`resedis.models.parse_spec`)."""
    path = demo_model_dir()
    if not (path / "config.json").is_file():
        raise ResedisError(f"the bundled demo model is missing from {path}; retrain it with scripts/train_demo_model.sh")
    return f"owlv2:{path}"


def demo_threshold() -> float:
    """The presence threshold fitted on the demo model's validation corpus."""
    return float(read_checkpoint_meta(demo_model_dir())["presence_threshold"])


@dataclass
class DemoConfig:
    """What the demo renders and how it runs.

    ``queries`` (None: three per four images, at least 10) and ``absent`` (None: one in
    eight of the queries, at least 2) follow ``images`` unless given: 200 images give 150
    queries, 18 of them absent.
    """

    seed: int = DEMO_SEED
    images: int = 200
    queries: int | None = None
    absent: int | None = None
    examples_per_type: int = 2
    hits_shown: int = 3
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.queries is None:
            self.queries = max(10, round(0.75 * self.images))
        if self.absent is None:
            self.absent = max(2, self.queries // 8)


@dataclass
class DemoResult:
    out_dir: Path
    page: Path
    report: Path
    db: Path
    metrics: dict
    by_type: dict
    examples: list[dict] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    threshold: float | None = None
    threshold_source: str | None = None  # resedis.thresholds.SOURCES


def _pick_examples(dataset, results, per_type: int) -> list:
    """The first ``per_type`` queries of each type, in dataset order."""
    by_id = {r.query_id: r for r in results}
    out = []
    for t in EXAMPLE_TYPES:
        qs = [q for q in dataset.queries if (q.type or ("absent" if q.is_absent else None)) == t][:per_type]
        out += [(q, by_id[q.query_id]) for q in qs]
    return out


def _example_html(dataset, query, result, hits_shown: int) -> tuple[str, dict]:
    from resedis.metrics import match_detections
    from resedis.report.gallery import DrawnBox, render_thumbnail

    matches = match_detections(query, result.hits)
    shown = matches[:hits_shown]
    figs = []
    for rank, m in enumerate(shown, 1):
        info = dataset.images[m.hit.image_id]
        targets = query.instances_of(m.hit.image_id)
        label = f"#{rank} {m.hit.score:.2f}"
        uri = render_thumbnail(info, targets, [DrawnBox(m.hit.box, m.is_tp, m.hit.present, label)], max_side=280)
        verdict = ("correct" if m.is_tp else "wrong") + (" · present" if m.hit.present else " · below threshold")
        cap = f"rank {rank} · score {m.hit.score:.3f} · {verdict} · image {m.hit.image_id}"
        figs.append(f'<figure><img src="{uri}" alt="{html.escape(cap)}"><figcaption>{html.escape(cap)}</figcaption></figure>')
    decided = [m for m in matches if m.hit.present]
    if query.is_absent:
        summary = ("correct: nothing decided present" if not decided
                   else f"false alarm: {len(decided)} detection(s) decided present")
    else:
        summary = (f"{len(query.instances)} target(s) in {len(query.target_images)} image(s); "
                   f"top hit {'correct' if matches and matches[0].is_tp else 'wrong'}; "
                   f"{sum(m.is_tp for m in decided)} of {len(decided)} present detections correct")
    body = "".join(figs) or "<p>no detections</p>"
    block = (f'<div class="q"><h3>“{html.escape(query.expression)}”</h3>'
             f'<p class="meta">{html.escape(query.type or "")} · {html.escape(summary)}</p>'
             f'<div class="imgs">{body}</div></div>')
    record = {"query_id": query.query_id, "expression": query.expression, "type": query.type, "summary": summary,
              "hits": [m.hit.to_json() | {"correct": m.is_tp} for m in shown]}
    return block, record


def _page(title: str, intro: str, metrics_rows: str, examples: str) -> str:
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th:first-child,td:first-child{{text-align:left}}
.q{{margin:1.5em 0}}.imgs{{display:flex;flex-wrap:wrap;gap:8px}}figure{{margin:0;max-width:290px}}
figcaption{{font-size:12px;color:#444}}.meta{{color:#555}}</style></head><body>
<h1>{html.escape(title)}</h1><p>{intro}</p>
<h2>Metrics on this corpus</h2><table><tr><th>queries</th><th>n</th><th>BR@1@0.5</th><th>IR@1</th><th>mAP50</th>
<th>F1</th><th>N_acc</th></tr>{metrics_rows}</table>
<p>Boxes: green = correct (IoU ≥ 0.5 with a target), red = wrong; solid = decided present, dotted = below
the presence threshold; cyan tint and dashes = ground-truth targets.</p>
<h2>Example queries</h2>{examples}
<p><a href="report.html">Full evaluation report</a> · predictions: predictions.jsonl</p></body></html>
"""


def run_demo(out_dir: str | Path, *, config: DemoConfig | None = None) -> DemoResult:
    """Run the demo into ``out_dir`` (created). A corpus already there is reused when it was
    rendered with the same settings (``OUT/demo.json``), else rendered again; its index is
    reused when it was built from that corpus with the current bundled weights, else
    rebuilt (the demo's own ``OUT/index.db`` only)."""
    from resedis.eval import evaluate_predictions
    from resedis.index import IndexConfig, build_index, open_index
    from resedis.io import load_dataset
    from resedis.io.predictions import write_predictions
    from resedis.metrics import evaluate
    from resedis.pipelines import PipelineConfig
    from resedis.query import QueryEngine
    from resedis.report import write_report
    from resedis.synth import generate

    config = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    demo_model_spec()  # a clear error when the bundled model is missing
    spec = "demo"  # recorded as such in the index manifest: survives the package moving
    t0 = time.time()
    corpus = out / "corpus"
    db = out / "index.db"
    stamp_path = out / "demo.json"
    stamp = {"seed": config.seed, "images": config.images, "queries": config.queries, "absent": config.absent}
    try:
        same_corpus = (corpus / "instances.json").is_file() and json.loads(stamp_path.read_text()) == stamp
    except (OSError, ValueError):
        same_corpus = False
    if not same_corpus:
        if db.exists():  # an index of another corpus: its images are about to be replaced
            shutil.rmtree(db)
        stamp_path.unlink(missing_ok=True)
        generate(corpus, images=config.images, queries=config.queries, absent=config.absent, seed=config.seed,
                 progress=config.progress, overwrite=True)
        stamp_path.write_text(json.dumps(stamp), encoding="utf-8")
    t1 = time.time()
    index_config = IndexConfig(model=spec, device=config.device)

    def indexed() -> QueryEngine:
        build_index(corpus / "images", db, config=index_config, progress=config.progress)
        engine = QueryEngine(open_index(db, model=spec), PipelineConfig(device=config.device))
        engine.pipeline().warm_up()  # loads the model: IndexMismatchError when its weights changed
        return engine

    try:
        engine = indexed()
    except IndexMismatchError as exc:  # built by an earlier version of the bundled model
        log.warning("rebuilding %s: %s", db, exc)
        shutil.rmtree(db)
        engine = indexed()
    t2 = time.time()
    dataset = load_dataset(corpus)
    _, choice = engine.resolve()  # the model's presence_threshold unless the index was calibrated
    results = engine.run_dataset(dataset)
    t3 = time.time()
    write_predictions(out / "predictions.jsonl", results)
    ev = evaluate_predictions(dataset, results)
    report = write_report(out / "report.html", dataset, results, ev, title=f"resedis demo (synthetic seed {config.seed})")

    hits = {r.query_id: r.hits for r in results}
    absent = [q for q in dataset.queries if q.is_absent]
    by_type = {}
    rows = []
    groups = [("all", dataset.queries)] + [
        (t, [q for q in dataset.queries if q.type == t] + absent) for t in ("attribute", "position", "relation")]
    for name, qs in groups:
        m = evaluate(qs, {q.query_id: hits.get(q.query_id, []) for q in qs})
        by_type[name] = m
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        n = len([q for q in qs if not q.is_absent])
        rows.append(f"<tr><td>{name}{' (+ absent)' if name != 'all' else ''}</td><td>{n}</td>"
                    + "".join(f"<td>{fmt(m[k])}</td>" for k in ("BR@1@0.5", "IR@1", "mAP50", "F1", "N_acc")) + "</tr>")
    blocks, records = [], []
    for q, r in _pick_examples(dataset, results, config.examples_per_type):
        b, rec = _example_html(dataset, q, r, config.hits_shown)
        blocks.append(b)
        records.append(rec)
    intro = (f"A fresh synthetic corpus ({len(dataset.images)} images, {len(dataset.queries)} queries, seed "
             f"{config.seed}) indexed with the bundled from-scratch OWLv2 demo model "
             f"(model spec <code>{spec}</code>), searched with presence threshold {choice.value:.3f} "
             f"({html.escape(choice.source)}: {html.escape(choice.origin)}).")
    page = out / "index.html"
    page.write_text(_page("resedis demo", intro, "".join(rows), "".join(blocks)), encoding="utf-8")
    return DemoResult(out_dir=out, page=page, report=Path(report), db=db, metrics=ev.metrics, by_type=by_type,
                      examples=records, seconds={"synth": round(t1 - t0, 1), "index": round(t2 - t1, 1),
                                                 "search": round(t3 - t2, 1), "total": round(time.time() - t0, 1)},
                      threshold=choice.value, threshold_source=choice.source)
