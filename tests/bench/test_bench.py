"""resedis bench: a very small run, its JSON schema and internal consistency."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from resedis.bench import BenchPlan, run_bench
from resedis.bench.indexing import EncoderCase, image_flops
from resedis.bench.naive import NaiveBenchConfig
from resedis.bench.query import QueryBenchConfig
from resedis.index.ann import AnnConfig


@pytest.fixture(scope="module")
def report(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    plan = BenchPlan(
        mode="test",
        encoders=[
            EncoderCase("clip-b32-224", batch_sizes=(1, 2), images=2, warmup=False, image_size=64),
            EncoderCase("owlvit-b32-768", batch_sizes=(1,), images=1, warmup=False, image_size=128),
        ],
        query=QueryBenchConfig(sizes=(1000, 3000), queries=5, regions_per_image=50),
        naive=NaiveBenchConfig(images=12, steps=(6, 12), queries=2, repeats=2),
        ann=AnnConfig(min_rows=1, num_partitions=8),
        writer_models=[("tiny", 12, 4)],
        matmul_n=256,
        matmul_seconds=0.2,
        storage_rows=(2000, 10, 2000),
        tiny_owlv2=str(tiny_models["owlv2"]),
        startup_repeats=1,
    )
    result = run_bench(quick=True, out=out, plan=plan, progress=False, print_table=False)
    return result, json.loads(out.read_text())


def test_report_is_written_and_complete(report):
    result, on_disk = report
    assert on_disk["schema"] == "resedis-bench/1" and on_disk["mode"] == "test"
    for key in ("machine", "indexing", "indexing_writer", "query", "naive_vs_index", "peak_rss_mb", "seconds"):
        assert key in on_disk, key
    assert on_disk["query"] == result["query"]
    assert on_disk["machine"]["matmul_gflops"] > 0
    assert on_disk["machine"]["matmul_gflops"] >= on_disk["machine"]["matmul_gflops_median"]
    startup = on_disk["startup"]  # one-off search on a demo-model index of the naive step's 12 images
    assert startup["images"] == 12 and set(startup["ratio_to_import_torch"]) == {"new_query", "repeated_query", "searcher_path"}
    assert startup["ratio_to_import_torch"]["new_query"] == pytest.approx(
        startup["median_s"]["new_query"] / startup["median_s"]["import_torch"], rel=1e-2, abs=2e-3)


def test_storage_section(report):
    """Bytes per image of each format measured on disk, and agreement with float16."""
    from resedis import quant

    st = report[1]["storage"]
    sizes = st["bytes_per_image"]
    assert set(sizes) == {"float16", "int8", "int4"}
    for name, size in sizes.items():
        assert size["total"] == pytest.approx(size["table"] + size["ann"], abs=1)
        # The table holds at least the vector data of 100 regions (Lance adds little on top).
        assert size["table"] >= 100 * quant.bytes_per_region(name, 513) * 0.95
    assert sizes["int4"]["total"] < sizes["int8"]["total"] < sizes["float16"]["total"]
    for name in ("int8", "int4"):
        a = st["agreement_vs_float16"][name]
        assert a["bound_ok"] is True and 0.0 <= a["top10_identical"] <= a["top10_same_set"] <= 1.0
        assert 0.0 <= a["top1_identical"] <= 1.0 and st["agreement_vs_float16"]["queries"] == 10
        assert 0.0 < a["max_score_diff"] < 1.0
        # the largest logit error against float32 stays within the documented bound
        assert 0.0 < a["max_err_over_bound"] <= 1.0 + 1e-4 and a["max_logit_diff_vs_float32"] <= a["max_bound"] + 1e-4
    assert st["agreement_vs_float16"]["int8"]["max_logit_diff"] < st["agreement_vs_float16"]["int4"]["max_logit_diff"]


def test_indexing_entries_are_consistent(report):
    result, _ = report
    entries = result["indexing"]
    assert [(e["model"], e["batch_size"]) for e in entries] == [
        ("clip-b32-224", 1), ("clip-b32-224", 2), ("owlvit-b32-768", 1)
    ]
    machine = result["machine"]["matmul_gflops"]
    for e in entries:
        assert e["images_per_s"] > 0 and e["forward_ms"] > 0 and e["decode_ms"] > 0
        stages = e["decode_ms"] + e["preprocess_ms"] + e["forward_ms"] + e["select_ms"]
        assert e["images_per_s"] == pytest.approx(1000 / stages, rel=2e-3)
        assert e["images_per_s"] <= e["forward_images_per_s"] * 1.001
        share = e["gflops_per_image"] * e["images_per_s"] / machine
        assert e["achieved_flops_share"] == pytest.approx(share, rel=5e-3, abs=1e-4)
    assert entries[0]["gflops_per_image"] == pytest.approx(image_flops("clip", 64) / 1e9, rel=1e-3)
    assert entries[2]["image_size"] == 128


def test_query_entries(report):
    result, _ = report
    rows = [q["rows"] for q in result["query"]]
    assert rows == [1000, 3000]
    for q in result["query"]:
        for key in ("ann_recall_at_10", "ann_recall_at_100", "exact_recall_at_10"):
            assert 0.0 <= q[key] <= 1.0
        assert q["exact_recall_at_10"] == 1.0  # exact search against the reference is exact
        assert q["exact_p50_ms"] <= q["exact_p95_ms"] and q["ann_p50_ms"] <= q["ann_p95_ms"]
        assert q["bytes_per_region"] > 513 * 2  # at least the float16 vector itself
        assert q["bytes_per_region"] == pytest.approx(q["data_bytes_per_region"] + q["index_bytes_per_region"], abs=0.2)
        assert q["build_s"] > 0 and q["ann_index"]["rows"] == q["rows"]


def test_naive_vs_index(report):
    result, _ = report
    n = result["naive_vs_index"]
    assert n["images"] == 12 and n["same_hits"] is True
    assert n["speedup"] == pytest.approx(n["naive_s_per_query"] / n["index_s_per_query"], rel=1e-9)
    assert [r["images"] for r in n["by_corpus_size"]] == [6, 12]
    for r in n["by_corpus_size"]:
        assert r["same_hits"] is True and r["max_score_diff"] <= 1e-5
        assert r["speedup"] == pytest.approx(r["naive_s_per_query"] / r["index_s_per_query"], rel=1e-9)
    # (no comparison of measured times: speed is reported, never asserted) the larger
    # corpus step indexes strictly more regions than the smaller one
    assert n["by_corpus_size"][1]["index_regions"] > n["by_corpus_size"][0]["index_regions"] > 0


def test_peak_rss_and_pipeline(report):
    result, _ = report
    rss = result["peak_rss_mb"]
    assert 0 < rss["indexing"] and 0 < rss["search"]
    pipe = result["indexing_writer"][0]
    assert pipe["images"] == 12 and pipe["images_per_s"] > 0
    assert pipe["overlap_gain"] == pytest.approx(pipe["images_per_s"] / pipe["serial_stage_sum_images_per_s"], rel=2e-3, abs=2e-4)


def test_flop_count_matches_the_backend_forward(tiny_models):
    """image_flops (meta device, mirrored calls) == FlopCounterMode over the real
    OwlBackend.encode_preprocessed on the tiny checkpoint. The real forward runs with the
    math attention kernel: torch's counter does not count the fused CPU flash-attention op
    (it would silently drop the attention FLOPs), while the math path is plain bmm."""
    from PIL import Image
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from resedis.models import load_model

    backend = load_model(f"owlv2:{tiny_models['owlv2']}", "cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    pixel_values, sizes = backend.preprocess([image])
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        backend.encode_preprocessed(pixel_values, sizes)
    size = pixel_values.shape[-1]
    counted = image_flops("owlv2", size, config=backend.model.config)
    assert counted > 0 and math.isclose(counter.get_total_flops(), counted, rel_tol=1e-9)


def test_cli_validation(capsys):
    from resedis.cli import main

    assert main(["bench", "--quick", "--max-rows", "5000"]) == 2
    assert "--max-rows applies to the full mode" in capsys.readouterr().err
    assert main(["bench", "--max-rows", "5000"]) == 2
    assert "below the smallest corpus size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--max-rows", "0"])
