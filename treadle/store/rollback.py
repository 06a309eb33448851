"""Rollback (compensation) bookkeeping in the store, as functions over :class:`Tx`.

With ``Pipeline(on_failure="rollback")``, an item that fails for good or is
rejected is marked ``rolling_back`` in the same transaction that records its
end. A runner then claims it (the item state becomes
``rolling_back:<owner>``, recovered like a stage claim if that runner dies),
runs the ``rollback`` of each completed stage in reverse completion order,
recording each as ``rolled_back`` (or, when the rollback itself fails, keeping
the stage ``completed`` with the rollback's error, never overwriting the
original failure), and finally settles the item. A rollback already recorded
is never run again, so a crash in the middle resumes where it stopped. While
it runs, ``retry`` and ``rerun`` of the item are refused (``human.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..states import StageState
from .logic import item_state
from .records import CANCEL, CANCELLED, COMPLETED, ROLLED_BACK, ROLLING_BACK, HistoryRow, Shape
from .tx import Tx


def claim_rollbacks(tx: Tx, shape: Shape, owner: str, limit: int,
                    only: Sequence[str] | None = None) -> list[tuple[str, list[str]]]:
    """Claim items waiting for rollback (only those in ``only``, if given):
    (item_id, stages to roll back, in order)."""
    out = []
    waiting = (tx.items_in_state(shape.name, ROLLING_BACK, limit) if only is None else
               [i for i in only if tx.item_state_of(shape.name, i) == ROLLING_BACK][:limit])
    for item_id in waiting:
        if not tx.cas_item_state(shape.name, item_id, ROLLING_BACK, f"{ROLLING_BACK}:{owner}"):
            continue
        out.append((item_id, rollback_plan(tx, shape, item_id)))
    return out


def rollback_plan(tx: Tx, shape: Shape, item_id: str) -> list[str]:
    """The stages of an item to roll back, newest completion first."""
    rows = tx.rows(shape.name, item_id)
    rank = {s: i for i, s in enumerate(shape.order)}
    todo = [r for s, r in rows.items()
            if s in shape.rollback_stages and r.state == COMPLETED and r.error is None]
    todo.sort(key=lambda r: (r.updated_at, rank[r.stage]), reverse=True)
    return [r.stage for r in todo]


def record_rollback(tx: Tx, shape: Shape, owner: str, item_id: str, stage: str, *,
                    error: str | None, traceback: str | None) -> bool:
    """Record one rollback's outcome; False if the item is no longer this runner's."""
    if tx.item_state_of(shape.name, item_id) != f"{ROLLING_BACK}:{owner}":
        return False
    row = tx.rows(shape.name, item_id).get(stage)
    if row is None or row.state != COMPLETED:
        return False
    if error is None:
        tx.cas(shape.name, item_id, stage, COMPLETED, ROLLED_BACK, output=row.output,
               review=row.review)
        tx.append_history(shape.name, [HistoryRow(item_id, stage, "rolled_back", row.attempt, owner)])
    else:
        tx.set_error(shape.name, item_id, stage, COMPLETED, f"rollback failed: {error}")
        tx.append_history(shape.name, [HistoryRow(
            item_id, stage, "rollback_failed", row.attempt, owner, error, traceback,
            details='{"stage_state":"completed"}')])
    return True


def finish_rollback(tx: Tx, shape: Shape, owner: str, item_id: str) -> str | None:
    """Settle a rolled-back item; returns its state (None if not this runner's)."""
    states = tx.stage_states(shape.name, [item_id]).get(item_id, {})
    state = item_state(shape.order, states).value
    if any(r.target == item_id for r in tx.control_rows(shape.name, 0, (CANCEL,))):
        state = CANCELLED  # a cancelled item's compensations ran: it ends cancelled
    if not tx.cas_item_state(shape.name, item_id, f"{ROLLING_BACK}:{owner}", state):
        return None
    return state


def recover_rollbacks(tx: Tx, shape: Shape, stale_owners: Sequence[str]) -> list[str]:
    """Rollbacks claimed by dead runners go back to waiting."""
    back = []
    for owner in stale_owners:
        for item_id in tx.items_in_state(shape.name, f"{ROLLING_BACK}:{owner}", None):
            if tx.cas_item_state(shape.name, item_id, f"{ROLLING_BACK}:{owner}", ROLLING_BACK):
                back.append(item_id)
    return back


def wants_rollback(shape: Shape, state: str) -> bool:
    """Does an item that ended in ``state`` get its rollbacks run?"""
    return getattr(shape, "on_failure", "stop") == "rollback" and state in (
        StageState.FAILED.value, StageState.REJECTED.value)


__all__ = ["ROLLING_BACK", "claim_rollbacks", "finish_rollback", "record_rollback",
           "recover_rollbacks", "rollback_plan", "wants_rollback"]
