"""Pause, resume and cancel: requests every runner honours, as functions over :class:`Tx`.

Each request is a row of ``treadle_control`` (kept, like the history): a
runner reads the rows after the last one it saw before it claims (at most
every ``Control.EVERY`` seconds), so a pause or a cancel made from another
process or machine reaches every runner on the store.

- ``pause`` / ``resume``: target a stage, or ``ALL`` ("") for the whole
  pipeline. Paused stages are not claimed; what runs finishes. The rows are
  folded in order (:func:`paused`): a ``resume`` of ``ALL`` lifts every pause.
- ``cancel``: target an item. In the same transaction its stages that wait,
  run or await review go back to ``pending`` and not ready, so no runner
  claims them and a late result of a running one is refused by its owner
  guard; the item is ``cancelled`` (terminal) or, when the pipeline rolls
  back (``on_failure="rollback"``) and it has completed stages with a
  rollback, ``rolling_back`` first and ``cancelled`` once rolled back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import InvalidTransitionError
from ..states import FINISHED_ITEM_STATES
from .logic import item_state
from .records import (
    AWAITING,
    CANCEL,
    CANCELLED,
    PAUSE,
    PENDING,
    RESUME,
    ROLLING_BACK,
    RUNNING,
    ControlRow,
    HistoryRow,
    Shape,
    dumps,
)
from .rollback import rollback_plan
from .tx import Tx

#: The target of a pause or resume of the whole pipeline.
ALL = ""
#: The history's item id for events of the whole pipeline (pause, resume).
PIPELINE_EVENT = ""


def paused(rows: Iterable[ControlRow], start: frozenset[str] = frozenset()) -> frozenset[str]:
    """The paused targets after ``rows`` (oldest first), starting from ``start``."""
    out = set(start)
    for r in rows:
        if r.kind == PAUSE:
            out.add(r.target)
        elif r.kind == RESUME:
            if r.target == ALL:
                out.clear()
            else:
                out.discard(r.target)
    return frozenset(out)


def pause(tx: Tx, shape: Shape, stage: str | None, actor: str, reason: str | None) -> bool:
    """Pause ``stage`` (None: the whole pipeline); False if it already was."""
    target = ALL if stage is None else stage
    if target in paused(tx.control_rows(shape.name, 0, (PAUSE, RESUME))):
        return False
    tx.append_control(shape.name, PAUSE, [target], actor, reason)
    tx.append_history(shape.name, [HistoryRow(PIPELINE_EVENT, stage, "paused", 0, actor,
                                              details=_reason(reason))])
    return True


def resume(tx: Tx, shape: Shape, stage: str | None, actor: str) -> bool:
    """Lift the pause of ``stage`` (None: every pause); False if nothing was paused."""
    now = paused(tx.control_rows(shape.name, 0, (PAUSE, RESUME)))
    target = ALL if stage is None else stage
    if (target not in now) if stage is not None else not now:
        return False
    tx.append_control(shape.name, RESUME, [target], actor, None)
    tx.append_history(shape.name, [HistoryRow(PIPELINE_EVENT, stage, "resumed", 0, actor)])
    return True


def cancel(tx: Tx, shape: Shape, item_ids: Sequence[str], reason: str, actor: str
           ) -> list[tuple[str, str]]:
    """Cancel items not yet finished; returns (item_id, state) with state
    ``cancelled`` or ``rolling_back``. Refuses (changing nothing) an unknown
    item or one that is finished or rolling back."""
    ids = list(dict.fromkeys(item_ids))
    for item_id in sorted(ids):  # a result commit locks stage rows, then item rows: the same
        tx.lock_stage_rows(shape.name, item_id)
    tx.lock_items(shape.name, ids)
    recorded = tx.item_states(shape.name, ids)
    for item_id in ids:
        if item_id not in recorded:
            tx.require_item(shape.name, item_id)  # raises ItemNotFoundError
    rows_of = {i: tx.rows(shape.name, i) for i in ids}  # locked above: read once
    for item_id, rows in rows_of.items():
        state = recorded[item_id]
        if not state.startswith(ROLLING_BACK) and state != CANCELLED:
            state = item_state(shape.order, {s: (r.state, r.ready) for s, r in rows.items()}).value
        if state in FINISHED_ITEM_STATES or state.startswith(ROLLING_BACK):
            raise not_cancellable(item_id, state)
    details = _reason(reason)
    wants = getattr(shape, "on_failure", "stop") == "rollback"
    history: list[HistoryRow] = []
    settled: list[tuple[str, str]] = []
    for item_id, rows in rows_of.items():
        live = [(item_id, s) for s in shape.order
                if s in rows and rows[s].state in (PENDING, RUNNING, AWAITING)]
        tx.set_state(shape.name, live, PENDING, (PENDING, RUNNING, AWAITING), ready=False)
        running = [(item_id, s) for _, s in live if rows[s].state == RUNNING]
        tx.reset_subtasks(shape.name, running)
        history += [HistoryRow(item_id, s, CANCELLED, rows[s].attempt, actor, details=details)
                    for _, s in live if rows[s].state != PENDING]
        history.append(HistoryRow(item_id, None, CANCELLED, 0, actor, details=details))
        settled.append((item_id, ROLLING_BACK if wants and rollback_plan(tx, shape, item_id)
                        else CANCELLED))
    tx.set_item_states(shape.name, settled)
    tx.append_control(shape.name, CANCEL, ids, actor, reason or None)
    tx.append_history(shape.name, history)
    return settled


def not_cancellable(item_id: str, state: str) -> InvalidTransitionError:
    """The error for a cancel of an item that has finished (or is rolling back)."""
    what = "rolling back" if state.startswith(ROLLING_BACK) else f"already {state}"
    return InvalidTransitionError(
        f"Item {item_id!r} is {what}; only items still in progress (pending, running or "
        "awaiting review) can be cancelled. Nothing was changed.",
        item_id=item_id, state=state)


def cancelled_refusal(item_id: str, what: str) -> InvalidTransitionError:
    """The error for a retry, rerun or decision on a cancelled item."""
    return InvalidTransitionError(
        f"Item {item_id!r} was cancelled; cancelling is final, so it cannot {what}. Submit it "
        "again under a new id to start it over.", item_id=item_id, state=CANCELLED)


def _reason(reason: str | None) -> str | None:
    return dumps({"reason": reason}, what="reason") if reason else None


__all__ = ["ALL", "CANCEL", "PAUSE", "PIPELINE_EVENT", "RESUME", "cancel", "cancelled_refusal",
           "not_cancellable", "pause", "paused", "resume"]
