"""Bound the CPU threads of a search or serve process (``--threads N``).

A query spends its CPU time in two thread pools: torch's intra-op pool (the text
encoder) and the BLAS library numpy links (the exact matrix product over the region
matrix). Both default to one thread per core, which is right on a dedicated machine and
wrong on a shared one: on a box whose cores are busy with other work, extra threads
wait for each other and small operations get many times slower (see ``docs/benchmarks.md``,
*Threads*). :func:`set_threads` sets both, **process-wide**:

* torch: ``torch.set_num_threads(n)`` (every thread of the process, the service's
  model thread included, uses that pool size);
* numpy's BLAS (OpenBLAS / MKL / BLIS): through ``threadpoolctl`` when it is installed
  (``pip install threadpoolctl``). Without it the BLAS keeps its own default; set
  ``OPENBLAS_NUM_THREADS=N`` (or ``MKL_NUM_THREADS``/``OMP_NUM_THREADS``) in the
  environment before starting the process instead.

LanceDB's ANN probe runs in its own Rust thread pool, which neither setting bounds.

>>> from resedis.threads import set_threads
>>> set_threads(2)                      # doctest: +SKIP
{'torch': 2, 'blas': 2}
"""

from __future__ import annotations

import logging

from resedis.errors import ResedisError

log = logging.getLogger(__name__)


def check_threads(threads: int | None) -> int | None:
    """``threads`` when it is None (library defaults) or an int >= 1, else ResedisError."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ResedisError(f"threads must be an integer >= 1 (or None for the library defaults), got {threads!r}")
    return threads


def set_threads(threads: int | None) -> dict[str, int | None]:
    """Limit torch's and numpy's BLAS CPU thread pools to ``threads`` each, process-wide.

    ``None`` changes nothing (library defaults). Returns what was set:
    ``{"torch": n, "blas": n}``, with ``"blas": None`` when ``threadpoolctl`` is not
    installed (the BLAS then keeps its default; a log line says so).
    """
    threads = check_threads(threads)
    if threads is None:
        return {"torch": None, "blas": None}
    import torch

    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.info(
            "threads=%d applied to torch; numpy's BLAS keeps its default (install threadpoolctl, "
            "or set OPENBLAS_NUM_THREADS=%d before starting the process)", threads, threads,
        )
        return {"torch": threads, "blas": None}
    threadpool_limits(limits=threads, user_api="blas")  # applies now and stays (no restore on GC)
    return {"torch": threads, "blas": threads}


def blas_threads() -> int | None:
    """The largest thread count among the loaded BLAS libraries (None without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [int(info["num_threads"]) for info in threadpool_info() if info.get("user_api") == "blas"]
    return max(counts) if counts else None
