"""Selecting stages by filter, and deciding or retrying them in batches.

A bulk operation first *selects* (item, stage) rows, then changes them in
batches of :data:`BATCH`, one store transaction per batch. A row that someone
else changed between the selection and its batch (decided, re-run, retried)
is skipped, not an error; :class:`BulkResult` reports both lists. The CLI
shows the selection before asking to go on, then applies exactly it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import signals
from .states import StageState
from .status import BulkResult
from .store.query import Filter
from .store.records import AWAITING, FAILED, REJECTED

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .store.base import StateStore

#: Rows changed per transaction.
BATCH = 500

Key = tuple[str, str]
ReviewKey = tuple[str, str, int]  # (item_id, stage, review version)


def make_filter(pipeline: Pipeline, stage: str | None = None, state: str | None = None,
                error: str | None = None, since: Any = None) -> Filter:
    """A checked :class:`~treadle.store.query.Filter` (unknown stage or state, an
    empty error text, a ``since`` that is no time: a clear error)."""
    if stage is not None:
        stage = pipeline.check_stage(stage)
    if state is not None:
        try:
            state = StageState(state).value
        except ValueError:
            raise ValueError(f"state={state!r} is not a stage state; use one of: "
                             f"{', '.join(s.value for s in StageState)}") from None
    if error is not None and (not isinstance(error, str) or not error.strip()):
        raise ValueError(f"error= is a text to look for in the last error, got {error!r}")
    return Filter(stage, state, error, _epoch(since))


def _epoch(since: Any) -> float | None:
    if since is None:
        return None
    if isinstance(since, dt.datetime):
        return since.timestamp()  # a naive datetime is local time
    if isinstance(since, (int, float)) and not isinstance(since, bool):
        return float(since)
    raise TypeError(f"since= takes a datetime or an epoch time in seconds, got {since!r}")


def select_reviews(store: StateStore, pipeline: Pipeline, stage: str | None,
                   where_message: str | None) -> list[ReviewKey]:
    """(item, stage, review version) of the stages awaiting review (at ``stage``, or
    any), whose review message contains ``where_message`` (case-insensitive);
    per stage, oldest first."""
    wanted = where_message.lower() if where_message is not None else None
    out: list[ReviewKey] = []
    for name in [stage] if stage is not None else list(pipeline.order):
        for m in store.find_items(pipeline, Filter(name, AWAITING)):
            if wanted is not None:
                message = json.loads(m.review).get("message", "") if m.review else ""
                if wanted not in str(message).lower():
                    continue
            out.append((m.item_id, name, m.attempt))
    return out


def select_failed(store: StateStore, pipeline: Pipeline, stage: str | None,
                  error: str | None) -> list[Key]:
    """(item, stage) of the failed (and rejected) stages (at ``stage``, or any) whose
    last error contains ``error`` (case-insensitive); per stage, oldest first."""
    out: list[Key] = []
    for name in [stage] if stage is not None else list(pipeline.order):
        for state in (FAILED, REJECTED):
            out += [(m.item_id, name) for m in store.find_items(pipeline, Filter(name, state, error))]
    return out


def decide(store: StateStore, pipeline: Pipeline, keys: Sequence[ReviewKey], *, approve: bool,
           note: str | None, reviewer: str | None, batch: int = BATCH) -> BulkResult:
    """Approve (as they are) or reject the selected reviews, ``batch`` per transaction;
    each decision is recorded in the history and signalled like a single one."""
    decision = "approved" if approve else "rejected"
    record = {"decision": decision, "reviewer": reviewer, "note": note}
    actor = reviewer or "human"
    done: list[Key] = []
    skipped: list[Key] = []
    for start in range(0, len(keys), batch):
        result, missed = store.decide_many(pipeline, keys[start:start + batch], approve=approve,
                                           review=record, actor=actor, details=dict(record))
        skipped += missed
        for t in result.accepted:  # after the commit, as for one decision
            done.append((t.item_id, t.stage))
            signals.send(signals.review_decided, pipeline, item_id=t.item_id, stage=t.stage,
                         decision=decision, data=json.loads(t.output) if t.output else None,
                         reviewer=reviewer, note=note, actor=actor)
        for item, state in result.finished:
            signals.send(signals.item_finished, pipeline, item_id=item, state=state)
    return BulkResult(done, skipped)


def retry(store: StateStore, pipeline: Pipeline, keys: Sequence[Key], *, actor: str,
          batch: int = BATCH) -> BulkResult:
    """Put the selected failed (or rejected) stages back to pending, ``batch`` per
    transaction."""
    moved: set[Key] = set()
    for start in range(0, len(keys), batch):
        moved.update(store.retry_rows(pipeline, keys[start:start + batch], actor))
    return BulkResult([k for k in keys if k in moved], [k for k in keys if k not in moved])


__all__ = ["BATCH", "BulkResult", "decide", "make_filter", "retry", "select_failed",
           "select_reviews"]
