"""The public Python API: the CLI's commands as functions, same names and defaults.

=====================================  ==============================================
CLI                                    Python
=====================================  ==============================================
``resedis index DIR --db DB ...``      ``build_index(DIR, DB, config=IndexConfig(...))``
``resedis search "TEXT" --db DB``      ``Searcher(DB).search("TEXT", top_k=20)`` or
                                       ``search("TEXT", DB)`` (one-off: loads the model)
``resedis stats --db DB``              ``open_index(DB).stats()``, ``.skipped()``
``resedis eval --dataset D --db DB``   ``search_dataset(DB, load_dataset(D))``
=====================================  ==============================================

Example (runs offline on tiny random checkpoints; use a real model spec in practice)::

    from resedis.api import IndexConfig, Searcher, build_index, open_index
    from resedis.synth import generate
    from resedis.testing import make_tiny_checkpoints

    tiny = make_tiny_checkpoints("/tmp/tiny", families=["owlv2"])
    generate("/tmp/shapes", images=20, queries=10, absent=2, seed=0)
    report = build_index("/tmp/shapes/images", "/tmp/shapes.db",
                         config=IndexConfig(model=f"owlv2:{tiny['owlv2']}", batch_size=8))
    print(report.summary())                      # 20 added, 0 updated, ...
    print(open_index("/tmp/shapes.db").stats())  # {'images': 20, 'regions': ..., ...}
    searcher = Searcher("/tmp/shapes.db")        # loads the text encoder once
    for hit in searcher.search("a small red circle", top_k=5).hits:
        print(hit.to_json())                     # {'image_id', 'box', 'score', 'present', 'mask', 'path'}
"""

from resedis.index import Index, IndexConfig, IndexReport, build_index, open_index
from resedis.search import DEFAULT_THRESHOLD, Searcher, search, search_dataset

__all__ = [
    "DEFAULT_THRESHOLD",
    "Index",
    "IndexConfig",
    "IndexReport",
    "Searcher",
    "build_index",
    "open_index",
    "search",
    "search_dataset",
]
