"""Blinker signals describing what happens in a run.

Each signal is sent with the :class:`~treadle.Pipeline` as sender and keyword
data, only after the transition it reports has been committed to the store.
A receiver that raises is logged and ignored: signals observe, they never
steer a run. See docs/reference.md for each signal's arguments and order.
"""

from __future__ import annotations

import logging
from typing import Any

import blinker

_signals = blinker.Namespace()
_log = logging.getLogger("treadle.signals")

item_submitted = _signals.signal("item_submitted", doc="An item was stored (item_id).")
stage_started = _signals.signal(
    "stage_started", doc="A stage was claimed and starts (item_id, stage, attempt).")
stage_completed = _signals.signal(
    "stage_completed", doc="A stage completed (item_id, stage, attempt, data=output).")
stage_failed = _signals.signal("stage_failed", doc="A stage failed (item_id, stage, attempt, error, final).")
stage_skipped = _signals.signal(
    "stage_skipped", doc="A stage was skipped (item_id, stage, attempt, data=reason).")
review_required = _signals.signal(
    "review_required", doc="A stage awaits review (item_id, stage, attempt, data, message).")
review_decided = _signals.signal(
    "review_decided", doc="A human decided a review (item_id, stage, decision, data, reviewer).")
subtask_started = _signals.signal(
    "subtask_started", doc="A fan-out subtask starts (item_id, stage, subtask, attempt).")
subtask_completed = _signals.signal(
    "subtask_completed", doc="A subtask completed (item_id, stage, subtask, attempt, data).")
subtask_failed = _signals.signal(
    "subtask_failed", doc="A subtask failed (item_id, stage, subtask, attempt, error).")
item_finished = _signals.signal("item_finished", doc="An item reached a finished state (item_id, state).")
quality_passed = _signals.signal(
    "quality_passed", doc="A gate accepted an output (item_id, stage, attempt, data).")
quality_failed = _signals.signal(
    "quality_failed", doc="A gate rejected an output or was uncertain (item_id, stage, attempt, data).")
retry_scheduled = _signals.signal(
    "retry_scheduled", doc="Another attempt was scheduled (item_id, stage, attempt, error, data).")
escalated = _signals.signal(
    "escalated", doc="A gated stage went to human review (item_id, stage, attempt, data).")
item_cancelled = _signals.signal(
    "item_cancelled", doc="An item was cancelled (item_id, reason, actor, state).")

ALL = {
    s.name: s for s in (
        item_submitted, stage_started, stage_completed, stage_failed, stage_skipped,
        review_required, review_decided, subtask_started, subtask_completed, subtask_failed,
        item_finished, quality_passed, quality_failed, retry_scheduled, escalated,
        item_cancelled,
    )
}


def send(signal: blinker.NamedSignal, sender: Any, **data: Any) -> None:
    """Send ``signal``; a receiver's exception (even ``KeyboardInterrupt`` or
    ``SystemExit``) is logged and swallowed: signals observe, they never steer."""
    if not signal.receivers:
        return
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **data)
        except BaseException:  # noqa: BLE001 - a receiver must never break a run (nor a call)
            _log.exception("treadle: receiver %r of signal %r raised; ignored", receiver, signal.name)
