"""Background indexing jobs for ``POST /api/index`` (enabled by ``--allow-index-root``).

One job runs at a time, on its own thread, calling the same
:func:`resedis.index.build_index` as ``resedis index``. The served index is one folder's
index (the manifest records its root), so a job either creates the index (when the
service started on an empty ``--db``) or updates it from the same folder (new, changed
and — with ``prune`` — deleted files). Searches keep running meanwhile: readers see each
committed batch (see :mod:`resedis.index.store`).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from resedis.server.security import RequestRefused

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_JOBS_KEPT = 100


@dataclass
class Job:
    """State of one indexing job, as ``GET /api/jobs/{id}`` reports it.

    ``images_found``: image files discovered in the folder; ``images_indexed``: rows in
    the index's image table (read live while running).
    """

    id: str
    folder: Path
    prune: bool
    state: str = "queued"  # queued -> running -> done | failed
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    images_found: int | None = None
    report: dict | None = None
    error: str | None = None


class JobManager:
    """Starts and tracks indexing jobs for one service."""

    def __init__(self, service, *, model: str | None = None, device: str | None = None):
        self.service = service
        self.model = model
        self.device = device
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def submit(self, folder: Path, *, prune: bool = False) -> Job:
        """Start indexing ``folder`` (already checked to be under an allowed root)."""
        index = self.service.index
        if index is not None and Path(index.manifest.root).resolve() != folder.resolve():
            raise RequestRefused(
                400,
                "this service's index holds the images of another folder (one index per folder); "
                "POST that folder to update it, or serve a separate --db for this one",
            )
        with self._lock:
            if any(j.state in ("queued", "running") for j in self._jobs.values()):
                raise RequestRefused(409, "an indexing job is already running; poll GET /api/jobs/{id}")
            job = Job(id=uuid.uuid4().hex, folder=folder, prune=prune)
            self._jobs[job.id] = job
            while len(self._jobs) > MAX_JOBS_KEPT:
                oldest = next(iter(self._jobs))
                if self._jobs[oldest].state in ("queued", "running"):
                    break
                del self._jobs[oldest]
        thread = threading.Thread(target=self._run, args=(job,), name=f"resedis-index-{job.id[:8]}", daemon=True)
        thread.start()
        return job

    def get(self, job_id: str) -> Job:
        if not _JOB_ID.match(job_id):
            raise RequestRefused(400, "job id must be 32 lowercase hex characters")
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise RequestRefused(404, "unknown job id")
        return job

    def to_json(self, job: Job) -> dict:
        indexed = None
        index = self.service.index
        if index is not None:
            try:
                indexed = index.count("images")
            except Exception:  # table being compacted: report nothing rather than fail the poll
                indexed = None
        return {
            "id": job.id,
            "state": job.state,
            "prune": job.prune,
            "created": job.created,
            "started": job.started,
            "finished": job.finished,
            "images_found": job.images_found,
            "images_indexed": indexed,
            "report": job.report,
            "error": job.error,
        }

    def _run(self, job: Job) -> None:
        from resedis.errors import ResedisError
        from resedis.index import IndexConfig, build_index
        from resedis.io.images import discover_images

        job.state, job.started = "running", time.time()
        try:
            job.images_found = len(discover_images(job.folder, exclude=[self.service.db]))
            model = self.model if self.service.index is None else None
            config = IndexConfig(model=model, device=self.device, prune=job.prune)
            report = build_index(job.folder, self.service.db, config=config, progress=False)
            summary = report.to_json()
            for key in ("db", "root"):
                summary.pop(key, None)  # server paths stay on the server
            summary["skipped"] = len(report.skipped)
            job.report = summary
            if not self.service.ready:
                self.service.open()
            job.state = "done"
        except ResedisError as exc:
            job.error, job.state = str(exc), "failed"
        except Exception as exc:  # a job must end in a state the client can read
            job.error, job.state = f"{type(exc).__name__}: {exc}", "failed"
        finally:
            job.finished = time.time()
