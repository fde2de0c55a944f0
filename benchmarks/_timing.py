"""Timing shared by the benchmarks: qlearn and its reference are timed the same way, in one run."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from qlearn.roofline import call_seconds


def time_call(fn: Callable[[], object], repeat: int = 15, *, stat: str = "min") -> float:
    """Seconds per call of ``fn``, after one warm-up call: the fastest (``stat="min"``, the least
    noisy figure on a shared machine) or the median of ``repeat`` calls."""
    times = call_seconds(fn, repeat, warmup=1)
    return min(times) if stat == "min" else statistics.median(times)
