"""resedis: referring search and discovery over image collections.

The public API mirrors the CLI (see ``resedis.api``)::

    import resedis
    resedis.build_index("photos/", "photos.db")          # resedis index photos/ --db photos.db
    engine = resedis.QueryEngine("photos.db")             # resedis search "a red mug" --db photos.db
    hits = engine.run(resedis.QueryRequest("a red mug")).result.hits

Names are imported lazily so ``import resedis`` stays cheap (no torch, no LanceDB).
"""

from __future__ import annotations

import importlib
from typing import Any

from resedis.version import __version__

_LAZY = {
    "build_index": "resedis.api",
    "open_index": "resedis.api",
    "IndexConfig": "resedis.api",
    "IndexReport": "resedis.api",
    "Index": "resedis.api",
    "QueryEngine": "resedis.api",
    "QueryRequest": "resedis.api",
    "run_query": "resedis.api",
    "Searcher": "resedis.api",
    "search_dataset": "resedis.api",
    "load_dataset": "resedis.io",
    "evaluate_predictions": "resedis.eval",
    "Hit": "resedis.types",
    "QueryResult": "resedis.types",
    "Dataset": "resedis.types",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'resedis' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
