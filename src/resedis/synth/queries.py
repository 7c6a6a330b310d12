"""Choosing the benchmark's queries: sample expressions, evaluate them over the whole
corpus, and select a mix of single-image, multi-image, multi-instance and absent ones.

Non-absent candidates are *anchored*: an object is picked at random and an expression
true of it is built (so it has at least one target); its full target set then comes from
:func:`resedis.synth.grammar.evaluate` over every object of every image. Absent
candidates are drawn from the same grammar with random words and kept only when they
denote nothing. Two selected queries never share an expression text or a meaning
(:attr:`Expression.key`).

Buckets of a non-absent query (disjoint, by its targets): ``multi_instance`` (some image
holds >= 2 targets), else ``multi_image`` (>= 2 target images), else ``single``.
At most ``MAX_QUERIES_PER_TARGET_SET`` queries may denote exactly the same set of
objects (so a small corpus is not flooded with paraphrases). Queries with more than :func:`max_target_images` target images (8, or 5% of the
images for corpora over 160 images) are not used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from resedis.errors import ResedisError
from resedis.synth.grammar import POSITIONS, RELATIONS, SUPERLATIVES, Expression, NounPhrase, ObjectTable, evaluate
from resedis.synth.scene import COLORS, SHAPES, SIZES

MIN_TARGET_IMAGE_CAP = 8
TARGET_IMAGE_CAP_SHARE = 0.05
MULTI_IMAGE_SHARE = 0.2
MULTI_INSTANCE_SHARE = 0.15
BUCKETS = ("single", "multi_image", "multi_instance")
TYPES = ("attribute", "position", "relation")
MAX_QUERIES_PER_TARGET_SET = 2
ATTEMPTS_PER_QUERY = 60
MIN_ATTEMPTS = 3000


@dataclass(frozen=True)
class SelectedQuery:
    """A chosen query: its expression, type and target objects (indices into the table)."""

    expression: Expression
    type: str  # attribute / position / relation / absent
    targets: np.ndarray  # (T,) int, sorted; empty for absent
    bucket: str | None  # None for absent


def max_target_images(n_images: int) -> int:
    """The most target images a query may have: max(8, ceil(5% of the corpus))."""
    return max(MIN_TARGET_IMAGE_CAP, math.ceil(TARGET_IMAGE_CAP_SHARE * n_images))


def quotas(n: int) -> dict[str, int]:
    """How many non-absent queries of each bucket to aim for (single is the majority)."""
    multi_image = max(1, round(MULTI_IMAGE_SHARE * n)) if n >= 3 else 0
    multi_instance = max(1, round(MULTI_INSTANCE_SHARE * n)) if n >= 3 else 0
    return {"single": n - multi_image - multi_instance, "multi_image": multi_image, "multi_instance": multi_instance}


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(0, len(options)))]


def _phrase_for(table: ObjectTable, i: int, rng: np.random.Generator, *, allow_size: bool = True) -> NounPhrase:
    """A noun phrase true of object ``i`` with a random amount of detail."""
    shape, color, size = SHAPES[table.shape[i]], list(COLORS)[table.color[i]], SIZES[table.size[i]]
    u = rng.random()
    if not allow_size:
        return NounPhrase(shape, color if u < 0.75 else None)
    if u < 0.4:
        return NounPhrase(shape, color)
    if u < 0.75:
        return NounPhrase(shape, color, size)
    if u < 0.9:
        return NounPhrase(shape, None, size)
    return NounPhrase(shape)


def _random_phrase(rng: np.random.Generator, *, allow_size: bool = True) -> NounPhrase:
    shape, color, size = _pick(rng, SHAPES), _pick(rng, list(COLORS)), _pick(rng, SIZES)
    u = rng.random()
    if not allow_size:
        return NounPhrase(shape, color if u < 0.75 else None)
    if u < 0.45:
        return NounPhrase(shape, color)
    if u < 0.85:
        return NounPhrase(shape, color, size)
    return NounPhrase(shape, None, size)


def anchored_expression(table: ObjectTable, rng: np.random.Generator) -> Expression | None:
    """An expression true of a randomly chosen object (None when the draw fails)."""
    i = int(rng.integers(0, len(table)))
    form = rng.random()
    if form < 0.3:
        det = "a" if rng.random() < 0.3 else "the"
        return Expression(_phrase_for(table, i, rng), determiner=det)
    if form < 0.6:
        options = [p for p in POSITIONS if table.position_mask(p)[i]]
        return Expression(_phrase_for(table, i, rng), position=_pick(rng, options))
    if form < 0.85:
        pairs = table.pairs
        mine = table.pairs_of(i)
        options = [(r, int(pairs[k, 1])) for k in mine for r in RELATIONS if table.relation_mask(r)[k]]
        if not options:
            return None
        relation, j = _pick(rng, options)
        return Expression(_phrase_for(table, i, rng), relation=relation, ref=_phrase_for(table, j, rng))
    expr = Expression(_phrase_for(table, i, rng, allow_size=False), superlative=_pick(rng, SUPERLATIVES))
    return expr if evaluate(expr, table)[i] else None


def random_expression(rng: np.random.Generator) -> Expression:
    """An expression drawn from the grammar without looking at the corpus."""
    form = rng.random()
    if form < 0.25:
        return Expression(_random_phrase(rng))
    if form < 0.55:
        return Expression(_random_phrase(rng), position=_pick(rng, list(POSITIONS)))
    if form < 0.85:
        return Expression(_random_phrase(rng), relation=_pick(rng, list(RELATIONS)), ref=_random_phrase(rng))
    return Expression(_random_phrase(rng, allow_size=False), superlative=_pick(rng, SUPERLATIVES))


def bucket_of(targets: np.ndarray, table: ObjectTable) -> str:
    images, counts = np.unique(table.image[targets], return_counts=True)
    if counts.max() >= 2:
        return "multi_instance"
    return "multi_image" if len(images) >= 2 else "single"


def select_queries(
    table: ObjectTable, *, queries: int, absent: int, rng: np.random.Generator
) -> tuple[list[SelectedQuery], dict]:
    """Choose ``queries`` queries, ``absent`` of them absent, with distinct texts and meanings.

    Returns the queries (shuffled) and a summary of the mix, including ``shortfalls``:
    buckets that could not reach their quota (their places go to other buckets, single
    first). Raises :class:`ResedisError` if the corpus cannot give enough distinct
    non-absent or absent queries at all.
    """
    n_present = queries - absent
    want = quotas(n_present)
    seen_keys: set[tuple] = set()
    seen_texts: set[str] = set()
    pools: dict[tuple[str, str], list[SelectedQuery]] = {(b, t): [] for b in BUCKETS for t in TYPES}
    per_target_set: dict[bytes, int] = {}
    n_images = len(np.unique(table.image))
    cap = max_target_images(n_images)

    def enough() -> bool:
        return all(sum(len(pools[(b, t)]) for t in TYPES) >= want[b] and
                   min(len(pools[(b, t)]) for t in TYPES) >= -(-want[b] // len(TYPES)) for b in BUCKETS)

    attempts = max(MIN_ATTEMPTS, ATTEMPTS_PER_QUERY * queries)
    for _ in range(attempts):
        if enough():
            break
        expr = anchored_expression(table, rng)
        if expr is None or expr.key in seen_keys or expr.text() in seen_texts:
            continue
        targets = np.flatnonzero(evaluate(expr, table))
        if len(np.unique(table.image[targets])) > cap:
            continue
        signature = targets.tobytes()
        if per_target_set.get(signature, 0) >= MAX_QUERIES_PER_TARGET_SET:
            continue
        per_target_set[signature] = per_target_set.get(signature, 0) + 1
        seen_keys.add(expr.key)
        seen_texts.add(expr.text())
        bucket = bucket_of(targets, table)
        pools[(bucket, expr.type)].append(SelectedQuery(expr, expr.type, targets, bucket))

    chosen: list[SelectedQuery] = []
    shortfalls: dict[str, int] = {}
    leftovers: dict[str, list[SelectedQuery]] = {}
    for bucket in BUCKETS:
        picked, rest = _round_robin([pools[(bucket, t)] for t in TYPES], want[bucket])
        chosen += picked
        leftovers[bucket] = rest
        if len(picked) < want[bucket]:
            shortfalls[bucket] = want[bucket] - len(picked)
    for bucket in BUCKETS:  # fill the places of missing buckets, single first
        need = n_present - len(chosen)
        chosen += leftovers[bucket][:need]
    if len(chosen) < n_present:
        raise ResedisError(
            f"the corpus ({n_images} images, {len(table)} objects) yields only {len(chosen)} distinct "
            f"non-absent queries (at most {cap} target images, at most {MAX_QUERIES_PER_TARGET_SET} queries per "
            f"target set); {n_present} were asked "
            f"for (--queries {queries} minus --absent {absent}). Use more images or fewer queries."
        )

    absent_queries: list[SelectedQuery] = []
    for _ in range(max(MIN_ATTEMPTS, ATTEMPTS_PER_QUERY * max(absent, 1))):
        if len(absent_queries) >= absent:
            break
        expr = random_expression(rng)
        if expr.key in seen_keys or expr.text() in seen_texts or evaluate(expr, table).any():
            continue
        seen_keys.add(expr.key)
        seen_texts.add(expr.text())
        absent_queries.append(SelectedQuery(expr, "absent", np.zeros(0, dtype=np.int64), None))
    if len(absent_queries) < absent:
        raise ResedisError(
            f"found only {len(absent_queries)} distinct absent expressions (satisfied nowhere in "
            f"{n_images} images) but --absent {absent} were asked for; use fewer absent queries"
        )

    out = chosen + absent_queries
    order = rng.permutation(len(out))
    out = [out[k] for k in order]
    summary = {
        "requested": {"queries": queries, "absent": absent, **{f"quota_{b}": want[b] for b in BUCKETS}},
        "buckets": {b: sum(1 for q in out if q.bucket == b) for b in BUCKETS},
        "shortfalls": shortfalls,
        "max_target_images": cap,
    }
    return out, summary


def _round_robin(lists: list[list[SelectedQuery]], n: int) -> tuple[list[SelectedQuery], list[SelectedQuery]]:
    """Take up to ``n`` items alternating between the lists; return (taken, the rest)."""
    taken: list[SelectedQuery] = []
    pos = [0] * len(lists)
    while len(taken) < n and any(p < len(lst) for p, lst in zip(pos, lists)):
        for k, lst in enumerate(lists):
            if len(taken) < n and pos[k] < len(lst):
                taken.append(lst[pos[k]])
                pos[k] += 1
    rest = [item for k, lst in enumerate(lists) for item in lst[pos[k]:]]
    return taken, rest
