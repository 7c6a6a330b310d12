"""The public Python API: the CLI's commands as functions, same names and defaults.

=====================================  ==============================================
CLI                                    Python
=====================================  ==============================================
``resedis index DIR --db DB ...``      ``build_index(DIR, DB, config=IndexConfig(...))``
``resedis search "TEXT" --db DB``      ``QueryEngine(DB).run(QueryRequest("TEXT"))`` (keeps the
                                       models loaded) or ``run_query(DB, QueryRequest("TEXT"))``
``resedis stats --db DB``              ``open_index(DB).stats()``, ``.skipped()``
``resedis eval --dataset D --db DB``   ``QueryEngine(DB).run_dataset(load_dataset(D))``, scored
                                       by ``evaluate_predictions``
(the ``owl`` engine alone)             ``Searcher(DB).search("TEXT")``, ``search_dataset(DB, D)``
=====================================  ==============================================

Example (runs offline on tiny random checkpoints; use a real model spec in practice)::

    from resedis.api import IndexConfig, QueryEngine, QueryRequest, build_index, open_index
    from resedis.synth import generate
    from resedis.testing import make_tiny_checkpoints

    tiny = make_tiny_checkpoints("/tmp/tiny", families=["owlv2"])
    generate("/tmp/shapes", images=20, queries=10, absent=2, seed=0)
    report = build_index("/tmp/shapes/images", "/tmp/shapes.db",
                         config=IndexConfig(model=f"owlv2:{tiny['owlv2']}", batch_size=8))
    print(report.summary())                      # 20 added, 0 updated, ...
    print(open_index("/tmp/shapes.db").stats())  # {'images': 20, 'regions': ..., ...}
    engine = QueryEngine("/tmp/shapes.db")       # loads the text encoder once
    for hit in engine.run(QueryRequest("a small red circle", top_k=5)).result.hits:
        print(hit.to_json())                     # {'image_id', 'box', 'score', 'present', 'mask', 'path'}
"""

from resedis.index import Index, IndexConfig, IndexReport, build_index, open_index
from resedis.pipelines import PipelineConfig
from resedis.query import QueryAnswer, QueryEngine, QueryRequest, run_query
from resedis.search import Searcher, search, search_dataset
from resedis.thresholds import DEFAULT_THRESHOLD

__all__ = [
    "DEFAULT_THRESHOLD",
    "Index",
    "IndexConfig",
    "IndexReport",
    "PipelineConfig",
    "QueryAnswer",
    "QueryEngine",
    "QueryRequest",
    "Searcher",
    "build_index",
    "open_index",
    "run_query",
    "search",
    "search_dataset",
]
