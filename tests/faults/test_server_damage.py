"""The HTTP service never answers with a damaged row or invalid JSON, and says "damaged"
(503, naming verify and repair) when the index cannot be read."""

from __future__ import annotations

import json

import lancedb
import numpy as np
import pytest

import faultkit


@pytest.fixture
def client_for():
    from fastapi.testclient import TestClient

    from resedis.server import ServeConfig, create_app
    from resedis.server.engine import SearchService

    services = []

    def make(db):
        service = SearchService(db)
        services.append(service)
        return TestClient(create_app(ServeConfig(db=db), service=service), base_url="http://127.0.0.1:8000")

    yield make
    for service in services:
        service.close()


def strict_json(response):
    return json.loads(response.text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def hit_ids(body) -> set:
    return {h["image_id"] for h in body["hits"]}


def test_rotten_rows_never_reach_the_api(db, client_for):
    client = client_for(db)
    first = strict_json(client.get("/api/search", params={"q": "red circle", "top_k": 100}))
    victim = sorted(hit_ids(first))[0]
    rows = lancedb.connect(str(db)).open_table("regions").search().where(f"image_id = '{victim}'").limit(None).to_arrow()
    for stored in rows["vector"].to_pylist():
        old = np.asarray(stored, np.float16)
        assert faultkit.overwrite_bytes(db, "regions", old.tobytes(), np.full(len(old), np.nan, np.float16).tobytes())
    fresh = client_for(db)  # a server started on the rotten index
    answer = fresh.get("/api/search", params={"q": "blue square", "top_k": 100})
    assert answer.status_code == 200
    body = strict_json(answer)
    assert victim not in hit_ids(body) and body["hits"]
    assert all(0.0 <= h["score"] <= 1.0 for h in body["hits"])


def test_undecodable_rows_are_a_503_naming_repair(db, client_for):
    (path,) = faultkit.data_files(db, "regions")
    faultkit.truncate(path, 0.5)
    answer = client_for(db).get("/api/search", params={"q": "red circle"})
    assert answer.status_code == 503
    detail = strict_json(answer)["detail"]
    assert "damaged" in detail and "resedis repair" in detail
