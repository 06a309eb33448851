"""After a commit: counters, and signals delivered on a thread of their own.

Signals report committed transitions, in commit order. They are delivered
by one daemon thread, so a slow receiver never delays the scheduler or the
heartbeat; :meth:`Reporter.flush` waits (boundedly) at the end of a run so
that a run's signals have been delivered when ``run()`` returns.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import attrs
import blinker

from .. import signals
from .._crash import crash_point
from ..serialization import from_json
from ..states import StageState
from ..store.base import CommitResult, Transition
from ..store.fanout import SubResult

_log = logging.getLogger("treadle.runner")

Event = tuple[blinker.NamedSignal, dict[str, Any]]


@attrs.define
class Counters:
    """What one run did (becomes the :class:`~treadle.RunReport`)."""

    executed: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    skipped_downstream: int = 0
    awaiting_review: int = 0
    refused: int = 0
    cancelled: int = 0  # stage runs in hand when their item was cancelled
    interrupted: bool = False

    def add_counts(self, other: Any) -> None:
        """Add what another run did (its Counters or RunReport): a pipeline tree runs
        one pass per pipeline, ``run --watch`` several passes."""
        for f in attrs.fields(Counters):
            if f.name != "interrupted":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.interrupted = self.interrupted or other.interrupted


def _listening() -> bool:
    return any(sig.receivers for sig in signals.ALL.values())


class SignalThread:
    """Delivers batches of signals in order on one daemon thread."""

    def __init__(self, sender: Any) -> None:
        self.sender = sender
        self._queue: queue.SimpleQueue[list[Event] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending = 0
        self._cond = threading.Condition()
        self._busy_since: float | None = None
        self.delivered = 0  # batches delivered so far

    def put(self, events: list[Event]) -> None:
        if not events:
            return
        with self._cond:
            self._pending += 1
        if self._thread is None:
            self._thread = threading.Thread(target=self._deliver, name="treadle-signals",
                                            daemon=True)
            self._thread.start()
        self._queue.put(events)

    def _deliver(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            crash_point("before-signals")
            for sig, data in batch:
                self._busy_since = time.monotonic()
                try:
                    signals.send(sig, self.sender, **data)
                except BaseException:  # noqa: BLE001 - a receiver never breaks a run
                    _log.exception("treadle: delivering signal %r failed; ignored", sig.name)
            self._busy_since = None
            with self._cond:
                self._pending -= 1
                self.delivered += 1
                self._cond.notify_all()

    def flush(self, stuck_after: float) -> bool:
        """Wait until every batch is delivered; give up (False) when one receiver
        call has been running for ``stuck_after`` seconds."""
        with self._cond:
            while self._pending:
                self._cond.wait(0.05)
                since = self._busy_since
                if since is not None and time.monotonic() - since > stuck_after:
                    _log.warning("treadle: a signal receiver has been running for %.0f s; "
                                 "%d batch(es) of signals are still to be delivered",
                                 stuck_after, self._pending)
                    return False
        return True

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread = None


class Reporter:
    """Turns committed results into counters and signal events."""

    def __init__(self, pipeline: Any, counters: Counters) -> None:
        self.pipeline = pipeline
        self.counters = counters
        self.thread = SignalThread(pipeline)
        self._events: list[Event] = []
        self._listening = _listening()
        self._settled = 0

    @property
    def listening(self) -> bool:
        """Some receiver is connected to some treadle signal (else nothing is queued)."""
        return self._listening

    def emit(self, sig: blinker.NamedSignal, **data: Any) -> None:
        """Queue one signal for delivery with the next :meth:`send`."""
        if self._listening:
            self._events.append((sig, data))

    def send(self) -> None:
        """Hand the queued signals to the delivery thread (after their commit)."""
        if self._events:
            events, self._events = self._events, []
            self.thread.put(events)
        self._listening = _listening()

    def committed(self, batch: Sequence[tuple[Transition, Any]],
                  subs: Sequence[tuple[SubResult, Any]], result: CommitResult) -> None:
        """Count and report what one group commit did."""
        c = self.counters
        c.executed += len(batch) + len(subs)
        for t in result.refused:
            c.refused += 1
            _log.warning("treadle: result of %s/%s attempt %d refused: its claim was lost "
                         "(lease lapsed and another runner took it over)",
                         t.item_id, t.stage, t.attempt)
        listening = self._listening
        values = {(t.item_id, t.stage, t.attempt): v for t, v in batch} if listening else {}
        emit = self.emit
        for t in result.accepted:
            kw = {"item_id": t.item_id, "stage": t.stage, "attempt": t.attempt}
            if t.verdict is not None and listening:
                self._gate(t, kw)
            state = t.state
            if state == StageState.COMPLETED:
                c.completed += 1
                if listening:
                    value = values.get((t.item_id, t.stage, t.attempt))
                    if value is None and t.output is not None:
                        value = from_json(t.output)
                    emit(signals.stage_completed, data=value, **kw)
            elif state == StageState.FAILED:
                c.failed += 1
                emit(signals.stage_failed, error=t.error, final=True, **kw)
            elif state == StageState.SKIPPED:
                c.skipped += 1
                emit(signals.stage_skipped, data=values.get((t.item_id, t.stage, t.attempt)), **kw)
            elif state == StageState.PENDING:  # failed, another attempt scheduled
                if t.error is not None:
                    emit(signals.stage_failed, error=t.error, final=False, **kw)
                emit(signals.retry_scheduled, error=t.error,
                     data=values.get((t.item_id, t.stage, t.attempt)), **kw)
            elif state == StageState.AWAITING_REVIEW:
                c.awaiting_review += 1
                if listening:
                    review = from_json(t.review) or {}
                    emit(signals.review_required, data=review.get("data"),
                         message=review.get("message", ""), **kw)
        for item_id, stage in result.skipped:
            c.skipped_downstream += 1
            emit(signals.stage_skipped, item_id=item_id, stage=stage, attempt=0,
                 data="upstream skipped")
        if listening:
            sub_values = {(r.item_id, r.stage, r.name, r.attempt): v for r, v in subs}
            for r in result.sub_accepted:
                kw = {"item_id": r.item_id, "stage": r.stage, "subtask": r.name,
                      "attempt": r.attempt}
                if r.state == "completed":
                    emit(signals.subtask_completed,
                         data=sub_values.get((r.item_id, r.stage, r.name, r.attempt)), **kw)
                else:
                    emit(signals.subtask_failed, error=r.error, final=r.state == "failed", **kw)
        self.counters.refused += len(result.sub_refused)
        for item_id, state in result.finished:
            emit(signals.item_finished, item_id=item_id, state=state)

    def _gate(self, t: Transition, kw: dict[str, Any]) -> None:
        record = from_json(t.details) or {}
        verdict = record.get("verdict", {"verdict": t.verdict})
        sig = signals.quality_passed if t.verdict == "accepted" else signals.quality_failed
        self.emit(sig, data=verdict, **kw)
        if t.escalated and t.state == StageState.AWAITING_REVIEW:
            self.emit(signals.escalated, data=verdict, **kw)

    def settle(self, stuck_after: float) -> bool:
        """Deliver what is queued and wait for it; True if receivers ran since the
        last call (they may have changed the store: an approval, a submission)."""
        self.send()
        self.thread.flush(stuck_after)
        delivered = self.thread.delivered
        changed = delivered != self._settled
        self._settled = delivered
        return changed

    def flush(self, stuck_after: float = 30.0) -> None:
        """Deliver everything queued; wait for the delivery thread (boundedly)."""
        self.send()
        self.thread.flush(stuck_after)
        self.thread.close()


__all__ = ["Counters", "Reporter", "SignalThread"]
