"""The interface of a side table: a table the index writer keeps in step with ``images``.

A side table holds per-image rows derived from the same decoded images and regions as
the ``regions`` table (today: crop embeddings, :class:`resedis.index.crops.CropWriter`).
Its rows carry the image's ``batch`` id, so the index's consistency rule covers them: a
row whose ``(image_id, batch)`` has no ``images`` row is an orphan, ignored by readers
and deleted by :meth:`SideTable.repair`. The writer (:class:`resedis.index.session.IndexingSession`)
calls, in order: ``repair`` once, then per committed batch ``delete`` (replaced files) and
``add`` (before the batch's ``images`` rows, the commit point), ``delete`` for pruned
files, and at the end ``backfill`` and ``save_stats``.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from PIL import Image

from resedis.types import ImageRegions


class SideTable(Protocol):
    name: str  # the LanceDB table's name (e.g. "crops")
    seconds: float  # time spent in add() since the last save_stats(): excluded from the region index's cost

    def repair(self) -> int:
        """Delete orphan rows (interrupted batches, replaced files); returns rows deleted."""
        ...

    def add(self, ids: Sequence[str], images: Sequence[Image.Image], regions: Sequence[ImageRegions], batch: int) -> int:
        """Write the rows of one batch's images (decoded, with their regions); returns rows written."""
        ...

    def delete(self, ids: Sequence[str]) -> None:
        """Remove the rows of these image ids (replaced or pruned files)."""
        ...

    def backfill(self, *, progress: bool = True) -> int:
        """Write rows for indexed images that have none (indexed before this table existed)."""
        ...

    def save_stats(self) -> None:
        """Record what adding rows cost in the manifest."""
        ...
