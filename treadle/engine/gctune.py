"""Fewer full cyclic garbage collections while a runner runs.

Every transition allocates a few dozen short-lived containers (results,
claims, rows), and with Python's default thresholds ``(700, 10, 10)`` a full
collection, which walks every tracked object of the process, follows every
100 young ones. The more a run keeps alive (the item cache, its rows), the
longer each walk, so the cost per transition grows with the number of items.

While ``run()`` runs, the thresholds become :data:`THRESHOLDS`: young
collections stay as frequent as Python's (garbage in cycles, such as a
parsed document with parent links that a stage drops, is freed as soon as
usual), and a full collection follows every 1,000 young ones instead of 100.
The thresholds are restored when the last run of the process ends.

A larger young threshold (50,000) was tried and rejected: it made W1 on the
memory store faster still, but a stage leaving 1 MB in a reference cycle per
item then peaked at 2.9 GB instead of 122 MB over 3,000 items.

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
#: The thresholds while a run runs: young collections as usual, full ones 10x rarer.
THRESHOLDS = (700, 10, 100)

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
