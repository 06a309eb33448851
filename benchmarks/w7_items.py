"""W7 large items: how much memory a run holds for items of 100 KB, and what they cost.

Runs inside a fresh child process (``_child.py``). The W1 pipeline (5 no-op
stages in a line) over N items ``{"id": i, "blob": "<size> characters"}``;
``size=0`` gives the small items of W1 (``{"id": i}``), the baseline of the
throughput ratio, measured by the same code in the same suite run.

The items are made and submitted a batch at a time, so the child never holds
the whole payload itself: what the run adds to the process's memory is what
treadle keeps. ``rss_before_run_kb`` is the resident set just before
``run()``, ``peak_rss_kb`` (added by ``_child.py``) the peak of the process
when it ends; their difference is the run's peak growth (an upper bound: a
peak reached while submitting would count too, and the batches keep that
small).
"""

from __future__ import annotations

import os
from typing import Any

from treadle import Runner, open_store

from .measure import peak_rss_kb, timed
from .workloads import STAGES, _check_all, linear_pipeline

#: Items submitted per transaction (at 100 KB each: 5 MB of JSON).
BATCH = 50


def rss_kb() -> int:
    """The resident set of this process now, in KiB (Linux; the peak elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
    except OSError:
        return peak_rss_kb()
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def _batch(start: int, stop: int, size: int) -> list[dict[str, Any]]:
    if size == 0:
        return [{"id": i} for i in range(start, stop)]
    return [{"id": i, "blob": chr(ord("a") + i % 26) * size} for i in range(start, stop)]


def w7_large(spec: dict[str, Any]) -> dict[str, Any]:
    """Submit N items of ``size`` bytes (in batches), run them through the 5 stages."""
    n, size, workers = int(spec["n"]), int(spec["size"]), int(spec["workers"])
    store = open_store(spec["url"])
    runner = Runner(linear_pipeline(), store, workers=workers)
    base_rss = peak_rss_kb()

    def submit() -> None:
        for start in range(0, n, BATCH):
            runner.submit(*_batch(start, min(n, start + BATCH), size))

    submit_s, _ = timed(submit)
    before_run = rss_kb()
    run_s, report = timed(runner.run)
    transitions = n * len(STAGES)
    if report.completed != transitions:
        raise AssertionError(f"run completed {report.completed} stages, expected {transitions}")
    _check_all(runner, "completed", n)
    cache = getattr(store, "item_cache", None)
    store.close()
    return {
        "n": n, "size": size, "workers": workers, "transitions": transitions,
        "payload_bytes": n * size, "submit_s": submit_s, "run_s": run_s,
        "base_rss_kb": base_rss, "rss_before_run_kb": before_run,
        "item_cache_limit": getattr(cache, "limit", None),
    }
