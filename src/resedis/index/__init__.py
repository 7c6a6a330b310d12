"""The region index: a LanceDB directory of per-region augmented vectors and its side tables.

>>> from resedis.index import IndexConfig, build_index, open_index
>>> report = build_index("photos/", "photos.db", config=IndexConfig(batch_size=8))  # doctest: +SKIP
>>> open_index("photos.db").stats()["images"]  # doctest: +SKIP

Modules: ``store`` (the :class:`Index` and its tables), ``manifest`` (what the index is),
``config`` (:class:`IndexConfig`, :class:`IndexReport`), ``plan`` (the incremental rule),
``session`` (one indexing run, shared by every driver), ``writer`` (:func:`build_index`,
the single-process driver), ``prefetch`` (decode-ahead threads), ``commit`` (atomic
batches, repair, compaction), ``side`` (the side-table interface), ``crops`` and
``crop_proposals`` (the crops side table), ``masks`` (the mask cache), ``ann`` (the
vector index), ``fs`` (local and object-store locations).
"""

from resedis.index.config import IndexConfig, IndexReport
from resedis.index.manifest import SCHEMA_VERSION, Manifest
from resedis.index.store import Index, open_index
from resedis.index.writer import build_index

__all__ = ["SCHEMA_VERSION", "Index", "IndexConfig", "IndexReport", "Manifest", "build_index", "open_index"]
