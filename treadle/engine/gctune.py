"""Fewer cyclic garbage collections while a runner runs.

Every transition allocates a few dozen short-lived containers (results,
claims, rows), and Python's default thresholds ``(700, 10, 10)`` start a
young collection every 700 of them and a full one, which walks every tracked
object of the process, every 100 young ones. The more items a run keeps
alive (the item cache, the memory store's rows), the longer each walk: the
per-transition cost grows with N (benchmarks/RESULTS.md, "the GC finding").

While ``run()`` runs, the thresholds become :data:`THRESHOLDS`: a young
collection per 50,000 allocations and a full one after 100 older ones,
about every 100 million allocations, a minute or two of a busy run. Garbage
in cycles is still collected, in larger batches; what has no cycle is freed at
once as always (reference counting). The thresholds are restored when the
run ends.

Only Python's defaults are changed: a process that set its own thresholds
(or disabled the collector) keeps them. docs/engine.md, "Garbage collection".
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

#: Python's own thresholds: the only ones a run changes.
DEFAULTS = (700, 10, 10)
#: The thresholds while a run runs.
THRESHOLDS = (50_000, 20, 100)

_lock = threading.Lock()
_runs = 0  # runs in this process holding THRESHOLDS (runners in several threads)


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Hold :data:`THRESHOLDS` while the block runs, if the process uses the defaults."""
    global _runs
    with _lock:
        mine = _runs > 0 or (gc.isenabled() and gc.get_threshold() == DEFAULTS)
        if mine:
            if _runs == 0:
                gc.set_threshold(*THRESHOLDS)
            _runs += 1
    try:
        yield
    finally:
        if mine:
            with _lock:
                _runs -= 1
                # the last run out restores, unless someone changed them meanwhile
                if _runs == 0 and gc.get_threshold() == THRESHOLDS:
                    gc.set_threshold(*DEFAULTS)


__all__ = ["DEFAULTS", "THRESHOLDS", "fewer_collections"]
