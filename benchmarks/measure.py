"""Small measuring helpers shared by the child processes (no treadle import)."""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def peak_rss_kb() -> int:
    """Peak resident set size of this process so far, in KiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(peak // 1024) if sys.platform == "darwin" else int(peak)


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, value)`` of one call."""
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def repeat(fn: Callable[[], Any], n: int) -> dict[str, float]:
    """Call ``fn`` ``n`` times: first (cold) call, median and min, in seconds."""
    times = [timed(fn)[0] for _ in range(n)]
    return {"first_s": times[0], "median_s": statistics.median(times), "min_s": min(times)}


def write_result(path: str, result: dict[str, Any]) -> None:
    """Write a child's result atomically, so the parent never reads half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    os.replace(tmp, path)
