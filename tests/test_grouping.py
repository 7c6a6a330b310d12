"""Results by image (:func:`resedis.query.group_by_image`): one group per image, images in
the order of their best hit, every hit exactly once, score = the best, present = any."""

from __future__ import annotations

import numpy as np
import pytest

from resedis.query import group_by_image
from resedis.types import Hit


def _hits(seed: int) -> list[Hit]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    scores = np.sort(rng.uniform(0, 1, n))[::-1]
    return [Hit(image_id=f"img{int(rng.integers(0, 6))}.png", box=(float(i), 0.0, float(i) + 5, 5.0), score=float(s),
                present=bool(s >= 0.5), path=None) for i, s in enumerate(scores)]


@pytest.mark.parametrize("seed", range(8))
def test_group_by_image(seed):
    hits = _hits(seed)
    groups = group_by_image(hits)
    # images in order of first (best-ranked) appearance, each once
    first_seen = list(dict.fromkeys(h.image_id for h in hits))
    assert [g.image_id for g in groups] == first_seen
    # every hit once, in ranking order within its image
    assert sorted(id(h) for g in groups for h in g.hits) == sorted(id(h) for h in hits)
    for g in groups:
        assert all(h.image_id == g.image_id for h in g.hits)
        assert [hits.index(h) for h in g.hits] == sorted(hits.index(h) for h in g.hits)
        assert g.score == max(h.score for h in g.hits) == g.hits[0].score
        assert g.present == any(h.present for h in g.hits)
        data = g.to_json()
        assert data["image_id"] == g.image_id and len(data["hits"]) == len(g.hits)
    assert [g.score for g in groups] == sorted((g.score for g in groups), reverse=True)


def test_group_by_image_of_nothing():
    assert group_by_image([]) == []
