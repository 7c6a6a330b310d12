"""Search latency over HTTP with many concurrent clients (``resedis bench --http-db DB``).

Starts ``resedis serve`` on the index ``DB`` in its own process (loopback, a free port:
:class:`resedis.testing.serve.ServeProcess`), waits until ``/healthz`` says it is ready, then runs two phases against ``/api/search``
with the same list of distinct query texts, so the service's result cache never answers:

* ``single`` — one client, one request at a time: the latency of an idle service;
* ``concurrent`` — ``clients`` threads, each with its own keep-alive connection, released
  together by a barrier, each sending ``requests`` queries back to back.

Reported: p50 / p95 / p99 / max latency per phase, throughput (answered requests per
second of wall time), every status code seen, and the service's peak RSS (``VmHWM`` of its
process). A figure, not a test: the numbers depend on the machine and on what else runs.
"""

from __future__ import annotations

import http.client
import os
import statistics
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import numpy as np

from resedis.bench.machine import process_peak_rss_mb
from resedis.errors import ResedisError
from resedis.synth.queries import random_expression
from resedis.testing.serve import ServeProcess

READY_TIMEOUT_S = 600.0


def grammar_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct expressions of the synthetic benchmark's grammar (what the demo model
    was trained to read), drawn without looking at any corpus."""
    rng = np.random.default_rng(seed)
    texts: dict[str, None] = {}
    for _ in range(200 * n):
        texts.setdefault(random_expression(rng).text(), None)
        if len(texts) == n:
            return list(texts)
    raise ResedisError(f"the grammar gave only {len(texts)} distinct expressions, {n} wanted")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    if not values:
        raise ResedisError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n*q/100), at least 1
    return ordered[int(rank) - 1]


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read()


def _search_path(text: str, top_k: int) -> str:
    return "/api/search?" + urllib.parse.urlencode({"q": text, "top_k": top_k})


def _phase(port: int, texts: list[list[str]], top_k: int) -> dict:
    """One thread per list of texts, released together -> latencies and status codes."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(texts) + 1)

    def client(own: list[str]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        barrier.wait()
        for text in own:
            t0 = time.perf_counter()
            try:
                status, _ = _get(conn, _search_path(text, top_k))
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                continue
            dt = time.perf_counter() - t0
            with lock:
                statuses[status] += 1
                if status == 200:
                    latencies.append(dt)
        conn.close()

    workers = [threading.Thread(target=client, args=(own,), daemon=True) for own in texts]
    for w in workers:
        w.start()
    barrier.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    out = {
        "clients": len(texts),
        "requests": sum(len(t) for t in texts),
        "answered": len(latencies),
        "status_codes": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors[:10],
        "wall_s": round(wall, 3),
        "throughput_per_s": round(len(latencies) / wall, 2) if wall > 0 else None,
    }
    if latencies:
        ms = [x * 1000.0 for x in latencies]
        out.update({f"p{q}_ms": round(percentile(ms, q), 1) for q in (50, 95, 99)})
        out["max_ms"] = round(max(ms), 1)
        out["mean_ms"] = round(statistics.fmean(ms), 1)
    return out


def run_http_bench(db: str | os.PathLike, texts: list[str], *, clients: int = 20, requests: int = 10,
                   top_k: int = 20, threads: int | None = None) -> dict:
    """Serve ``db`` and measure the two phases described in the module docstring.

    ``texts`` must hold at least ``clients * requests + requests`` distinct queries (the
    single-client phase uses the first ``requests``, the concurrent phase the rest), so
    no request is a repeat the result cache could answer.
    """
    if clients < 1 or requests < 1:
        raise ResedisError(f"clients and requests must be >= 1, got {clients} and {requests}")
    distinct = list(dict.fromkeys(texts))
    need = requests * (clients + 1)
    if len(distinct) < need:
        raise ResedisError(f"need {need} distinct query texts for {clients} clients x {requests} requests "
                           f"(+ {requests} single-client), got {len(distinct)}")
    extra = ["--log-level", "warning", *(["--threads", str(threads)] if threads is not None else [])]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        try:
            server = ServeProcess(Path(db), Path(tmp) / "serve.log", *extra, timeout=READY_TIMEOUT_S, ready=True)
        except RuntimeError as exc:  # it exited, or never got ready: its log says why
            raise ResedisError(str(exc)[-2000:]) from None
        ready_s = time.perf_counter() - t0
        try:
            port = server.port
            warm = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            status, body = _get(warm, _search_path("warm-up query", top_k))
            warm.close()
            if status != 200:
                raise ResedisError(f"warm-up search answered {status}: {body[:500]!r}")
            single = _phase(port, [distinct[:requests]], top_k)
            rest = distinct[requests:need]
            concurrent = _phase(port, [rest[i * requests:(i + 1) * requests] for i in range(clients)], top_k)
            rss = process_peak_rss_mb(server.proc.pid)
        finally:
            server.stop()
    return {"db": str(db), "top_k": top_k, "ready_s": round(ready_s, 2), "single": single,
            "concurrent": concurrent, "server_peak_rss_mb": round(rss, 1) if rss is not None else None}


def http_line(r: dict) -> str:
    """One line for the bench table."""
    s, c = r["single"], r["concurrent"]
    return (f"HTTP /api/search: 1 client p50 {s.get('p50_ms')} / p95 {s.get('p95_ms')} ms; "
            f"{c['clients']} clients p50 {c.get('p50_ms')} / p95 {c.get('p95_ms')} ms, "
            f"{c['throughput_per_s']} req/s, {c['answered']}/{c['requests']} answered; "
            f"server peak RSS {r['server_peak_rss_mb']} MiB")


__all__ = ["grammar_texts", "http_line", "percentile", "run_http_bench"]
