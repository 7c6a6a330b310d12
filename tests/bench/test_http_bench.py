"""``resedis bench --http-db``: the load generator's arithmetic (nearest-rank percentiles
against a hand table, distinct grammar queries) and one real run against ``resedis serve``
on the shared tiny-model index: every request answered with 200, counted per phase, and
the latencies ordered p50 <= p95 <= max."""

from __future__ import annotations

import json

import pytest

from resedis.bench.http import grammar_texts, percentile, run_http_bench
from resedis.cli import main as cli_main
from resedis.errors import ResedisError
from resedis.expressions import parse


@pytest.mark.parametrize(
    "values, q, want",
    [
        ([5.0], 50, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),  # rank ceil(4 * 0.5) = 2
        ([1.0, 2.0, 3.0, 4.0], 95, 4.0),  # rank ceil(3.8) = 4
        ([4.0, 1.0, 3.0, 2.0], 25, 1.0),  # unsorted input; rank 1
        (list(map(float, range(1, 21))), 95, 19.0),  # rank 19 of 20
        (list(map(float, range(1, 101))), 99, 99.0),
        ([3.0, 1.0], 0, 1.0),  # rank at least 1
    ],
)
def test_percentile_is_nearest_rank(values, q, want):
    assert percentile(values, q) == want


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ResedisError, match="no values"):
        percentile([], 50)


def test_grammar_texts_are_distinct_parseable_and_seeded():
    texts = grammar_texts(60, seed=3)
    assert len(texts) == 60 == len(set(texts))
    assert texts == grammar_texts(60, seed=3) and texts != grammar_texts(60, seed=4)
    assert any(parse(t).has_cues for t in texts) and any(not parse(t).has_cues for t in texts)


def test_too_few_texts_is_refused_before_any_server_starts(tmp_path):
    with pytest.raises(ResedisError, match=r"need 6 distinct query texts for 2 clients x 2 requests"):
        run_http_bench(tmp_path, ["a", "b", "c", "a", "b", "c"], clients=2, requests=2)


def test_http_bench_against_a_real_server(pipe_env, tmp_path, capsys):
    out = tmp_path / "http.json"
    assert cli_main(["bench", "--http-db", str(pipe_env.db), "--http-clients", "3", "--http-requests", "2",
                     "--out", str(out)]) == 0
    report = json.loads(out.read_text())["http"]
    single, conc = report["single"], report["concurrent"]
    assert (single["clients"], single["requests"], single["answered"]) == (1, 2, 2)
    assert (conc["clients"], conc["requests"], conc["answered"]) == (3, 6, 6)
    assert single["status_codes"] == {"200": 2} and conc["status_codes"] == {"200": 6}
    assert conc["errors"] == []
    for phase in (single, conc):
        assert 0 < phase["p50_ms"] <= phase["p95_ms"] <= phase["max_ms"]
        assert phase["throughput_per_s"] > 0
    assert report["server_peak_rss_mb"] > 50
    assert "3 clients" in capsys.readouterr().out


def test_http_bench_needs_an_index(tmp_path, capsys):
    assert cli_main(["bench", "--http-db", str(tmp_path), "--out", str(tmp_path / "x.json")]) == 2
    assert "not an index (no resedis.json)" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
