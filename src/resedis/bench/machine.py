"""Machine limits measured in the same run as the benchmark: dense matmul FLOP/s and RSS.

FLOPs follow torch's ``FlopCounterMode`` convention: one multiply-add = 2 FLOPs, so a
``(n, n) @ (n, n)`` product is ``2 n^3`` FLOPs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import resource
import sys
import time
import traceback
from typing import Any, Callable


def matmul_gflops(n: int = 2048, seconds: float = 1.5, dtype: str = "float32") -> dict:
    """Best sustained dense ``(n, n) @ (n, n)`` throughput of torch on the CPU.

    Runs products for about ``seconds`` after one warm-up and reports the best of the
    timed repeats (the machine's attainable peak for this kernel, not an average that
    includes interference from other processes; the median is reported beside it).
    -> ``{"matmul_gflops", "matmul_gflops_median", "n", "dtype", "threads", "repeats"}``.
    """
    import torch

    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dt)
    b = torch.randn(n, n, generator=gen).to(dt)
    c = torch.empty(n, n, dtype=dt)
    torch.mm(a, b, out=c)  # warm-up (thread pool, caches)
    flops = 2.0 * n**3
    rates: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        rates.append(flops / (time.perf_counter() - t0) / 1e9)
        if time.perf_counter() - start >= seconds and len(rates) >= 3:
            break
    rates.sort()
    return {
        "matmul_gflops": round(rates[-1], 2),
        "matmul_gflops_median": round(rates[len(rates) // 2], 2),
        "n": n,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "repeats": len(rates),
    }


def machine_info() -> dict:
    """Static facts about the machine the benchmark ran on."""
    import torch

    info = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            total_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
        info["memory_gb"] = round(total_kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), None)
        if name:
            info["cpu_model"] = name
    except OSError:
        pass
    return info


def process_peak_rss_mb(pid: int | str) -> float | None:
    """Peak resident set size of process ``pid`` (``"self"``: this one) in MiB, from
    ``VmHWM`` of ``/proc/PID/status``; None where that cannot be read (not Linux, gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of THIS process so far, in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status`` (the high-water mark of this address space,
    which starts afresh at exec). ``ru_maxrss`` is not used there because it survives
    fork + exec, so a spawned child would report its parent's peak. Elsewhere:
    ``ru_maxrss`` (KiB on Linux/BSD, bytes on macOS).
    """
    peak = process_peak_rss_mb("self")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _child(fn: Callable, args: tuple, queue) -> None:
    try:
        result = fn(*args)
        queue.put(("ok", result, peak_rss_mb()))
    except BaseException:  # report any failure to the parent instead of hanging it
        queue.put(("error", traceback.format_exc(), peak_rss_mb()))


def run_isolated(fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> tuple[Any, float]:
    """Run ``fn(*args)`` in a fresh (spawned) process -> ``(result, peak RSS MiB of that process)``.

    Peak RSS is a per-process high-water mark, so measuring indexing and search each in
    their own process is the only way to attribute it. ``fn`` must be importable
    (module level) and its result picklable. A failure in the child is re-raised here.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue), daemon=False)
    proc.start()
    try:
        status, payload, rss = queue.get(timeout=timeout)
    except Exception as exc:
        proc.kill()
        proc.join()
        raise RuntimeError(f"isolated run of {getattr(fn, '__name__', fn)} produced no result (exit code {proc.exitcode})") from exc
    proc.join()
    if status != "ok":
        raise RuntimeError(f"isolated run of {getattr(fn, '__name__', fn)} failed:\n{payload}")
    return payload, rss
