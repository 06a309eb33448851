"""Helpers for testing pipelines and stores.

- :func:`capture_signals` records every treadle signal sent while it is active.
- :class:`StoreConformance` is the conformance suite every ``StateStore``
  passes; subclass it in your own tests with a ``store`` fixture to check a
  store of your own (see tests/test_store_conformance.py). It covers
  claims, guarded results, fan-out, review, gates, rollback, history,
  release and recovery, all through the store protocol.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from . import signals
from ._conformance import StoreConformance


@attrs.frozen
class Event:
    """One captured signal: its name and keyword data."""

    name: str
    data: dict[str, Any]


class SignalRecorder:
    """The list of events captured by :func:`capture_signals`."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def _receiver(self, name: str) -> Any:
        def receive(sender: Any, **data: Any) -> None:
            with self._lock:
                self.events.append(Event(name, data))
        return receive

    def names(self, item_id: str | None = None) -> list[str]:
        """Signal names in order, optionally only those about one item."""
        return [e.name for e in self.events if item_id is None or e.data.get("item_id") == item_id]

    def of(self, name: str) -> list[Event]:
        """Events of one signal, in order."""
        return [e for e in self.events if e.name == name]


@contextmanager
def capture_signals(sender: Any = None) -> Iterator[SignalRecorder]:
    """Record every treadle signal (from ``sender``, or any) inside the block."""
    recorder = SignalRecorder()
    receivers = []
    for name, sig in signals.ALL.items():
        receiver = recorder._receiver(name)
        receivers.append((sig, receiver))
        if sender is None:
            sig.connect(receiver, weak=False)
        else:
            sig.connect(receiver, sender=sender, weak=False)
    try:
        yield recorder
    finally:
        for sig, receiver in receivers:
            sig.disconnect(receiver)


__all__ = ["Event", "SignalRecorder", "StoreConformance", "capture_signals"]
