"""Honest timing for the benchmarks: every thread pool limited to one thread after every library is imported,
interleaved A/B repeats reported as min and median, the machine's load printed with the numbers."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch
from threadpoolctl import threadpool_info, threadpool_limits

_LIMITS: list = []


def limit_threads() -> None:
    """One thread for torch and for every BLAS / OpenMP pool loaded so far; call it after the last import (of
    scikit-learn, scipy, hmmlearn...), then print the pools so the run shows they were limited."""
    torch.set_num_threads(1)
    _LIMITS.append(threadpool_limits(1))  # kept alive for the whole run
    pools = ", ".join(f"{p['internal_api']}({os.path.basename(p['filepath'])})={p['num_threads']}"
                      for p in threadpool_info())
    print(f"threads: torch={torch.get_num_threads()}; pools: {pools or 'none'}")


def load() -> str:
    """The 1, 5 and 15 minute load averages, to print beside the numbers."""
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, dict], dict[str, object]]:
    """Time each function ``repeats`` times, alternating between them (A B A B ...), so that a change of the
    machine's load hits every side alike. Returns ``{name: {"min", "median"}}`` in seconds and each one's last
    output."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    out: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {n: {"min": min(t), "median": statistics.median(t)} for n, t in times.items()}, out
