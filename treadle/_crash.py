"""Named crash points of the commit protocol, for crash tests.

Set ``TREADLE_CRASH_AT=<point>`` (or ``<point>@N`` for its N-th hit in the
process) and the process ends with ``os._exit(CRASH_EXIT)`` when it reaches
that point: no ``finally`` blocks, no flushing, exactly like ``kill -9``.
Unset (the normal case), a crash point costs one comparison.

The points, in the order a stage's life meets them (docs/durability.md
explains what each one proves):
"""

from __future__ import annotations

import os
import threading

#: Every named point; tests kill at each of them on every SQL store.
CRASH_POINTS: tuple[str, ...] = (
    "after-claim-commit",      # claims committed, nothing handed to the pool yet
    "in-stage",                # inside a pool thread, the stage function about to run
    "before-result-commit",    # results in memory, their commit not begun
    "after-result-commit",     # results committed, nothing reported yet
    "before-signals",          # the signal thread about to deliver a committed batch
    "mid-fanout-start",        # inside the transaction that starts a fan-out
    "mid-review-decision",     # inside the transaction that records a decision
    "mid-rollback",            # a rollback callable ran, its record not committed
    "mid-schema-migration",    # inside the transaction that migrates the schema
)

#: The exit status of a process ended at a crash point.
CRASH_EXIT = 86

_spec = os.environ.get("TREADLE_CRASH_AT") or None
_lock = threading.Lock()
_hits = 0
if _spec is not None:
    _name, _, _nth = _spec.partition("@")
    _target = int(_nth) if _nth else 1
else:
    _name, _target = "", 0


def crash_point(name: str) -> None:
    """End the process here if ``TREADLE_CRASH_AT`` names this point (and hit)."""
    if _spec is None or name != _name:
        return
    global _hits
    with _lock:
        _hits += 1
        if _hits >= _target:
            os._exit(CRASH_EXIT)


__all__ = ["CRASH_EXIT", "CRASH_POINTS", "crash_point"]
