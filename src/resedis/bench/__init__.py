"""``resedis bench``: every figure from one run on this machine.

Sections of the JSON report (see ``docs/benchmarks.md`` for the meaning of each key):

* ``machine`` — measured dense matmul GFLOP/s (same torch thread count as the models);
* ``indexing`` — region-encoder throughput at real sizes with random weights, FLOPs
  per image and the achieved share of the machine's matmul FLOP/s;
* ``indexing_writer`` — the real writer's images/s against the sum of its stages;
* ``query`` — exact vs ANN (+ exact re-scoring) latency, recall and disk per corpus size;
* ``scale`` — sizes above 1M regions, streamed with bounded memory (:mod:`resedis.bench.scale`):
  p50/p95, recall@10/@100 against a streaming exact scan, build time, bytes per image and
  the query process's peak RSS;
* ``ann_variants`` (full mode) — the LanceDB index types compared on one corpus;
* ``naive_vs_index`` — seconds per query of running the detector on every image vs the
  index, the speedup, whether the hits are identical, and how it grows with the corpus;
* ``peak_rss_mb`` — of an indexing process and of a search process (each isolated);
* ``startup`` — a one-off ``resedis search`` (new and repeated query) as a ratio to
  ``python -c "import torch"``, on a demo-model index of the naive step's images
  (:mod:`resedis.bench.startup`).
* ``storage`` — bytes per image of each region storage format and the top-10 agreement of
  the compact ones (int8, int4) with float16 (:mod:`resedis.bench.storage`).

>>> from resedis.bench import run_bench
>>> report = run_bench(quick=True, out="bench.json")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from resedis.bench.indexing import EncoderCase
from resedis.errors import ResedisError
from resedis.bench.naive import NaiveBenchConfig
from resedis.bench import startup
from resedis.bench.query import QueryBenchConfig
from resedis.index.ann import AnnConfig

SCHEMA = "resedis-bench/1"
# Query-sweep sizes above this are measured with bounded memory (resedis.bench.scale).
STREAM_ABOVE_ROWS = 1_000_000


#: where ``resedis bench`` writes its report unless told
DEFAULT_REPORT = "bench.json"

@dataclass
class BenchPlan:
    """What one run measures. :func:`quick_plan` / :func:`full_plan` are the two modes.

    threads: torch CPU threads for every measurement (matmul included, so the FLOP share
    compares like with like), and numpy's BLAS threads (the exact search's product) when
    threadpoolctl is installed (:func:`resedis.threads.set_threads`); None keeps the
    libraries' defaults.
    writer_models: (model, images, batch size) run through the real writer in a child
    process (a :data:`resedis.bench.indexing.MODELS` name or ``"tiny"``).
    """

    mode: str
    encoders: list[EncoderCase]
    query: QueryBenchConfig
    naive: NaiveBenchConfig
    ann: AnnConfig = field(default_factory=AnnConfig)
    ann_variants_rows: int | None = None
    writer_models: list[tuple[str, int, int]] = field(default_factory=lambda: [("tiny", 200, 8)])
    matmul_n: int = 2048
    matmul_seconds: float = 1.5
    threads: int | None = 1
    storage_rows: tuple[int, int, int] = (20_000, 50, 10_000)  # agreement rows, queries, bytes rows
    scale_storage: str = "int4"  # storage format of the streamed sizes (> STREAM_ABOVE_ROWS)
    tiny_owlv2: str | None = None  # an existing tiny OWLv2 checkpoint dir (else one is written)
    startup_repeats: int = 3  # interleaved repeats of the one-off search timing (0 = skip the step)


def quick_plan() -> BenchPlan:
    """About two minutes on a quiet 2-core machine."""
    return BenchPlan(
        mode="quick",
        encoders=[
            EncoderCase("clip-b32-224", batch_sizes=(1, 4), images=4),
            EncoderCase("owlvit-b32-768", batch_sizes=(1,), images=1, warmup=False),
            EncoderCase("owlv2-b16-960", batch_sizes=(1,), images=1, warmup=False),
        ],
        query=QueryBenchConfig(sizes=(10_000, 100_000), queries=20),
        naive=NaiveBenchConfig(images=200, steps=(50, 100, 200), queries=2, repeats=5),
    )


def full_plan(max_rows: int = 1_000_000) -> BenchPlan:
    sizes = tuple(s for s in (10_000, 100_000, 1_000_000, 10_000_000) if s <= max_rows)
    return BenchPlan(
        mode="full",
        encoders=[
            EncoderCase("clip-b32-224", batch_sizes=(1, 4, 16, 32), images=32),
            EncoderCase("owlvit-b32-768", batch_sizes=(1, 2, 4, 8), images=8),
            EncoderCase("owlv2-b16-960", batch_sizes=(1, 2), images=2),
        ],
        query=QueryBenchConfig(sizes=sizes, queries=50),
        naive=NaiveBenchConfig(images=200, steps=(25, 50, 100, 200), queries=5, repeats=10),
        ann_variants_rows=100_000,
        storage_rows=(200_000, 200, 50_000),
        writer_models=[("tiny", 200, 8), ("owlvit-b32-768", 16, 8)],
    )


def _ann_variants(base: AnnConfig) -> list[AnnConfig]:
    from dataclasses import replace

    return [
        replace(base, index_type="IVF_SQ", metric="cosine"),
        replace(base, index_type="IVF_FLAT", metric="cosine"),
        replace(base, index_type="IVF_FLAT", metric="dot"),
        replace(base, index_type="IVF_PQ", metric="cosine", max_iterations=20),
        replace(base, index_type="IVF_PQ", metric="cosine", max_iterations=20, refine_factor=5),
        replace(base, index_type="IVF_HNSW_SQ", metric="cosine", num_partitions=16, nprobes=4),
    ]


def _table(report: dict) -> str:
    m = report["machine"]
    lines = [f"machine: {m['matmul_gflops']:.1f} GFLOP/s dense matmul ({m['threads']} thread(s), float32)"]
    lines.append(f"{'indexing model':<16} {'bs':>3} {'img/s':>8} {'fwd ms':>9} {'dec ms':>7} {'GFLOP/img':>9} {'share':>6}")
    for e in report["indexing"]:
        lines.append(
            f"{e['model']:<16} {e['batch_size']:>3} {e['images_per_s']:>8.3f} {e['forward_ms']:>9.1f} "
            f"{e['decode_ms']:>7.1f} {e['gflops_per_image']:>9.1f} {e['achieved_flops_share']:>6.1%}"
        )
    lines.append(
        f"{'rows':>10} {'exact p50':>10} {'(matrix)':>8} {'stored p50':>10} {'ann p50':>9} {'R@10':>6} {'R@100':>6} "
        f"{'build s':>8} {'B/region':>9}"
    )
    for q in report["query"]:
        lines.append(
            f"{q['rows']:>10} {q['exact_p50_ms']:>8.1f}ms {q['exact_matrix_dtype']:>8} {q['exact_stored_p50_ms']:>8.1f}ms "
            f"{q['ann_p50_ms']:>7.1f}ms {q['ann_recall_at_10']:>6.3f} "
            f"{q['ann_recall_at_100']:>6.3f} {q['build_s']:>8.1f} {q['bytes_per_region']:>9.0f}"
        )
    n = report["naive_vs_index"]
    growth = ", ".join(f"{r['images']}: {r['speedup']:.0f}x" for r in n["by_corpus_size"])
    lines.append(
        f"naive vs index ({n['images']} images): {n['naive_s_per_query']:.3f} s vs {1000 * n['index_s_per_query']:.2f} ms "
        f"per query = {n['speedup']:.0f}x, same hits: {n['same_hits']} (growth {growth})"
    )
    for sc in report.get("scale", []):
        lines.append(
            f"{sc['rows']:>10} {sc['storage']} streamed: ANN p50 {sc['p50_ms']:.1f} ms, p95 {sc['p95_ms']:.1f} ms, "
            f"R@10 {sc['recall_at_10']:.3f}, R@100 {sc['recall_at_100']:.3f}, build {sc['write_s'] + sc['ann_build_s']:.0f} s, "
            f"{sc['bytes_per_image'] / 1000:.1f} kB/image, Searcher RSS {sc['searcher_peak_rss_mb']:.0f} MiB"
        )
    st = report.get("storage")
    if st:
        sizes = ", ".join(f"{k} {v['total'] / 1000:.1f}" for k, v in st["bytes_per_image"].items())
        lines.append(f"storage kB/image (100 regions, 513-d, index + ANN): {sizes}")
        for name, a in st["agreement_vs_float16"].items():
            if isinstance(a, dict):
                lines.append(
                    f"  {name} vs float16: top-10 identical {a['top10_identical']:.3f}, same set {a['top10_same_set']:.3f}, "
                    f"top-1 {a['top1_identical']:.3f}, max score diff {a['max_score_diff']:.4f}, bound held: {a['bound_ok']}"
                )
    rss = report["peak_rss_mb"]
    lines.append(f"peak RSS: indexing {rss['indexing']:.0f} MiB, search {rss['search']:.0f} MiB")
    if report.get("startup"):
        lines.append(startup.startup_line(report["startup"]))
    return "\n".join(lines)


def run_bench(
    quick: bool = True,
    out: str | os.PathLike | None = None,
    *,
    plan: BenchPlan | None = None,
    workdir: str | os.PathLike | None = None,
    progress: bool = True,
    print_table: bool = True,
) -> dict:
    """Run the benchmark (``quick`` or full, or an explicit ``plan``) -> the report dict,
    also written as JSON to ``out`` when given. Scratch data goes to ``workdir`` (a
    temporary directory by default, removed afterwards)."""
    from tqdm.auto import tqdm

    from resedis.bench import indexing, jobs, machine, naive, query, scale, storage

    plan = plan or (quick_plan() if quick else full_plan())
    started = time.perf_counter()
    if plan.threads:
        from resedis.threads import set_threads

        set_threads(plan.threads)
    scratch = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="resedis-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    report: dict = {"schema": SCHEMA, "mode": plan.mode, "argv": sys.argv, "plan": _plan_json(plan)}
    steps = ["machine", "indexing", "naive", "writer", "query", "storage"] + (["variants"] if plan.ann_variants_rows else [])
    steps += ["startup"] if plan.startup_repeats else []
    bar = tqdm(total=len(steps), desc="bench", unit="part", disable=not progress, file=sys.stderr)
    try:
        bar.set_postfix_str("matmul")
        from resedis.threads import blas_threads

        report["machine"] = {**machine.matmul_gflops(plan.matmul_n, plan.matmul_seconds), **machine.machine_info(),
                             "blas_threads": blas_threads()}
        bar.update(1)

        bar.set_postfix_str("indexing throughput")
        n_photos = max([8] + [c.images for c in plan.encoders] + [n for m, n, _ in plan.writer_models if m != "tiny"])
        photos = indexing.write_test_images(scratch / "photos", n_photos)
        report["indexing"] = []
        for case in plan.encoders:
            report["indexing"] += indexing.measure_encoder(case, photos, report["machine"]["matmul_gflops"])
        bar.update(1)

        bar.set_postfix_str("naive vs index")
        from resedis.testing.tiny import make_tiny_checkpoints

        tiny = plan.tiny_owlv2 or make_tiny_checkpoints(scratch / "tiny", families=["owlv2"])["owlv2"]
        tiny_spec = f"owlv2:{tiny}"
        report["naive_vs_index"] = naive.run_naive_vs_index(scratch / "naive", tiny_spec, plan.naive)
        bar.update(1)

        bar.set_postfix_str("indexing writer + RSS")
        corpus_images = scratch / "naive" / "corpus" / "images"
        report["indexing_writer"] = []
        rss_index = None
        for model, n_images, batch in plan.writer_models:
            spec = tiny_spec if model == "tiny" else model
            src = corpus_images if model == "tiny" else scratch / "photos"
            folder = scratch / f"writer_{len(report['indexing_writer'])}"
            _link_first(src, folder, n_images)
            db = scratch / f"writer_{len(report['indexing_writer'])}.db"
            job, rss = machine.run_isolated(jobs.index_job, str(folder), str(db), spec, batch, plan.threads)
            stages = jobs.stage_rate(spec, folder, batch, min(n_images, 32))
            job.update(
                serial_stage_sum_images_per_s=stages["serial_images_per_s"],
                overlap_gain=round(job["images_per_s"] / stages["serial_images_per_s"], 4),
                stages_ms=stages,
                peak_rss_mb=round(rss, 1),
            )
            report["indexing_writer"].append(job)
            rss_index = rss_index or {"mb": round(rss, 1), "model": spec, "images": n_images, "batch_size": batch}
        search, rss_search = machine.run_isolated(
            jobs.search_job, str(scratch / "naive" / "growing.db"), tiny_spec,
            report["naive_vs_index"]["query_texts"], 3, plan.threads,
        )
        report["peak_rss_mb"] = {
            "indexing": rss_index["mb"] if rss_index else None,
            "search": round(rss_search, 1),
            "indexing_run": rss_index,
            "search_run": {**search, "model": tiny_spec},
            "bench_process": round(machine.peak_rss_mb(), 1),
        }
        bar.update(1)

        bar.set_postfix_str("query sweep")
        report["query"] = []
        for rows in plan.query.sizes:
            if rows > STREAM_ABOVE_ROWS:  # the matrix would not fit: streamed (resedis.bench.scale)
                report.setdefault("scale", []).append(
                    scale.run_scale(rows, scratch / "scale", storage=plan.scale_storage, queries=plan.query.queries, ann=plan.ann)
                )
                continue
            report["query"].append(query.run_query_size(rows, scratch / "query", plan.query, plan.ann))
        report["ann"] = {"config": asdict(plan.ann), "largest_rows": max(plan.query.sizes)}
        bar.update(1)

        bar.set_postfix_str("storage formats")
        report["storage"] = storage.run_storage_bench(*plan.storage_rows, workdir=scratch / "storage")
        bar.update(1)

        if plan.ann_variants_rows:
            bar.set_postfix_str("ANN variants")
            report["ann_variants"] = query.compare_ann_variants(
                plan.ann_variants_rows, scratch / "variants", plan.query, _ann_variants(plan.ann)
            )
            bar.update(1)

        if plan.startup_repeats:
            bar.set_postfix_str("one-off search startup")
            db = startup.build_demo_index(corpus_images, scratch / "startup.db")
            report["startup"] = {**startup.measure_startup(db, repeats=plan.startup_repeats), "images": len(list(corpus_images.iterdir()))}
            bar.update(1)
    finally:
        bar.close()
        if not workdir:
            shutil.rmtree(scratch, ignore_errors=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["notes"] = [
        "CPU figures from a shared machine: other processes compete for the same cores, so absolute "
        "numbers vary run to run; ratios measured side by side in this run are the meaningful part.",
        f"torch threads: {plan.threads or 'default'}; the matmul reference uses the same setting; numpy BLAS "
        f"threads: {report.get('machine', {}).get('blas_threads') or 'default (threadpoolctl not installed)'}.",
    ]
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=_json_default) + "\n", encoding="utf-8")
    if print_table:
        print(_table(report))
    return report


def run_startup_bench(
    out: str | os.PathLike | None = None,
    *,
    db: str | os.PathLike | None = None,
    images: int = 200,
    repeats: int = 3,
    workdir: str | os.PathLike | None = None,
    print_table: bool = True,
) -> dict:
    """Only the ``startup`` step: against a copy of the local index ``db`` (its query cache
    and sidecar are written into the copy, the original is left alone), or, without ``db``,
    against a demo-model index of ``images`` synthetic images built here."""
    from resedis.synth import generate

    started = time.perf_counter()
    scratch = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="resedis-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    report: dict = {"schema": SCHEMA, "mode": "startup", "argv": sys.argv}
    try:
        target = scratch / "startup.db"
        shutil.rmtree(target, ignore_errors=True)
        if db is not None:
            if not (Path(db) / "resedis.json").is_file():
                raise ResedisError(f"{db}: not a local resedis index (no resedis.json)")
            shutil.copytree(db, target, ignore=shutil.ignore_patterns(".lock"))
            from resedis.search_oneoff import refresh_sidecar

            refresh_sidecar(target)
            n_images = None
        else:
            corpus = scratch / "corpus"
            if not (corpus / "images").is_dir():
                generate(corpus, images=images, queries=2, absent=0, seed=0, progress=False)
            startup.build_demo_index(corpus / "images", target)
            n_images = images
        report["startup"] = {**startup.measure_startup(target, repeats=repeats), "images": n_images,
                             "source_db": str(db) if db is not None else None}
    finally:
        if not workdir:
            shutil.rmtree(scratch, ignore_errors=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=_json_default) + "\n", encoding="utf-8")
    if print_table:
        print(startup.startup_line(report["startup"]))
    return report


def _link_first(src: Path, dst: Path, n: int) -> None:
    from resedis.bench.naive import link_images

    shutil.rmtree(dst, ignore_errors=True)
    files = sorted(p for p in Path(src).iterdir() if p.is_file())
    link_images([files[i % len(files)] for i in range(min(n, len(files)))], dst)


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _plan_json(plan: BenchPlan) -> dict:
    data = asdict(plan)
    data["query"]["spec"] = asdict(plan.query.spec)
    return data


__all__ = ["BenchPlan", "full_plan", "quick_plan", "run_bench", "run_startup_bench"]
