"""Cost per image (models/cost.py) against torch's FlopCounterMode, and the indexing
estimate line (index/estimate.py, ``resedis index``), and ``resedis models``' columns."""

from __future__ import annotations

import json

import pytest

from resedis.bench.indexing import _config, image_flops as counted_flops, measured_rates
from resedis.cli import main as cli_main
from resedis.demo import demo_model_dir
from resedis.index.estimate import IndexEstimate, format_duration
from resedis.models.cost import DEFAULT_ARCHITECTURES, architecture_from_config, checkpoint_gflops, image_flops


@pytest.mark.parametrize("family", sorted(DEFAULT_ARCHITECTURES))
def test_default_cost_equals_flop_counter(family):
    """The analytic count of the default architecture equals FlopCounterMode on the meta
    device over the writer's module calls, and the table equals the transformers config."""
    arch = DEFAULT_ARCHITECTURES[family]
    config = _config(family, arch["image_size"])
    assert architecture_from_config(config.to_dict()) == arch
    assert image_flops(family, arch) == counted_flops(family, arch["image_size"])


@pytest.mark.parametrize("family", ["owlv2", "owlvit", "clip", "demo"])
def test_checkpoint_cost_equals_flop_counter(family, tiny_models):
    import transformers as tf

    fam, path = ("owlv2", demo_model_dir()) if family == "demo" else (family, tiny_models[family])
    raw = json.loads((path / "config.json").read_text())
    config = {"owlv2": tf.Owlv2Config, "owlvit": tf.OwlViTConfig, "clip": tf.CLIPConfig}[fam].from_dict(raw)
    expected = counted_flops(fam, architecture_from_config(raw)["image_size"], config=config)
    assert checkpoint_gflops(fam, path) * 1e9 == pytest.approx(expected, rel=1e-12)


def test_estimate_line_arithmetic_and_cpu_hint():
    est = IndexEstimate(1000, "owlv2:google/owlv2-base-patch16-ensemble", "cpu", gflops=1113.8, warmup_images=8)
    est.started = 0.0
    assert est.observe(4, now=10.0) is None  # before the warm-up is done
    line = est.observe(8, now=16.0)  # 8 images in 16 s: 0.5 img/s -> 2000 s in all
    assert line is not None and "1000 images" in line and "on cpu" in line
    assert "≈ 33.3 min in all" in line and "0.5 img/s" in line and "2.00 s/img, 1113.8 GFLOP/img" in line
    assert "--model owlvit" in line
    assert est.observe(16, now=30.0) is None  # once
    gpu = IndexEstimate(1000, "owlv2:x", "cuda:0", warmup_images=8)
    gpu.started = 0.0
    assert "--model owlvit" not in gpu.observe(8, now=16.0)
    assert [format_duration(s) for s in (42, 210, 7560, 3 * 86400)] == ["42 s", "3.5 min", "2.1 h", "3.0 days"]


def test_index_cli_prints_the_estimate(tiny_models, synth_small, tmp_path, caplog):
    import logging
    import shutil

    images = tmp_path / "imgs"
    images.mkdir()
    for p in sorted((synth_small / "images").iterdir())[:6]:
        shutil.copy(p, images / p.name)
    with caplog.at_level(logging.INFO, logger="resedis.index"):
        assert cli_main(["index", str(images), "--db", str(tmp_path / "db"), "--model", f"owlv2:{tiny_models['owlv2']}",
                         "--batch-size", "2", "--quiet"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("estimate:")]
    assert len(lines) == 1
    assert "6 images with owlv2:" in lines[0] and "measured on the first 2 images" in lines[0]
    assert (tmp_path / "db" / "regions.sidecar").is_file()  # resedis index leaves the one-off search its sidecar


def test_models_shows_cost_and_bench_rates(tmp_path, capsys):
    report = {"schema": "resedis-bench/1", "machine": {"threads": 1}, "indexing": [
        {"model": "owlv2-b16-960", "family": "owlv2", "image_size": 960, "batch_size": 1, "images_per_s": 0.055},
        {"model": "owlv2-b16-960", "family": "owlv2", "image_size": 960, "batch_size": 2, "images_per_s": 0.06},
        {"model": "owlvit-b32-768", "family": "owlvit", "image_size": 384, "batch_size": 1, "images_per_s": 3.0},
    ]}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(report))
    rates = measured_rates(report)
    assert rates["owlv2"]["images_per_s"] == 0.06 and rates["owlv2"]["batch_size"] == 2
    assert "owlvit" not in rates  # timed at another image size than the default weights'
    assert cli_main(["models", "--json", "--bench", str(path)]) == 0
    records = {r["family"]: r for r in map(json.loads, capsys.readouterr().out.splitlines()) if "alias" not in r}
    assert records["owlv2"]["gflops_per_image"] == 1113.8 and records["owlv2"]["bench_images_per_s"] == 0.06
    assert records["owlvit"]["gflops_per_image"] == 114.8 and records["owlvit"]["bench_images_per_s"] is None
    assert records["sam"]["gflops_per_image"] is None
    assert cli_main(["models", "--bench", str(tmp_path / "missing.json")]) == 2
    assert "resedis bench --quick" in capsys.readouterr().err
