"""Hooks around every run of user code: stages, subtasks, gates, rollbacks.

Signals report what was *committed*, after the fact and on a thread of their
own. Tracing and timing need more: to be around the user's code, in the
thread (or coroutine) that runs it, so that spans the code opens itself nest
inside the stage's span, and durations are the code's own. An *instrument*
is a function taking an :class:`Execution` and returning a context manager
that is entered just before the user's code runs and exited just after; it
can read ``execution.outcome`` and ``execution.error`` on exit::

    import contextlib, time
    from treadle import instrument

    @contextlib.contextmanager
    def timed(execution):
        t0 = time.perf_counter()
        yield
        print(execution.kind, execution.stage, execution.outcome, time.perf_counter() - t0)

    instrument.add(timed)

Instruments are process-wide (like logging handlers) and apply to work run
in this process's threads and event loop; with a process pool or a cluster,
add them in the worker processes too. An instrument that raises is logged
and ignored. With none added, the cost is one truth test per run.
``treadle.contrib.otel`` and ``treadle.contrib.prometheus`` are instruments.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import attrs

_log = logging.getLogger("treadle.instrument")

#: An instrument: ``Execution -> context manager``.
Instrument = Callable[["Execution"], AbstractContextManager[Any]]

_instruments: list[Instrument] = []
_lock = threading.Lock()


@attrs.define
class Execution:
    """One run of user code, as instruments see it.

    ``kind`` is ``stage``, ``subtask``, ``gate`` or ``rollback``;
    ``claimed_at`` and ``started_at`` are ``time.time()`` values (the wait
    between them is the queue wait). On exit, ``outcome`` is the result's
    state (``completed``, ``failed``, ``pending`` for a retry,
    ``awaiting_review``, ``skipped``, ``fanout``, ``accepted`` /
    ``rejected`` / ``uncertain`` for a gate, ``cancelled``) and ``error`` the
    error text, if any.
    """

    kind: str
    pipeline: str
    item_id: str
    stage: str
    attempt: int
    subtask: str | None = None
    claimed_at: float | None = None
    started_at: float = attrs.field(factory=time.time)
    outcome: str | None = None
    error: str | None = None


def add(instrument: Instrument) -> None:
    """Wrap every run of user code in this process with ``instrument``."""
    with _lock:
        if instrument not in _instruments:
            _instruments.append(instrument)


def remove(instrument: Instrument) -> None:
    """Stop using ``instrument`` (no error if it was not added)."""
    with _lock:
        if instrument in _instruments:
            _instruments.remove(instrument)


def active() -> bool:
    """True if any instrument is added."""
    return bool(_instruments)


@contextlib.contextmanager
def around(execution: Execution) -> Iterator[Execution]:
    """Enter every instrument for ``execution`` (innermost last); never raises on
    their account."""
    with contextlib.ExitStack() as stack:
        for instrument in list(_instruments):
            try:
                stack.enter_context(_guarded(instrument(execution)))
            except Exception:  # noqa: BLE001 - an instrument never breaks a stage
                _log.exception("treadle: instrument %r failed to start; ignored", instrument)
        yield execution


class _guarded(AbstractContextManager[Any]):
    """A context manager whose own exit errors are logged, not raised."""

    def __init__(self, inner: AbstractContextManager[Any]) -> None:
        self.inner = inner

    def __enter__(self) -> Any:
        return self.inner.__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            self.inner.__exit__(*exc)
        except Exception:  # noqa: BLE001
            _log.exception("treadle: instrument %r failed on exit; ignored", self.inner)


__all__ = ["Execution", "Instrument", "active", "add", "around", "remove"]
