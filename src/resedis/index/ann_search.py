"""The Searcher's ANN path: each query's ANN candidates (:func:`resedis.index.ann.ann_candidates`,
re-scored exactly) placed at their rows of the Searcher's corpus, filters honoured, and the
vector index prewarmed into LanceDB's cache when it is first found."""

from __future__ import annotations

import numpy as np

from resedis.ann_projection import AnnProjection
from resedis.index.ann import AnnConfig, ann_candidates, prewarm_ann_index, vector_index
from resedis.index.columns import index_projection


class AnnSearch:
    """The Searcher's ANN path: exact logits for each query's ANN candidates, placed at
    their rows of the Searcher's corpus (``resedis.search_corpus.Corpus``).

    :meth:`candidates` (and its dense form :meth:`logits`) returns None when the regions
    table has no vector index (the caller then runs exact search). Candidates are matched to corpus rows by ``(image_id,
    region)`` — an image's regions are stored contiguously in rank order — and checked
    by their box; their logits are computed from the rows LanceDB returned (the exact
    path's arithmetic on the same stored values, up to float round-off), so the corpus's
    region matrix is never loaded. ``queries_answered`` counts queries answered through
    the index.
    """

    def __init__(self, index, config: AnnConfig | None = None):
        self.index = index
        self.config = config or AnnConfig()
        self.config.validate()
        self.queries_answered = 0
        self._state: tuple | None = None  # (table version, has index)
        self.prewarmed: tuple[str, int] | None = None  # (index uuid, bytes) last loaded into LanceDB's cache
        self._projection: tuple | None = None  # (manifest, its ANN projection)
        self._rows: tuple | None = None  # (corpus, image_id -> row, first region row per image)

    def projection(self) -> AnnProjection | None:
        """The index's ANN projection (compact storage; None for float storage), parsed once per manifest."""
        manifest = self.index.manifest
        if self._projection is None or self._projection[0] is not manifest:
            self._projection = (manifest, index_projection(self.index))
        return self._projection[1]

    def available(self) -> bool:
        """True when the regions table has a vector index (checked once per table version;
        a new index is prewarmed then, see :attr:`AnnConfig.prewarm_max_bytes`)."""
        table = self.index.regions_table
        version = table.version
        if self._state is None or self._state[0] != version:
            idx = vector_index(table)
            self._state = (version, idx is not None)
            if idx is not None and (self.prewarmed is None or self.prewarmed[0] != idx.index_uuid):
                self.prewarmed = (idx.index_uuid, prewarm_ann_index(table, self.config.prewarm_max_bytes))
        return self._state[1]

    def _lookup(self, corpus):
        if self._rows is None or self._rows[0] is not corpus:
            self._rows = (corpus, {image_id: i for i, image_id in enumerate(corpus.image_ids)}, corpus.first_rows())
        return self._rows[1], self._rows[2]

    def _candidate_rows(self, corpus, cand) -> tuple[np.ndarray, np.ndarray]:
        """Corpus rows of one query's candidates and their logits (uncommitted or moved rows dropped)."""
        image_row, first = self._lookup(corpus)
        img = np.array([image_row.get(i, -1) for i in cand.columns["image_id"]], np.int64)
        rows = np.where(img >= 0, first[np.maximum(img, 0)] + np.asarray(cand.columns["region"], np.int64), -1)
        ok = (img >= 0) & (rows >= 0) & (rows < len(corpus))
        rows_ok = rows[ok]
        same = (corpus.region_image[rows_ok] == img[ok]) & np.all(corpus.boxes[rows_ok] == cand.columns["box"][ok], axis=1)
        return rows_ok[same], cand.logits[ok][same]  # uncommitted (orphan) or moved rows are dropped

    def logits(self, corpus, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray | None:
        """(Q, D) queries -> (N, Q) float32: exact logits on each query's candidate rows
        (:meth:`candidates`), ``-inf`` elsewhere; None when there is no vector index."""
        found = self.candidates(corpus, queries, k, allowed)
        if found is None:
            return None
        out = np.full((len(corpus), len(found)), -np.inf, np.float32)
        for j, (rows, logits) in enumerate(found):
            out[rows, j] = logits
        return out

    def candidates(self, corpus, queries: np.ndarray, k: int,
                   allowed: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """(Q, D) queries -> per query ``(rows, logits)``: its candidate rows of ``corpus``
        (ascending, distinct) and their exact float32 logits; None when there is no vector
        index (or the corpus is empty). Work per query grows with the candidates, not with
        the corpus: nothing of size N is allocated (the Searcher ranks these rows only).

        ``allowed`` (N,) bool, a filter (:mod:`resedis.filters`): only allowed rows are
        candidates, and a query gets as many allowed candidates as an unfiltered one gets
        candidates (``config.candidates_for(k)``). When at most that many rows are allowed,
        they are all scored exactly (no index needed); otherwise the candidate limit is
        widened (doubled) until enough allowed candidates come back or the probed
        partitions hold no more, and a query still short of them is scored exactly over
        every allowed row. So a filter never empties a result that has matches further down.

        The candidates' logits are computed from the rows LanceDB returned (the stored
        vectors, or the codes of a compact index, with the exact path's arithmetic), so
        the corpus's region matrix is not loaded on this path; only a filter's rows scored
        exactly (above) go through ``corpus.row_logits``."""
        if len(corpus) == 0 or not self.available():
            return None
        queries = np.asarray(queries, np.float32)
        found: list = [None] * queries.shape[0]
        table = self.index.regions_table
        total = table.count_rows()
        projection = self.projection()
        need = (self.config.candidates_for(k) if projection is None
                else self.config.compact_candidates_for(k, total, projection.legacy))
        if allowed is not None:
            allowed_rows = np.flatnonzero(allowed)
            if len(allowed_rows) <= need:  # a selective filter: score its rows exactly
                exact = corpus.row_logits(allowed_rows, queries) if len(allowed_rows) else None
                self.queries_answered += queries.shape[0]
                return [(allowed_rows, exact[:, j] if exact is not None else np.zeros(0, np.float32))
                        for j in range(queries.shape[0])]
        limit = need
        todo = list(range(queries.shape[0]))
        while todo:
            answers = ann_candidates(table, queries[todo], k, config=self.config, columns=("image_id", "region", "box"),
                                     limit=limit, projection=projection)
            short = []
            for j, cand in zip(todo, answers):
                rows, logits = self._candidate_rows(corpus, cand)
                if allowed is not None:
                    keep = allowed[rows]
                    rows, logits = rows[keep], logits[keep]
                    if len(rows) < need and len(cand) >= limit and limit < total:
                        short.append(j)  # the index may hold more allowed candidates: widen
                        continue
                    if len(rows) < need:  # the probed partitions hold no more: score the filter exactly
                        rows, logits = allowed_rows, corpus.row_logits(allowed_rows, queries[j : j + 1])[:, 0]
                order = np.argsort(rows, kind="stable")
                found[j] = (rows[order], np.asarray(logits, np.float32)[order])
            todo, limit = short, min(total, 2 * limit)
        self.queries_answered += queries.shape[0]
        return found
