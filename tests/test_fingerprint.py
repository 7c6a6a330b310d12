"""Weights fingerprints: an index records which weights its vectors came from, and refuses
to be searched or extended with other weights behind the same model spec."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw

from resedis.errors import IndexMismatchError
from resedis.index import IndexConfig, build_index, open_index
from resedis.index.manifest import MANIFEST_NAME
from resedis.models import fingerprint as fp
from resedis.search import Searcher


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _reference(weights_dir: Path, names: list[str], version: str = "resedis-weights-v2") -> str:
    """The documented recipe, written out for small files: content hash of each named file."""
    lines = [version] + [f"{n}\tcontent:{_sha((weights_dir / n).read_bytes())}" for n in sorted(names)]
    return "sha256:" + _sha(("\n".join(lines) + "\n").encode())


def _processor_files(weights_dir: Path) -> list[str]:
    """The processor/tokenizer files the tiny and demo checkpoints hold (written out, not derived from fp)."""
    names = {"preprocessor_config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt"}
    return sorted(p.name for p in weights_dir.iterdir() if p.name in names)


def _bump_one_weight(weights_dir: Path) -> None:
    """Add 0.5 to one element of one tensor of ``model.safetensors`` (everything else unchanged)."""
    from safetensors.torch import load_file, save_file

    path = weights_dir / "model.safetensors"
    tensors = load_file(path)
    name = sorted(tensors)[0]
    flat = tensors[name].view(-1)
    flat[0] += 0.5
    save_file(tensors, path, metadata={"format": "pt"})


def _draw_images(folder: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.new("RGB", (64, 48), tuple(int(v) for v in rng.integers(0, 255, 3)))
        x0, y0 = int(rng.integers(0, 30)), int(rng.integers(0, 20))
        ImageDraw.Draw(img).ellipse([x0, y0, x0 + 25, y0 + 20], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        img.save(folder / f"img{seed}_{i}.png")


@pytest.fixture()
def ckpt(tiny_models, tmp_path) -> Path:
    """A private copy of the tiny OWLv2 checkpoint (tests change its weights)."""
    return Path(shutil.copytree(tiny_models["owlv2"], tmp_path / "owlv2_ckpt"))


@pytest.fixture()
def built(ckpt, tmp_path):
    """(spec, images dir, db) of a 3-image index built with ``ckpt``."""
    spec = f"owlv2:{ckpt}"
    images = tmp_path / "images"
    _draw_images(images, 3, seed=1)
    db = tmp_path / "index.db"
    build_index(images, db, config=IndexConfig(model=spec, max_regions=5, device="cpu"), progress=False)
    return spec, images, db


def test_fingerprint_is_the_documented_recipe_and_memoised(ckpt, monkeypatch):
    fp.clear_cache()
    calls = []
    real = fp._hash_content
    monkeypatch.setattr(fp, "_hash_content", lambda path: calls.append(path.name) or real(path))
    first = fp.weights_fingerprint(ckpt)
    covered = sorted(["config.json", "model.safetensors", *_processor_files(ckpt)])
    assert len(covered) >= 4 and "tokenizer_config.json" in covered
    assert first == _reference(ckpt, covered)
    assert sorted(calls) == covered
    assert fp.weights_fingerprint(ckpt) == first and len(calls) == len(covered)  # memoised: nothing rehashed
    assert fp.spec_fingerprint(f"owlv2:{ckpt}") == first and len(calls) == len(covered)
    assert fp.short_fingerprint(first) == first[len("sha256:"):][:12] and fp.short_fingerprint(None) == "unknown"
    legacy = fp.weights_fingerprint(ckpt, fp.LEGACY_VERSION)  # v1: config.json + weights only
    assert legacy == _reference(ckpt, ["config.json", "model.safetensors"], "resedis-weights-v1") != first
    assert fp.fingerprint_matches(first, ckpt) == (True, first) and fp.fingerprint_matches(legacy, ckpt) == (True, first)

    # Files outside the covered set do not matter; the checkpoint metadata neither.
    (ckpt / "notes.txt").write_text("hello")
    (ckpt / "resedis_checkpoint.json").write_text('{"presence_threshold": 0.5}')
    assert fp.weights_fingerprint(ckpt) == first
    # The processor configuration does (v2); a v1 fingerprint ignores it, as it always did.
    (ckpt / "tokenizer_config.json").write_text((ckpt / "tokenizer_config.json").read_text() + " ")
    changed = fp.weights_fingerprint(ckpt)
    assert changed != first and fp.fingerprint_matches(first, ckpt) == (False, changed)
    assert fp.fingerprint_matches(legacy, ckpt) == (True, changed)
    first = changed
    config = json.loads((ckpt / "config.json").read_text())
    config["resedis_note"] = "changed"
    (ckpt / "config.json").write_text(json.dumps(config))
    assert fp.weights_fingerprint(ckpt) != first


def test_one_changed_weight_changes_the_fingerprint(ckpt, tmp_path):
    before = fp.weights_fingerprint(ckpt)
    same = Path(shutil.copytree(ckpt, tmp_path / "plain_copy"))  # content hash: a copy is the same weights
    assert fp.weights_fingerprint(same) == before
    _bump_one_weight(ckpt)
    after = fp.weights_fingerprint(ckpt)
    assert after != before and after == _reference(ckpt, ["config.json", "model.safetensors", *_processor_files(ckpt)])
    assert fp.weights_fingerprint(same) == before


def test_large_files_outside_and_inside_a_hub_snapshot(tmp_path, monkeypatch):
    monkeypatch.setattr(fp, "CONTENT_HASH_MAX_BYTES", 8)  # every weight file counts as "large"
    monkeypatch.setattr(fp, "END_BYTES", 4)
    fp.clear_cache()
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")  # 2 bytes: content-hashed
    weights = plain / "model.safetensors"
    weights.write_bytes(b"0123456789abcdef")
    st = weights.stat()
    ends = _sha(b"0123" + b"cdef")
    expected = "sha256:" + _sha(
        f"resedis-weights-v2\nconfig.json\tcontent:{_sha(b'{}')}\nmodel.safetensors\t"
        f"stat:size:16:mtime_ns:{st.st_mtime_ns}:ends:{ends}\n".encode()
    )
    assert fp.weights_fingerprint(plain) == expected
    weights.write_bytes(b"0123456789abcdeX")  # last bytes changed
    assert fp.weights_fingerprint(plain) != expected
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = fp.weights_fingerprint(plain)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))  # only the mtime differs
    assert fp.weights_fingerprint(plain) != again

    # A hub cache snapshot: an LFS blob is named by the sha256 of its content.
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    content = b"weights-of-revision-one"
    blob = repo / "blobs" / _sha(content)
    blob.write_bytes(content)
    rev = "a" * 40
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").symlink_to(os.path.relpath(blob, snap))
    hub = fp.weights_fingerprint(snap)
    assert hub == "sha256:" + _sha(
        f"resedis-weights-v2\nconfig.json\tcontent:{_sha(b'{}')}\nmodel.safetensors\tcontent:{_sha(content)}\n".encode()
    )
    # A blob not named by a content hash: revision + size.
    other = repo / "blobs" / "not-a-sha"
    other.write_bytes(content)
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to(os.path.relpath(other, snap))
    assert fp.weights_fingerprint(snap) == "sha256:" + _sha(
        f"resedis-weights-v2\nconfig.json\tcontent:{_sha(b'{}')}\nmodel.safetensors\t"
        f"revision:{rev}:size:{len(content)}\n".encode()
    )


def test_changed_weights_are_refused_by_search_and_index(built, ckpt, tmp_path, capsys):
    from resedis.cli import main

    spec, images, db = built
    recorded = open_index(db).manifest.weights_fingerprint
    assert recorded == fp.weights_fingerprint(ckpt)
    assert len(Searcher(db, device="cpu").search("a red circle", top_k=3).hits) > 0  # same weights: fine

    _bump_one_weight(ckpt)
    new = fp.weights_fingerprint(ckpt)
    with pytest.raises(IndexMismatchError) as err:
        Searcher(db, device="cpu")
    msg = str(err.value)
    for part in (spec, fp.short_fingerprint(recorded), fp.short_fingerprint(new), "--db NEW_DB", str(ckpt)):
        assert part in msg, (part, msg)

    # `resedis search` and `resedis index` (a new image to add) both refuse; nothing is written.
    assert main(["search", "a red circle", "--db", str(db), "--device", "cpu"]) == 2
    assert fp.short_fingerprint(new) in capsys.readouterr().err
    _draw_images(images, 1, seed=2)
    assert main(["index", str(images), "--db", str(db), "--device", "cpu", "--quiet"]) == 2
    err_text = capsys.readouterr().err
    assert "retrained or replaced" in err_text and fp.short_fingerprint(recorded) in err_text
    index = open_index(db)
    assert index.stats()["images"] == 3 and index.manifest.weights_fingerprint == recorded

    # stats shows the recorded fingerprint and that the weights moved on.
    assert main(["stats", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("weights"))
    assert recorded in line and fp.short_fingerprint(new) in line and "rebuild" in line
    assert main(["stats", "--db", str(db), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["weights_fingerprint"] == recorded and data["weights_fingerprint_current"] == new


def test_stats_prints_a_matching_fingerprint(built, capsys):
    from resedis.cli import main

    _, _, db = built
    recorded = open_index(db).manifest.weights_fingerprint
    assert main(["stats", "--db", str(db)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("weights"))
    assert recorded in line and "matches" in line


def test_manifest_without_fingerprint_opens_and_warns_once(built, ckpt, caplog):
    spec, images, db = built
    manifest_path = db / MANIFEST_NAME
    data = json.loads(manifest_path.read_text())
    del data["weights_fingerprint"]
    manifest_path.write_text(json.dumps(data))
    _bump_one_weight(ckpt)  # unknown -> cannot be detected; the index is used as before

    assert open_index(db).manifest.weights_fingerprint is None
    with caplog.at_level(logging.WARNING, logger="resedis.index.manifest"):
        a = Searcher(db, device="cpu")
        Searcher(db, device="cpu", encoder=a.encoder)
        assert len(a.search("a circle", top_k=2).hits) > 0
        _draw_images(images, 1, seed=3)
        report = build_index(images, db, config=IndexConfig(device="cpu"), progress=False, encoder=a.encoder)
    warnings = [r for r in caplog.records if "no weights fingerprint" in r.getMessage()]
    assert len(warnings) == 1 and str(db) in warnings[0].getMessage()
    assert report.added == 1
    assert open_index(db).manifest.weights_fingerprint is None  # never certified after the fact


def test_the_demo_spec_has_a_fingerprint(tmp_path):
    from resedis.demo import demo_model_dir

    weights = demo_model_dir()
    got = fp.spec_fingerprint("demo")
    # the checkpoint metadata (threshold, training record) is not part of it; processor files are.
    assert got == _reference(weights, ["config.json", "model.safetensors", *_processor_files(weights)])
    assert {"processor_config.json", "tokenizer.json"} <= set(_processor_files(weights))

    images, db = tmp_path / "images", tmp_path / "demo.db"
    _draw_images(images, 2, seed=4)
    build_index(images, db, config=IndexConfig(model="demo", max_regions=3, device="cpu"), progress=False)
    manifest = open_index(db).manifest
    assert manifest.model == "demo" and manifest.weights_fingerprint == got


def test_ray_actor_reports_its_weights_and_the_driver_refuses_others(built, ckpt):
    import dataclasses

    from resedis.distributed import RegionEncoderActor, accepted_fingerprints, check_worker_weights

    spec, images, db = built
    manifest = open_index(db).manifest
    actor = RegionEncoderActor(spec, "cpu", manifest.max_regions, manifest.nms_iou, 10**7, None)
    paths = sorted(images.glob("*.png"))
    out = actor(pa.table({"rel": [p.name for p in paths], "path": [str(p) for p in paths]}))
    assert out.column("weights").to_pylist() == [manifest.weights_fingerprint] * len(paths)
    accepted = accepted_fingerprints(manifest)  # computed once by the driver, before any batch
    check_worker_weights(manifest, accepted, out, db)  # same weights: accepted
    # An index recorded before fingerprints covered the processor holds a v1 fingerprint; the
    # workers report v2, which stands for the same weights once the driver matched them.
    legacy = dataclasses.replace(manifest, weights_fingerprint=fp.weights_fingerprint(ckpt, fp.LEGACY_VERSION))
    assert legacy.weights_fingerprint != manifest.weights_fingerprint
    check_worker_weights(legacy, accepted_fingerprints(legacy), out, db)

    _bump_one_weight(ckpt)
    stale = RegionEncoderActor(spec, "cpu", manifest.max_regions, manifest.nms_iou, 10**7, None)
    bad = stale(pa.table({"rel": [paths[0].name], "path": [str(paths[0])]}))
    with pytest.raises(IndexMismatchError, match=fp.short_fingerprint(fp.weights_fingerprint(ckpt))):
        check_worker_weights(manifest, accepted, bad, db)
