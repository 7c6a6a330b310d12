"""The region index: a LanceDB directory of per-region augmented vectors.

>>> from resedis.index import IndexConfig, build_index, open_index
>>> report = build_index("photos/", "photos.db", config=IndexConfig(batch_size=8))  # doctest: +SKIP
>>> open_index("photos.db").stats()["images"]  # doctest: +SKIP
"""

from resedis.index.manifest import SCHEMA_VERSION, Manifest
from resedis.index.store import Index, open_index
from resedis.index.writer import IndexConfig, IndexReport, build_index

__all__ = ["SCHEMA_VERSION", "Index", "IndexConfig", "IndexReport", "Manifest", "build_index", "open_index"]
