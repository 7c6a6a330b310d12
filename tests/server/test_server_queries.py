"""``/api/search`` beyond a phrase: query by example (``like_image_id`` + ``box``), filters
on image metadata and results by image (``group_by=image``) — the same answers as the
library's :class:`resedis.query.QueryEngine`."""

from __future__ import annotations

import pytest

from server_helpers import assert_healthy

from resedis.by_example import ByExample
from resedis.filters import Filters
from resedis.query import QueryRequest


def _hits(body):
    return [(h["image_id"], [round(v, 3) for v in h["box"]], round(h["score"], 6)) for h in body["hits"]]


def _lib(result):
    return [(str(h.image_id), [round(v, 3) for v in h.box], round(h.score, 6)) for h in result.hits]


def test_find_more_like_this_region(client, service):
    first = client.get("/api/search", params={"q": "red circle", "top_k": 5}).json()["hits"][0]
    box = ",".join(f"{v:.2f}" for v in first["box"])
    r = client.get("/api/search", params={"like_image_id": first["image_id"], "box": box, "top_k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["pipeline"] == "owl" and body["example"]["source"] == "index"
    assert body["query"].startswith(f"like {first['image_id']} [")
    want = service.engine.run(QueryRequest(like=ByExample(first["image_id"], box=tuple(float(v) for v in box.split(","))),
                                           top_k=10))
    assert _hits(body) == _lib(want.result)
    # the example region finds itself first: no region can score higher for its own embedding
    assert body["hits"][0]["image_id"] == first["image_id"]


def test_filters_and_groups(client, service):
    r = client.get("/api/search", params={"q": "red circle", "top_k": 20, "folder": "nested", "group_by": "image"})
    body = r.json()
    assert r.status_code == 200 and body["hits"]
    assert {h["image_id"] for h in body["hits"]} <= {"nested/deeper/c.jpg", "nested/deeper/d.jpg"}
    want = service.engine.run(QueryRequest("red circle", top_k=20, filters=Filters(folder="nested")))
    assert _hits(body) == _lib(want.result)
    groups = body["groups"]
    assert [g["image_id"] for g in groups] == list(dict.fromkeys(h["image_id"] for h in body["hits"]))
    assert sum(len(g["hits"]) for g in groups) == len(body["hits"])
    assert all(g["score"] == g["hits"][0]["score"] for g in groups)
    assert body["filters"] == "folder nested/"
    r = client.get("/api/search", params=[("q", "red circle"), ("image_id", "a.jpg"), ("image_id", "wide.png")])
    assert {h["image_id"] for h in r.json()["hits"]} == {"a.jpg", "wide.png"}
    r = client.get("/api/search", params={"q": "red circle", "folder": "nowhere"})
    assert r.status_code == 200 and r.json()["hits"] == []
    assert "match none of" in r.json()["notes"][0]


@pytest.mark.parametrize(
    "params, status, needle",
    [
        ({"q": "red", "like_image_id": "a.jpg"}, 400, "exactly one"),
        ({"q": "red", "box": "1,2,3,4"}, 400, "box goes with like_image_id"),
        ({"like_image_id": "a.jpg", "box": "1,2,3"}, 400, "four numbers"),
        ({"like_image_id": "nope.jpg"}, 400, "not in the index"),
        ({"q": "red", "modified_after": "soon"}, 400, "not an ISO date"),
        ({"q": "red", "min_width": 50, "max_width": 10}, 400, "larger than max_width"),
        ({"q": "red", "min_width": -1}, 422, "min_width"),
        ({"q": "red", "group_by": "folder"}, 422, "group_by"),
        ({"q": "red", "folder": "x", "pipeline": "clip-crops"}, 400, "does not support filters"),
    ],
)
def test_bad_requests(client, params, status, needle):
    r = client.get("/api/search", params=params)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]
    assert_healthy(client)
