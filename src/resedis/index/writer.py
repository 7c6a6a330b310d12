"""Build or update an index in this process: discover -> decode + preprocess (threads) -> encode -> commit.

:func:`build_index` drives one :class:`resedis.index.session.IndexingSession` (which
decides what to do per file — new, changed, unchanged, known bad, gone — and commits one
batch at a time, atomic per batch and resumable after a kill), feeding it images decoded
ahead on threads by :mod:`resedis.index.prefetch`. :func:`resedis.distributed.index_with_ray`
drives the same session with images encoded on a Ray actor pool.
"""

from __future__ import annotations

import os

from resedis.index.config import IndexConfig, IndexReport
from resedis.index.prefetch import prefetch, preprocessor
from resedis.index.session import IndexingSession, open_side_tables
from resedis.io.images import pixel_limit


def build_index(
    images_dir: str | os.PathLike,
    db: str | os.PathLike,
    *,
    config: IndexConfig | None = None,
    progress: bool = True,
    encoder=None,
    storage_options: dict[str, str] | None = None,
) -> IndexReport:
    """Index every image under ``images_dir`` into the LanceDB directory ``db``: a local
    path or an object-store URI (``s3://bucket/prefix``, ``gs://``, ``az://``, ``file://``;
    credentials/endpoint from the environment and ``storage_options``, see
    :mod:`resedis.index.fs`). The image folder itself is always local.

    Incremental: files whose path, size and mtime (or, when those changed, sha256) match
    the index are left alone; changed files are re-encoded and replace their old rows;
    with ``config.prune`` entries of files no longer present are removed. Files recorded
    as skipped are retried only when their size or mtime changed. Image ids are POSIX
    paths relative to ``images_dir``. Bad files never abort the run: they are recorded
    (``Index.skipped()``) with a reason.

    ``encoder`` (optional): an already loaded RegionEncoder to use instead of loading
    ``config.model``; its ``spec`` must match the index's model.
    """
    from tqdm.auto import tqdm

    config = config or IndexConfig()
    session = IndexingSession(images_dir, db, config, encoder=encoder, storage_options=storage_options, progress=progress)
    with session, pixel_limit(config.max_pixels):
        backend = session.region_encoder()
        session.start(backend, open_side_tables(session.index, config, config.device))
        tasks = session.tasks
        window = max(2 * config.batch_size, 2 * config.workers)
        with tqdm(total=len(tasks), unit="img", desc="indexing", disable=not (progress and tasks), dynamic_ncols=True) as bar:
            for task, result, prepared in prefetch(tasks, config.max_pixels, config.workers, window, preprocessor(backend)):
                session.add(task, result, prepared=prepared)
                bar.update(1)
        session.end_encoding()
    return session.report
