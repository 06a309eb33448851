"""Human operations on the store: review decisions, retries, reruns, review timeouts.

Each is a function over one :class:`Tx` that checks the current state and
changes it only if that state allows (compare-and-set); otherwise it raises
and, the transaction being rolled back, changes nothing. Every value it
writes is serialised before the first row changes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .. import decisions
from .._crash import crash_point
from ..errors import InvalidDecisionError, InvalidTransitionError
from .control import cancelled_refusal
from .flow import advance, finish
from .logic import deps_done
from .records import (
    AWAITING,
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    REJECTED,
    ROLLED_BACK,
    ROLLING_BACK,
    RUNNING,
    CommitResult,
    HistoryRow,
    Shape,
    StageRecord,
    Transition,
    dumps,
)
from .tx import Tx

#: History states of the review requests' escalations and notifications.
ESCALATED = "escalated"
NOTIFIED = "notified"
_ALL_BUT_RUNNING = ("pending", "completed", "skipped", "awaiting_review", "rejected", "failed",
                    "rolled_back")


def not_awaiting(item_id: str, stage: str, state: str) -> InvalidTransitionError:
    """The error for a decision on a stage that is not awaiting review."""
    return InvalidTransitionError(
        f"Stage {stage!r} of item {item_id!r} is {state!r}, not 'awaiting_review'; only a "
        "stage awaiting review can be approved or rejected (python -m treadle reviews lists them).",
        item_id=item_id, stage=stage, state=state,
    )


def version_changed(item_id: str, stage: str, seen: int, now: int) -> InvalidTransitionError:
    """The error for a decision on a review version the reviewer did not see."""
    if seen < now:
        what = f"was re-run since you saw version {seen}"
    else:
        what = f"has no review version {seen} yet"
    return InvalidTransitionError(
        f"Stage {stage!r} of item {item_id!r} {what}; it now awaits review of version {now}: "
        "look again (python -m treadle reviews shows it) and decide on what it shows now.",
        item_id=item_id, stage=stage, state=AWAITING,
    )


def rolling_back(item_id: str, what: str) -> InvalidTransitionError:
    """The error for a retry or rerun of an item whose rollback waits or runs."""
    return InvalidTransitionError(
        f"Cannot {what} item {item_id!r}: it is rolling back (its compensations run now or "
        "wait for a runner). Wait for the rollback to finish (python -m treadle status shows "
        "it as rolled_back), then retry or rerun it.", item_id=item_id, state=ROLLING_BACK,
    )


def awaiting_row(tx: Tx, shape: Shape, item_id: str, stage: str,
                 expect: int | None = None) -> StageRecord:
    """The row of a stage awaiting review (locked until commit), at version ``expect``."""
    tx.lock_stage_rows(shape.name, item_id)
    rows = tx.rows(shape.name, item_id)
    if not rows:
        tx.require_item(shape.name, item_id)
    row = rows.get(stage)
    if row is None or row.state != AWAITING:
        if tx.item_states(shape.name, [item_id]).get(item_id) == CANCELLED:
            raise cancelled_refusal(item_id, "be decided on")
        raise not_awaiting(item_id, stage, row.state if row else PENDING)
    if expect is not None and row.attempt != expect:
        raise version_changed(item_id, stage, expect, row.attempt)
    return row


def decide(tx: Tx, shape: Shape, item_id: str, stage: str, *, approve: bool,
           output: str | None, review: dict[str, Any], actor: str, details: dict[str, Any],
           expect: int | None = None) -> CommitResult:
    """Approve (complete with ``output``, or the review data when None) or reject one
    stage awaiting review, at review version ``expect`` when given."""
    dumps(review, what="review decision", item_id=item_id, stage=stage)
    row = awaiting_row(tx, shape, item_id, stage, expect)
    stored = json.loads(row.review) if row.review else {}
    decisions.check_assignee(stored, review.get("reviewer"), actor, item_id, stage)
    if approve:  # a choice and a form answer are checked here, before anything changes
        output, choice = decisions.resolve(stored, output, review.get("choice"), item_id, stage)
        if choice is not None:
            review, details = {**review, "choice": choice}, {**details, "choice": choice}
    elif review.get("choice") is not None:
        raise InvalidDecisionError(
            f"Stage {stage!r} of item {item_id!r}: a rejection makes no choice.",
            item_id=item_id, stage=stage)
    details_json = dumps(details, what="decision record", item_id=item_id, stage=stage)
    if approve and output is None:
        output = dumps(stored.get("data"), what="review data", item_id=item_id, stage=stage)
    state = COMPLETED if approve else REJECTED
    new_review = dumps({**stored, **review}, what="review", item_id=item_id, stage=stage)
    if not tx.cas(shape.name, item_id, stage, AWAITING, state, output=output if approve else None,
                  review=new_review, attempt=row.attempt):
        raise not_awaiting(item_id, stage, "changed concurrently")
    crash_point("mid-review-decision")
    tx.append_history(shape.name, [HistoryRow(item_id, stage, state, row.attempt, actor,
                                              details=details_json)])
    t = Transition(item_id, stage, row.attempt, state, output=output)
    skipped, check = advance(tx, shape, actor, [t])
    finished = finish(tx, shape, check)
    return CommitResult([t], [], skipped, finished, [])


def decide_many(tx: Tx, shape: Shape, keys: Sequence[tuple[str, str, int | None]], *,
                approve: bool, review: dict[str, Any], actor: str, details: dict[str, Any]
                ) -> tuple[CommitResult, list[tuple[str, str]]]:
    """Approve (each with its review data as output) or reject many (item, stage,
    review version) at once, each recorded in the history as :func:`decide` records
    one. A row no longer awaiting review at that version (decided or re-run by
    someone else meanwhile) is skipped: returns the result and the rows skipped."""
    details_json = dumps(details, what="decision record")
    dumps(review, what="review decision")
    state = COMPLETED if approve else REJECTED
    done: list[Transition] = []
    skipped: list[tuple[str, str]] = []
    # Locked as a single decision locks them (no claim slips in meanwhile), in one
    # order, so that two bulk decisions never wait for each other in a circle.
    locked = tx.locked_rows(shape.name, {i for i, _, _ in keys})
    picked: list[tuple[str, str, int, str | None, str | None]] = []
    seen: set[tuple[str, str]] = set()
    for item_id, stage, version in keys:
        row = locked.get(item_id, {}).get(stage)
        if (row is None or row.state != AWAITING or version not in (None, row.attempt)
                or (item_id, stage) in seen):  # named twice: decided the first time
            skipped.append((item_id, stage))
            continue
        seen.add((item_id, stage))
        stored = json.loads(row.review) if row.review else {}
        output = (dumps(stored.get("data"), what="review data", item_id=item_id, stage=stage)
                  if approve else None)
        new_review = dumps({**stored, **review}, what="review", item_id=item_id, stage=stage)
        picked.append((item_id, stage, row.attempt, output, new_review))
    for (item_id, stage, attempt, output, _), moved in zip(
            picked, tx.cas_many(shape.name, AWAITING, state, picked)):
        if moved:
            done.append(Transition(item_id, stage, attempt, state, output=output))
        else:
            skipped.append((item_id, stage))
    tx.append_history(shape.name, [HistoryRow(t.item_id, t.stage, state, t.attempt, actor,
                                              details=details_json) for t in done])
    skipped_down, check = advance(tx, shape, actor, done)
    finished = finish(tx, shape, check)
    return CommitResult(done, [], skipped_down, finished, []), skipped


def request_changes(tx: Tx, shape: Shape, item_id: str, stage: str, *, feedback: Any,
                    actor: str, reviewer: str | None, expect: int | None = None) -> None:
    """Send a stage awaiting review back to pending with the reviewer's feedback."""
    details = dumps({"feedback": feedback, "reviewer": reviewer}, what="feedback",
                    item_id=item_id, stage=stage)
    row = awaiting_row(tx, shape, item_id, stage, expect)
    decisions.check_assignee(json.loads(row.review) if row.review else {}, reviewer, actor,
                             item_id, stage)
    if not tx.set_state(shape.name, [(item_id, stage)], PENDING, (AWAITING,), ready=True):
        raise not_awaiting(item_id, stage, "changed concurrently")
    tx.append_history(shape.name, [HistoryRow(item_id, stage, "changes_requested", row.attempt,
                                              actor, details=details)])
    tx.set_item_states(shape.name, [(item_id, PENDING)])


def _refuse_rolling_back(tx: Tx, shape: Shape, item_ids: set[str], what: str) -> None:
    if not item_ids:
        return
    for item_id in sorted(set(tx.rolling_back(shape.name)) & item_ids):
        raise rolling_back(item_id, what)


def retry(tx: Tx, shape: Shape, item_id: str | None, stage: str | None,
          actor: str) -> list[tuple[str, str]]:
    """Failed (and rejected) stages back to pending, ready when their dependencies are
    done; returns those moved. Linear in the stages moved."""
    rows = tx.find(shape.name, shape.order, item_id, stage, (FAILED, REJECTED))
    if item_id is not None and not rows:
        tx.require_item(shape.name, item_id)
        if tx.item_states(shape.name, [item_id]).get(item_id) == CANCELLED:
            raise cancelled_refusal(item_id, "be retried")
    return retry_rows(tx, shape, rows, actor, item_id=item_id)


def retry_rows(tx: Tx, shape: Shape, rows: Sequence[tuple[str, str]], actor: str, *,
               item_id: str | None = None) -> list[tuple[str, str]]:
    """These failed (or rejected) (item, stage) rows back to pending; rows in another
    state are left as they are. Items rolled back are skipped, or refused when
    ``item_id`` names the one item retried. Returns the rows moved."""
    items = {i for i, _ in rows}
    # Lock the item rows first, as cancel() does: a cancel committing between the
    # read of the item states below and the updates would otherwise be overwritten.
    tx.lock_items(shape.name, items)
    _refuse_rolling_back(tx, shape, items, "retry")
    cancelled = {i for i, st in tx.item_states(shape.name, items).items() if st == CANCELLED}
    if cancelled:  # final: a bulk retry leaves them be, a retry of one says why not
        if item_id is not None:
            raise cancelled_refusal(item_id, "be retried")
        rows = [(i, s) for i, s in rows if i not in cancelled]
        items -= cancelled
    states = tx.stage_states(shape.name, items)
    rolled = {i for i in items
              if any(st == ROLLED_BACK for st, _ in states.get(i, {}).values())}
    if rolled:  # compensated: a failed stage cannot simply run again behind undone ones
        if item_id is not None:
            raise InvalidTransitionError(
                f"Item {item_id!r} was rolled back (its compensations ran), so its failed "
                "stages cannot simply run again. To start it over, rerun it from its first "
                f"stage: python -m treadle rerun TARGET {item_id} --from STAGE.",
                item_id=item_id, state=ROLLED_BACK)
        rows = [(i, s) for i, s in rows if i not in rolled]  # bulk retry: leave them be
        items -= rolled
    ready: list[tuple[str, str]] = []
    waiting: list[tuple[str, str]] = []
    for i, s in rows:
        (ready if deps_done(shape.deps[s], states.get(i, {})) else waiting).append((i, s))
    moved = tx.set_state(shape.name, ready, PENDING, (FAILED, REJECTED), ready=True, error=None)
    moved += tx.set_state(shape.name, waiting, PENDING, (FAILED, REJECTED), ready=False, error=None)
    # Again once the rows are ours: a concurrent commit may have failed one of these
    # items for good (and marked it rolling back) while we read.
    _refuse_rolling_back(tx, shape, items, "retry")
    tx.append_history(shape.name, [HistoryRow(i, s, PENDING, 0, actor, details='{"reason":"retry"}')
                                   for i, s in moved])
    tx.set_item_states(shape.name, [(i, PENDING) for i in dict.fromkeys(i for i, _ in moved)])
    return moved


def rerun(tx: Tx, shape: Shape, item_id: str, stage: str, actor: str,
          reason: dict[str, Any] | None = None) -> list[str]:
    """Send ``stage`` and everything downstream back to pending; returns the stages
    reset. Superseded outputs and review decisions are kept in the history, with
    ``reason`` (default ``{"reason": "rerun"}``). Refused while any of them is
    running or the item rolls back."""
    targets = [s for s in shape.order if s == stage or s in shape.descendants[stage]]
    tx.lock_stage_rows(shape.name, item_id)  # no claim may slip in meanwhile
    rows = tx.rows(shape.name, item_id)
    if not rows:
        tx.require_item(shape.name, item_id)
    _refuse_rolling_back(tx, shape, {item_id}, "rerun")
    if tx.item_states(shape.name, [item_id]).get(item_id) == CANCELLED:
        raise cancelled_refusal(item_id, "be rerun")
    upstream: set[str] = set()
    todo = list(shape.deps[stage])
    while todo:
        dep = todo.pop()
        if dep not in upstream:
            upstream.add(dep)
            todo.extend(shape.deps[dep])
    undone = [s for s in shape.order if s in upstream and s in rows
              and rows[s].state == ROLLED_BACK]
    if undone:  # it could never run: what it depends on was compensated
        raise InvalidTransitionError(
            f"Cannot rerun item {item_id!r} from {stage!r}: stage {undone[0]!r} before it was "
            f"rolled back. Rerun from {undone[0]!r} (or earlier) to redo the item from there.",
            item_id=item_id, stage=undone[0], state=ROLLED_BACK)
    busy = [s for s in targets if s in rows and rows[s].state == RUNNING]
    if busy:
        raise InvalidTransitionError(
            f"Cannot rerun item {item_id!r} from {stage!r}: stage {busy[0]!r} is running "
            "right now. Wait for it to finish, then rerun.",
            item_id=item_id, stage=busy[0], state=RUNNING,
        )
    reset = [s for s in targets if s in rows and rows[s].state != PENDING]
    history = []
    for s in reset:
        old = rows[s]
        info: dict[str, Any] = {"reason": "rerun", **(reason or {}), "from_stage": stage,
                                "previous_state": old.state}
        if old.output is not None:
            info["superseded_output"] = json.loads(old.output)
        if old.review is not None:
            info["cleared_review"] = json.loads(old.review)
        history.append(HistoryRow(item_id, s, PENDING, old.attempt, actor,
                                  details=dumps(info, what="rerun record", item_id=item_id)))
    states = {s: (r.state, r.ready) for s, r in rows.items()}
    first_ready = deps_done(shape.deps[stage], states)
    moved = tx.set_state(shape.name, [(item_id, s) for s in reset if s != stage], PENDING,
                         _ALL_BUT_RUNNING, ready=False, clear_output=True)
    if stage in reset:
        moved += tx.set_state(shape.name, [(item_id, stage)], PENDING, _ALL_BUT_RUNNING,
                              ready=first_ready, clear_output=True)
    # Stages already pending keep no stale readiness: downstream ones wait again.
    waiting = [(item_id, s) for s in targets
               if s in rows and rows[s].state == PENDING and s != stage]
    tx.set_state(shape.name, waiting, PENDING, (PENDING,), ready=False)
    if stage in rows and rows[stage].state == PENDING:
        tx.set_state(shape.name, [(item_id, stage)], PENDING, (PENDING,), ready=first_ready)
    tx.append_history(shape.name, history)
    # A fan-out reset here is rebuilt by its stage function, from the new inputs.
    tx.drop_plans(shape.name, [(item_id, s) for s in targets if s in rows])
    if moved:  # a rerun that reset nothing leaves the item as it was
        tx.set_item_states(shape.name, [(item_id, PENDING)])
    names = {s for _, s in moved}
    return [s for s in targets if s in names]


def escalate(tx: Tx, shape: Shape, item_id: str, stage: str, assignees: Sequence[str],
             actor: str) -> bool:
    """Reassign a stage awaiting review to ``assignees`` (once: False if it already was).

    Nothing is decided; the history records the escalation and who had it before.
    """
    row = awaiting_row(tx, shape, item_id, stage)
    stored = json.loads(row.review) if row.review else {}
    if stored.get("escalated_to"):
        return False
    details = dumps({"assignees": list(assignees), "previous": stored.get("assignees") or []},
                    what="escalation record", item_id=item_id, stage=stage)
    review = dumps({**stored, "assignees": list(assignees), "escalated_to": list(assignees)},
                   what="review", item_id=item_id, stage=stage)
    if not tx.cas(shape.name, item_id, stage, AWAITING, AWAITING, output=None, review=review,
                  attempt=row.attempt):
        raise not_awaiting(item_id, stage, "changed concurrently")
    tx.append_history(shape.name, [HistoryRow(item_id, stage, ESCALATED, row.attempt, actor,
                                              details=details)])
    return True


def record_notification(tx: Tx, shape: Shape, item_id: str, stage: str, version: int,
                        details: dict[str, Any]) -> None:
    """Record one notification of a review request (sent, or failed with its error)."""
    tx.append_history(shape.name, [HistoryRow(
        item_id, stage, NOTIFIED, version, "notify",
        details=dumps(details, what="notification record", item_id=item_id, stage=stage))])


def overdue_reviews(tx: Tx, shape: Shape, stage: str, timeout: float) -> list[str]:
    """Items whose ``stage`` has awaited review for ``timeout`` seconds or more."""
    return tx.overdue(shape.name, stage, tx.now - timeout)


__all__: Sequence[str] = [
    "ESCALATED", "NOTIFIED", "awaiting_row", "decide", "decide_many", "escalate", "not_awaiting",
    "overdue_reviews", "record_notification", "request_changes", "rerun", "retry", "retry_rows",
    "rolling_back", "version_changed",
]
