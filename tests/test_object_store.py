"""An index on an object store (``s3://bucket/prefix``) behaves as one in a local directory.

A real S3-compatible server runs in-process (moto's ThreadedMotoServer on a free local
port): LanceDB writes the tables there and pyarrow.fs the manifest, over HTTP, exactly
as they would against AWS or MinIO. Uses the tiny random OWLv2 checkpoints.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import time

import numpy as np
import pytest

pytest.importorskip("moto.server", reason="moto[server] (dev extra) is not installed")
boto3 = pytest.importorskip("boto3")

from resedis.errors import ResedisError  # noqa: E402
from resedis.index import IndexConfig, build_index, open_index  # noqa: E402
from resedis.index.fs import as_location  # noqa: E402
from resedis.index.manifest import MANIFEST_NAME, read_manifest, write_manifest  # noqa: E402
from resedis.index.store import IMAGES, REGIONS, column_matrix  # noqa: E402
from resedis.search import Searcher, search_dataset  # noqa: E402

BUCKET = "resedis-test"
QUERIES = ["a red circle", "a small blue square", "the green triangle on the left", "a yellow star"]
N_IMAGES = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server with one bucket -> {endpoint, options (explicit storage options), client}."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per S3 request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    creds = dict(aws_access_key_id="testing", aws_secret_access_key="testing")
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds)
    client.create_bucket(Bucket=BUCKET)
    options = {**creds, "aws_region": "us-east-1", "aws_endpoint": endpoint, "connect_timeout": "2s", "timeout": "20s"}
    yield {"endpoint": endpoint, "options": options, "client": client}
    server.stop()


def _objects(client, prefix: str) -> dict[str, int]:
    """key -> size of every object under ``prefix`` (boto3: an independent reader of the bucket)."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, synth_small):
    """N_IMAGES images of the synthetic corpus plus one broken file (a recorded skip)."""
    folder = tmp_path_factory.mktemp("os_corpus") / "images"
    folder.mkdir()
    for path in sorted((synth_small / "images").iterdir())[:N_IMAGES]:
        shutil.copy(path, folder / path.name)
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


@pytest.fixture(scope="module")
def config(owlv2_spec) -> IndexConfig:
    return IndexConfig(model=owlv2_spec, batch_size=4, max_regions=20, vector_dtype="float32")


@pytest.fixture(scope="module")
def local_index(tmp_path_factory, corpus, config, encoder):
    db = tmp_path_factory.mktemp("os_local") / "local.db"
    build_index(corpus, db, config=config, progress=False, encoder=encoder)
    return open_index(db)


def _regions(index) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    regions = index.read(REGIONS, ["image_id", "region", "box", "vector"])
    vectors = column_matrix(regions["vector"], index.manifest.vector_dim, np.float32)
    boxes = column_matrix(regions["box"], 4, np.float32)
    keys = zip(regions["image_id"].to_pylist(), regions["region"].to_pylist())
    return {k: (boxes[i], vectors[i]) for i, k in enumerate(keys)}


def _assert_same_regions(a, b, atol: float = 0.0) -> None:
    ra, rb = _regions(a), _regions(b)
    assert ra.keys() == rb.keys() and len(ra) > N_IMAGES
    for key, (box, vec) in ra.items():
        np.testing.assert_allclose(rb[key][0], box, atol=atol, rtol=0)
        np.testing.assert_allclose(rb[key][1], vec, atol=atol, rtol=0)


def _assert_same_results(results_a, results_b) -> None:
    assert [r.query_id for r in results_a] == [r.query_id for r in results_b]
    for ra, rb in zip(results_a, results_b):
        assert len(ra.hits) == len(rb.hits) > 0
        assert [h.image_id for h in ra.hits] == [h.image_id for h in rb.hits]
        np.testing.assert_allclose([h.box for h in rb.hits], [h.box for h in ra.hits], atol=1e-4)
        np.testing.assert_allclose([h.score for h in rb.hits], [h.score for h in ra.hits], rtol=1e-6, atol=1e-7)
        assert [h.present for h in ra.hits] == [h.present for h in rb.hits]


def test_s3_index_searches_like_local_resumes_and_round_trips(
    s3, corpus, config, encoder, local_index, synth_small, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # a URI mistaken for a path would show up here as ./s3:/...
    uri = f"s3://{BUCKET}/idx"
    report = build_index(corpus, uri, config=config, progress=False, encoder=encoder, storage_options=s3["options"])
    assert report.db == uri and report.added == N_IMAGES and len(report.skipped) == 1
    assert list(tmp_path.iterdir()) == []

    keys = _objects(s3["client"], "idx/")
    assert f"idx/{MANIFEST_NAME}" in keys
    assert any(k.startswith("idx/regions.lance/") for k in keys) and any(k.startswith("idx/images.lance/") for k in keys)
    assert not any(".tmp" in k or ".lock" in k for k in keys)  # one PUT of the manifest, no lock file

    remote = open_index(uri, storage_options=s3["options"])
    assert str(remote.path) == uri and not remote.location.is_local
    _assert_same_regions(local_index, remote)  # same model, same images: identical vectors

    # Searches: same hits, same scores; search_dataset maps to the dataset's ids the same way.
    _assert_same_results(
        Searcher(local_index, encoder=encoder).search_many(QUERIES, top_k=10),
        Searcher(remote, encoder=encoder).search_many(QUERIES, top_k=10),
    )
    from resedis.io import load_dataset

    dataset = load_dataset(synth_small)
    _assert_same_results(
        search_dataset(Searcher(local_index, encoder=encoder), dataset, top_k=5),
        search_dataset(Searcher(remote, encoder=encoder), dataset, top_k=5),
    )

    # stats: same counts; bytes = what the bucket holds under the prefix, read with boto3.
    stats, local_stats = remote.stats(), local_index.stats()
    for key in ("images", "regions", "skipped", "model", "vector_dim", "vector_dtype", "root", "orphan_regions"):
        assert stats[key] == local_stats[key], key
    assert stats["bytes"] == sum(_objects(s3["client"], "idx/").values()) > 0

    # Incremental: a second run has nothing to do.
    again = build_index(corpus, uri, config=config, progress=False, encoder=encoder, storage_options=s3["options"])
    assert (again.added, again.updated, again.unchanged, again.encoded) == (0, 0, N_IMAGES, 0)

    # Resume: an interrupted batch (regions written, images row not) is repaired and redone.
    victim = sorted(_regions(remote))[0][0]
    remote.images_table.delete(f"image_id = '{victim}'")
    assert open_index(uri, storage_options=s3["options"]).stats()["orphan_regions"] > 0
    resumed = build_index(corpus, uri, config=config, progress=False, encoder=encoder, storage_options=s3["options"])
    assert resumed.added == 1 and resumed.unchanged == N_IMAGES - 1
    remote = open_index(uri, storage_options=s3["options"])
    assert remote.stats()["orphan_regions"] == 0 and remote.stats()["images"] == N_IMAGES
    _assert_same_regions(local_index, remote)

    # Manifest round trip through the store; a Searcher sees the new calibration.
    searcher = Searcher(remote, encoder=encoder)
    searcher.corpus()
    manifest = read_manifest(remote.location)
    for field in ("model", "vector_dim", "vector_dtype", "preprocessing", "root", "max_regions", "nms_iou", "schema_version"):
        assert getattr(manifest, field) == getattr(local_index.manifest, field), field
    manifest.calibration = {"threshold": 0.375}
    write_manifest(remote.location, manifest)
    body = s3["client"].get_object(Bucket=BUCKET, Key=f"idx/{MANIFEST_NAME}")["Body"].read()
    assert json.loads(body)["calibration"] == {"threshold": 0.375}
    assert read_manifest(remote.location).to_json() == manifest.to_json()
    searcher.corpus()
    assert searcher.index.manifest.threshold == 0.375
    result = searcher.search(QUERIES[0], top_k=5)
    assert [h.present for h in result.hits] == [h.score >= 0.375 for h in result.hits]


def test_cli_index_stats_search_eval_on_s3(s3, synth_small, owlv2_spec, encoder, tmp_path, monkeypatch, capsys):
    from resedis.cli import main
    from resedis.io.images import open_rgb

    uri = f"s3://{BUCKET}/cli"
    flags = [x for k, v in s3["options"].items() for x in ("--storage-option", f"{k}={v}")]
    assert main(["index", str(synth_small / "images"), "--db", uri, "--model", owlv2_spec, "--quiet",
                 "--batch-size", "8", "--max-regions", "10", *flags]) == 0
    assert capsys.readouterr().out.startswith(f"{uri}: 24 added")
    assert main(["stats", "--db", uri, "--json", *flags]) == 0
    stats = json.loads(capsys.readouterr().out)
    # up to 10 regions per image: those of positive visible area the encoder keeps (tests/test_zero_area.py)
    nms_iou = read_manifest(as_location(uri, s3["options"])).nms_iou
    kept = sum(len(encoder.encode_images([open_rgb(p)], max_regions=10, nms_iou=nms_iou)[0])
               for p in sorted((synth_small / "images").iterdir()))
    assert stats["images"] == 24 and stats["regions"] == kept - stats["orphan_regions"] and kept <= 24 * 10
    assert stats["bytes"] == sum(_objects(s3["client"], "cli/").values())

    # The same settings from the standard environment instead of --storage-option.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3["endpoint"])
    assert main(["search", "a red circle", "--db", uri, "--json", "--top-k", "3"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = Searcher(open_index(uri)).search("a red circle", top_k=3).hits
    assert [h["image_id"] for h in hits] == [h.image_id for h in expected] and len(hits) == 3
    assert main(["eval", "--dataset", str(synth_small), "--db", uri, "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["queries"] == 30
    from resedis.io import load_dataset, read_predictions

    scored = read_predictions(tmp_path / "m.predictions.jsonl")
    direct = search_dataset(open_index(uri), load_dataset(synth_small), top_k=20)
    assert [r.query_id for r in scored] == [r.query_id for r in direct] and len(scored) == 30
    for a, b in zip(scored, direct):
        assert [(h.image_id, round(h.score, 5)) for h in a.hits] == [(h.image_id, round(h.score, 5)) for h in b.hits]


def test_bad_uris_and_unreachable_endpoints_are_clear_errors(s3, corpus, config, encoder, tmp_path, capsys):
    with pytest.raises(ResedisError, match=rf"s3://{BUCKET}/nothing-here.*not a resedis index"):
        open_index(f"s3://{BUCKET}/nothing-here", storage_options=s3["options"])
    with pytest.raises(ResedisError, match=r"ftp://host/x.*unsupported URI scheme 'ftp'"):
        open_index("ftp://host/x")
    with pytest.raises(ResedisError, match="names no bucket"):
        open_index("s3:///just/a/path")
    with pytest.raises(ResedisError, match="storage options apply to object-store URIs"):
        open_index(tmp_path, storage_options={"aws_region": "us-east-1"})

    # Nothing listens on this port: a quick error naming the URI, not a hang.
    dead = {**s3["options"], "aws_endpoint": f"http://127.0.0.1:{_free_port()}", "client_max_retries": "0"}
    for attempt in (
        lambda: open_index(f"s3://{BUCKET}/idx", storage_options=dead),
        lambda: build_index(corpus, f"s3://{BUCKET}/dead", config=config, progress=False, encoder=encoder, storage_options=dead),
    ):
        started = time.monotonic()
        with pytest.raises(ResedisError, match=rf"s3://{BUCKET}/(idx|dead): could not .*aws_endpoint"):
            attempt()
        assert time.monotonic() - started < 15

    # A bucket that does not exist.
    with pytest.raises(ResedisError, match="s3://no-such-bucket/idx"):
        build_index(corpus, "s3://no-such-bucket/idx", config=config, progress=False, encoder=encoder,
                    storage_options=s3["options"])

    from resedis.cli import main

    for bad in ("novalue", "=x", "aws_region="):
        with pytest.raises(SystemExit) as exc:
            main(["stats", "--db", f"s3://{BUCKET}/idx", "--storage-option", bad])
        assert exc.value.code == 2
        assert "--storage-option" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--db", f"s3://{BUCKET}/idx"])
    assert exc.value.code == 2 and "object-store" in capsys.readouterr().err


def test_location_options_env_aliases_and_schemes(monkeypatch, tmp_path):
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT", "AWS_DEFAULT_REGION", "AWS_ALLOW_HTTP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.local:9000")
    loc = as_location("s3://bucket/some/prefix/", {"region": "us-west-2", "Access_Key_Id": "AK"})
    assert str(loc) == "s3://bucket/some/prefix" and str(loc / "x.lance") == "s3://bucket/some/prefix/x.lance"
    assert loc.options["aws_region"] == "us-west-2"  # explicit beats the environment
    assert loc.options["aws_endpoint"] == "http://minio.local:9000" and loc.options["allow_http"] == "true"
    assert loc.options["aws_access_key_id"] == "AK"

    local = as_location(f"file://{tmp_path}/db")
    assert local.is_local and local.local_path == tmp_path / "db"
    with pytest.raises(ResedisError, match="file:// URI names a path on this machine"):
        as_location("file://otherhost/db")
    with pytest.raises(ResedisError, match="expected a duration"):
        as_location("s3://bucket/p", {"timeout": "soon"})._filesystem()

    from pyarrow import fs as pafs

    az = as_location("az://container/idx", {"azure_storage_account_name": "acct", "azure_storage_account_key": "a2V5"})
    fs, base = az._filesystem()  # constructing it contacts nothing
    assert isinstance(fs, pafs.AzureFileSystem) and base == "container/idx"
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_NAME", raising=False)
    with pytest.raises(ResedisError, match="no Azure storage account"):
        as_location("az://container/idx")._filesystem()


@pytest.fixture(scope="module")
def pipeline_dbs(s3, synth_small, tmp_path_factory, tiny_models):
    """(flags, local index, S3 URI of an index of the same images, SAM spec). The bundled
    demo model (trained on synthetic shapes) so that the metrics compared are not all zero."""
    from resedis.models import load_model

    encoder = load_model("demo", "cpu")
    config = IndexConfig(model="demo", batch_size=24, max_regions=10)
    local = tmp_path_factory.mktemp("os_pipe") / "local.db"
    uri = f"s3://{BUCKET}/pipe"
    build_index(synth_small / "images", local, config=config, progress=False, encoder=encoder)
    build_index(synth_small / "images", uri, config=config, progress=False, encoder=encoder, storage_options=s3["options"])
    flags = [x for k, v in s3["options"].items() for x in ("--storage-option", f"{k}={v}")]
    return flags, local, uri, f"sam:{tiny_models['sam']}"


def _eval_cli(db: str, flags: list[str], dataset, out, *extra: str) -> tuple[dict, list]:
    """``resedis eval --db DB --pipeline owl ...`` -> (metrics JSON without timings, predictions)."""
    from resedis.cli import main
    from resedis.io import read_predictions

    assert main(["eval", "--dataset", str(dataset), "--db", db, "--pipeline", "owl", "--top-k", "5",
                 "--json", str(out), *flags, *extra]) == 0
    metrics = json.loads(out.read_text())
    for key in ("seconds", "query_ms"):
        metrics["calibration"].pop(key)
    metrics["calibration"].get("calibrated_on", {}).pop("fitted", None)  # when calibrate ran (a timestamp)
    return metrics, read_predictions(out.with_name(out.stem + ".predictions.jsonl"))


def _assert_same_predictions(a, b, masks: bool = False) -> None:
    assert [r.query_id for r in a] == [r.query_id for r in b] and any(r.hits for r in a)
    for ra, rb in zip(a, b):
        assert [(h.image_id, h.present) for h in ra.hits] == [(h.image_id, h.present) for h in rb.hits]
        np.testing.assert_allclose([h.score for h in rb.hits], [h.score for h in ra.hits], rtol=1e-6, atol=1e-7)
        if masks:
            assert all(h.mask is not None and h.mask["size"] for h in ra.hits + rb.hits)
            assert [h.mask for h in ra.hits] == [h.mask for h in rb.hits]


def test_eval_pipeline_with_holdout_calibration_on_s3_matches_local(s3, pipeline_dbs, synth_small, tmp_path):
    flags, local, uri, sam = pipeline_dbs
    split = ("--calibration-split", "0.5")
    remote_m, remote_p = _eval_cli(uri, flags, synth_small, tmp_path / "s3.json", *split)
    local_m, local_p = _eval_cli(str(local), [], synth_small, tmp_path / "local.json", *split)
    assert remote_m["calibration"]["mode"] == "holdout" and remote_m["calibration"]["evaluated_queries"] == 15
    assert remote_m == local_m  # every metric, the fitted threshold and the held-out query ids
    assert remote_m["mAP50"] > 0.3 and remote_m["F1"] > 0  # the demo model finds the shapes: not a 0 == 0 check
    _assert_same_predictions(local_p, remote_p)


def test_query_with_masks_on_s3_caches_them_on_the_store(s3, pipeline_dbs):
    from resedis.pipelines import PipelineConfig
    from resedis.query import QueryEngine, QueryRequest

    flags, local, uri, sam = pipeline_dbs
    config, request = PipelineConfig(top_k=3, device="cpu", segmenter=sam), QueryRequest("a red circle", masks=True)
    remote = [QueryEngine(uri, config, storage_options=s3["options"]).run(request).result]
    assert any(k.startswith("pipe/masks.lance/") for k in _objects(s3["client"], "pipe/"))  # the cache, on the store
    _assert_same_predictions([QueryEngine(local, config).run(request).result], remote, masks=True)
    assert len(remote[0].hits) == 3


def test_calibrate_on_s3_stores_the_threshold_and_eval_uses_it(s3, pipeline_dbs, synth_small, tmp_path, capsys):
    from resedis.cli import main

    flags, local, uri, _ = pipeline_dbs
    fitted = {}
    for name, db, opts in (("s3", uri, flags), ("local", str(local), [])):
        assert main(["calibrate", "--dataset", str(synth_small), "--db", db, "--top-k", "5", "--json", *opts]) == 0
        fitted[name] = json.loads(capsys.readouterr().out)
    assert fitted["s3"]["stored"] and fitted["s3"]["threshold"] == fitted["local"]["threshold"]
    # Read back independently of resedis: the manifest object in the bucket holds it.
    body = json.loads(s3["client"].get_object(Bucket=BUCKET, Key=f"pipe/{MANIFEST_NAME}")["Body"].read())
    assert body["calibration"]["owl"]["threshold"] == fitted["s3"]["threshold"]
    assert read_manifest(as_location(uri, s3["options"])).calibration["owl"]["threshold"] == fitted["s3"]["threshold"]

    remote_m, remote_p = _eval_cli(uri, flags, synth_small, tmp_path / "s3.json")
    local_m, local_p = _eval_cli(str(local), [], synth_small, tmp_path / "local.json")
    assert remote_m["calibration"]["source"] == "calibrated" and remote_m["mAP50"] > 0.3
    assert remote_m["calibration"]["threshold"] == fitted["s3"]["threshold"]
    assert remote_m == local_m
    _assert_same_predictions(local_p, remote_p)

    assert main(["calibrate", "--dataset", str(synth_small), "--db", str(local), "--storage-option", "aws_region=x"]) == 2
    assert "storage options apply to object-store URIs" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_index_to_s3_equals_local(s3, corpus, config, local_index):
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
    from resedis.distributed import index_with_ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        uri = f"s3://{BUCKET}/ray"
        report = index_with_ray(corpus, uri, config, num_workers=2, progress=False, storage_options=s3["options"])
        assert report.db == uri and report.added == N_IMAGES and len(report.skipped) == 1
        remote = open_index(uri, storage_options=s3["options"])
        # Different batch composition changes BLAS blocking, not the maths.
        _assert_same_regions(local_index, remote, atol=1e-4)
        again = index_with_ray(corpus, uri, config, num_workers=2, progress=False, storage_options=s3["options"])
        assert again.added == 0 and again.unchanged == N_IMAGES
    finally:
        ray.shutdown()
