"""Search speed knobs: the float32 region matrix (``matrix_dtype``) and ``--threads``.

* ``matrix_dtype="float32"`` converts a float16 index's matrix once; every float16 is
  exactly a float32 and both modes run the same chunked float32 product, so logits and
  hits must be bit-identical to ``"stored"`` (and the exactness tests of
  ``tests/test_search.py`` cover the default mode against the detector's forward pass).
* ``threads=N`` / ``--threads N`` sets torch's pool (checked with
  ``torch.get_num_threads()`` inside the search path, also from another thread, as the
  service's model thread runs it) and numpy's BLAS when threadpoolctl is installed.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from resedis.cli import main as cli_main
from resedis.errors import ResedisError
from resedis.index import IndexConfig, build_index, open_index
from resedis.search import Searcher
from resedis.search_corpus import load_corpus

QUERIES = ["red circle", "a small blue square on the left", "the largest yellow star"]


@pytest.fixture(scope="module")
def owl(tiny_models):
    from resedis.models import load_model

    return load_model(f"owlv2:{tiny_models['owlv2']}", "cpu")


@pytest.fixture(scope="module")
def index16(tmp_path_factory, owl):
    from resedis.synth import generate

    data = tmp_path_factory.mktemp("synth_threads")
    generate(data, images=4, queries=2, absent=0, seed=5, progress=False)
    db = tmp_path_factory.mktemp("db16")
    build_index(data / "images", db, config=IndexConfig(max_regions=40, vector_dtype="float16"), progress=False, encoder=owl)
    return open_index(db)


@pytest.fixture
def restore_threads():
    """Tests here change process-wide thread settings: put them back afterwards."""
    before = torch.get_num_threads()
    try:
        from threadpoolctl import threadpool_limits

        blas = threadpool_limits(limits=None, user_api="blas")  # snapshot; restore() resets
    except ImportError:
        blas = None
    yield
    torch.set_num_threads(before)
    if blas is not None:
        blas.restore_original_limits()


# ----------------------------------------------------------------------------- matrix


def test_float32_matrix_gives_identical_logits_and_hits(index16, owl):
    q = owl.encode_texts(QUERIES)
    stored, fast = load_corpus(index16, "stored"), load_corpus(index16, "float32")
    assert stored.vectors.dtype == np.float16 and fast.vectors.dtype == np.float16  # lazy: nothing converted yet
    original = fast.vectors.copy()
    l_stored, l_fast = stored.logits(q), fast.logits(q)
    assert fast.vectors.dtype == np.float32 and stored.vectors.dtype == np.float16
    assert np.array_equal(fast.vectors, original.astype(np.float32))  # exact conversion
    assert np.array_equal(l_stored, l_fast)  # bit-identical, not just close
    # Independent reference: float64 product of the stored float16 values.
    ref = original.astype(np.float64) @ np.asarray(q, np.float64).T
    assert np.allclose(l_fast, ref, rtol=1e-5, atol=1e-5)
    converted = fast.vectors
    fast.logits(q)
    assert fast.vectors is converted  # converted once, not per query

    a = Searcher(index16, encoder=owl, matrix_dtype="stored", use_ann=False).search_many(QUERIES, top_k=15)
    b = Searcher(index16, encoder=owl, matrix_dtype="float32", use_ann=False).search_many(QUERIES, top_k=15)
    for ra, rb in zip(a, b):
        assert 0 < len(ra.hits) <= 15  # fewer when the tiny model's other boxes have no visible area
        assert [(h.image_id, h.box, h.score, h.present) for h in ra.hits] == [
            (h.image_id, h.box, h.score, h.present) for h in rb.hits
        ]


def test_matrix_dtype_validation(index16, owl):
    with pytest.raises(ResedisError, match="matrix_dtype must be one of float32, stored"):
        Searcher(index16, encoder=owl, matrix_dtype="float16")
    with pytest.raises(ResedisError, match="matrix_dtype"):
        load_corpus(index16, "half")


# ----------------------------------------------------------------------------- threads


def _spy_threads(monkeypatch) -> list[int]:
    """Record torch.get_num_threads() each time a Searcher encodes a query."""
    seen: list[int] = []
    original = Searcher.encode

    def encode(self, texts):
        seen.append(torch.get_num_threads())
        return original(self, texts)

    monkeypatch.setattr(Searcher, "encode", encode)
    return seen


def test_searcher_threads_take_effect_in_the_search_path(index16, owl, monkeypatch, restore_threads):
    seen = _spy_threads(monkeypatch)
    torch.set_num_threads(2)
    searcher = Searcher(index16, encoder=owl, threads=1)
    assert searcher.threads == 1
    searcher.search("red circle", top_k=3)
    # The service runs searches on its own model thread: the setting is process-wide.
    worker = threading.Thread(target=searcher.search, args=("blue square",), kwargs={"top_k": 3})
    worker.start()
    worker.join()
    assert seen == [1, 1]
    from resedis.threads import blas_threads

    if blas_threads() is not None:  # threadpoolctl installed: numpy's BLAS bounded as well
        assert blas_threads() == 1
    torch.set_num_threads(2)
    Searcher(index16, encoder=owl).search("red circle", top_k=3)  # threads=None: left alone
    assert seen[-1] == 2


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True])
def test_searcher_rejects_bad_threads(index16, owl, bad):
    with pytest.raises(ResedisError, match="threads must be an integer >= 1"):
        Searcher(index16, encoder=owl, threads=bad)


def test_cli_search_threads(index16, monkeypatch, capsys, restore_threads):
    seen = _spy_threads(monkeypatch)
    torch.set_num_threads(2)
    db = str(index16.path)
    assert cli_main(["search", "red circle", "--db", db, "--top-k", "2", "--json", "--device", "cpu", "--threads", "1"]) == 0
    assert seen == [1]
    assert len([json.loads(line) for line in capsys.readouterr().out.splitlines()]) == 2
    for bad, message in (("0", "must be >= 1, got 0"), ("-1", "must be >= 1, got -1"), ("two", "expected an integer")):
        with pytest.raises(SystemExit) as exc:
            cli_main(["search", "red", "--db", db, "--threads", bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "--threads" in err and message in err


def test_cli_serve_threads(index16, monkeypatch, capsys, restore_threads):
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    started: list[int] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(torch.get_num_threads()))
    torch.set_num_threads(2)
    assert cli_main(["serve", "--db", str(index16.path), "--device", "cpu", "--threads", "1", "--port", "8765"]) == 0
    assert started == [1]
    with pytest.raises(SystemExit) as exc:
        cli_main(["serve", "--db", str(index16.path), "--threads", "0"])
    assert exc.value.code == 2 and "must be >= 1, got 0" in capsys.readouterr().err
    from resedis.server import ServeConfig, create_app

    with pytest.raises(ResedisError, match="threads must be an integer >= 1"):
        ServeConfig(db=Path(index16.path), threads=0)
    # the Python API applies it too, not only the command
    torch.set_num_threads(2)
    create_app(ServeConfig(db=Path(index16.path), device="cpu", threads=1))
    assert torch.get_num_threads() == 1


def test_bench_exact_modes_agree_with_a_reference():
    """bench.query times both matrix modes; both must return the reference top-k."""
    from resedis.bench.query import exact_search_times

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(3000, 33)).astype(np.float16)
    queries = rng.normal(size=(4, 33)).astype(np.float32)
    ref = np.argsort(-(vectors.astype(np.float64) @ queries.T.astype(np.float64)), axis=0, kind="stable")[:10].T
    t16, top16, c16 = exact_search_times(vectors, queries, 10, "stored")
    t32, top32, c32 = exact_search_times(vectors, queries, 10, "float32")
    assert len(t16) == len(t32) == 4 and c16 < 1.0 and c32 >= 0
    assert np.array_equal(top16, top32) and np.array_equal(top32, ref)
    assert vectors.dtype == np.float16  # the caller's array is not converted in place
