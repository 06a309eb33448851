"""What people ask every runner to honour: pauses and cancellations, read from the store.

A runner reads the control rows written after the last one it saw (at most
every :attr:`Control.EVERY` seconds, one small indexed query), so a pause or
a cancel made from another process reaches it before its next claims.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..store.control import ALL, paused
from ..store.records import CANCEL

if TYPE_CHECKING:
    from ..pipeline import Pipeline
    from ..store.base import StateStore
    from .lease import Lease


class Control:
    """The pauses in force and the cancellations not yet acted on, for one runner."""

    EVERY = 0.1  # seconds between reads of the control rows

    def __init__(self, pipeline: Pipeline, store: StateStore, lease: Lease) -> None:
        self.pipeline = pipeline
        self.store = store
        self.lease = lease
        self.since = 0
        self.paused: frozenset[str] = frozenset()
        self._next = 0.0
        self._read_once = False
        self._stages: Sequence[str] | None = None

    def refresh(self, *, force: bool = False) -> set[str]:
        """Read what is new (if due); returns the items cancelled since the last read."""
        now = time.monotonic()
        if not force and now < self._next:
            return set()
        self._next = now + self.EVERY
        rows = self.lease.call(self.store.control, self.pipeline, self.since)
        first, self._read_once = not self._read_once, True
        if not rows:
            return set()
        self.since = rows[-1].id
        self.paused = paused(rows, self.paused)
        if ALL in self.paused:
            self._stages = ()
        elif self.paused:
            self._stages = [s for s in self.pipeline.order if s not in self.paused]
        else:
            self._stages = None
        if first:  # cancelled before this run started: nothing of theirs is in hand
            return set()
        return {r.target for r in rows if r.kind == CANCEL}

    @property
    def stages(self) -> Sequence[str] | None:
        """The stages that may be claimed (None: all of them)."""
        return self._stages


__all__ = ["Control"]
