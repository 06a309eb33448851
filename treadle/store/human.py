"""Human operations on the store: review decisions, reruns, review timeouts.

Each is one transaction that checks the current state and changes it only if
that state allows (compare-and-set); otherwise it raises and changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._crash import crash_point
from ..errors import InvalidTransitionError
from ..states import StageState

if TYPE_CHECKING:
    from .base import CommitResult, Shape, Tx

AWAITING = StageState.AWAITING_REVIEW.value
RUNNING = StageState.RUNNING.value


def not_awaiting(item_id: str, stage: str, state: str) -> InvalidTransitionError:
    """The error for a decision on a stage that is not awaiting review."""
    return InvalidTransitionError(
        f"Stage {stage!r} of item {item_id!r} is {state!r}, not 'awaiting_review'; only a "
        "stage awaiting review can be approved or rejected (python -m treadle reviews lists them).",
        item_id=item_id, stage=stage, state=state,
    )


class HumanOps:
    """Mixed into BaseStore; uses its ``transaction``, ``_advance`` and ``_finish``."""

    def decide(self, shape: Shape, item_id: str, stage: str, *, approve: bool,
               output: str | None, review: dict[str, Any], actor: str,
               details: dict[str, Any]) -> CommitResult:
        """Approve (complete with ``output``, or the review data when None) or
        reject one stage awaiting review; raise if it is not awaiting review."""
        from .base import CommitResult, HistoryRow, Transition

        with self.transaction() as tx:  # type: ignore[attr-defined]
            row = self._awaiting_row(tx, shape, item_id, stage)
            stored = json.loads(row.review) if row.review else {}
            if approve and output is None:
                output = json.dumps(stored.get("data"), separators=(",", ":"))
            state = StageState.COMPLETED.value if approve else StageState.REJECTED.value
            new_review = json.dumps({**stored, **review}, separators=(",", ":"))
            if not tx.cas(shape.name, item_id, stage, AWAITING, state,
                          output=output if approve else None, review=new_review):
                raise not_awaiting(item_id, stage, "changed concurrently")
            crash_point("mid-review-decision")
            tx.append_history(shape.name, [HistoryRow(
                item_id, stage, state, row.attempt, actor,
                details=json.dumps(details, separators=(",", ":")))])
            t = Transition(item_id, stage, row.attempt, state, output=output)
            skipped, check = self._advance(tx, shape, actor, [t])  # type: ignore[attr-defined]
            finished = self._finish(tx, shape, check)  # type: ignore[attr-defined]
        return CommitResult([t], [], skipped, finished, [])

    def request_changes(self, shape: Shape, item_id: str, stage: str, *, feedback: Any,
                        actor: str, reviewer: str | None) -> None:
        """Send a stage awaiting review back to pending with the reviewer's feedback."""
        from .base import HistoryRow

        with self.transaction() as tx:  # type: ignore[attr-defined]
            row = self._awaiting_row(tx, shape, item_id, stage)
            if not tx.set_state(shape.name, [(item_id, stage)], StageState.PENDING.value,
                                (AWAITING,), ready=True):
                raise not_awaiting(item_id, stage, "changed concurrently")
            tx.append_history(shape.name, [HistoryRow(
                item_id, stage, "changes_requested", row.attempt, actor,
                details=json.dumps({"feedback": feedback, "reviewer": reviewer},
                                   separators=(",", ":")))])
            tx.set_item_states(shape.name, [(item_id, StageState.PENDING.value)])

    def _awaiting_row(self, tx: Tx, shape: Shape, item_id: str, stage: str) -> Any:
        rows = tx.rows(shape.name, item_id)
        if not rows:
            self._require_item(tx, shape, item_id)  # type: ignore[attr-defined]
        row = rows.get(stage)
        if row is None or row.state != AWAITING:
            raise not_awaiting(item_id, stage, row.state if row else StageState.PENDING.value)
        return row

    def rerun(self, shape: Shape, item_id: str, stage: str, actor: str) -> list[str]:
        """Send ``stage`` and everything downstream back to pending; returns the
        stages reset. Superseded outputs and review decisions are kept in the
        history. Refused while any of them is running."""
        from .base import HistoryRow

        targets = [s for s in shape.order if s == stage or s in shape.descendants[stage]]
        with self.transaction() as tx:  # type: ignore[attr-defined]
            tx.lock_stage_rows(shape.name, item_id)  # no claim may slip in meanwhile
            rows = tx.rows(shape.name, item_id)
            if not rows:
                self._require_item(tx, shape, item_id)  # type: ignore[attr-defined]
            busy = [s for s in targets if s in rows and rows[s].state == RUNNING]
            if busy:
                raise InvalidTransitionError(
                    f"Cannot rerun item {item_id!r} from {stage!r}: stage {busy[0]!r} is running "
                    "right now. Wait for it to finish, then rerun.",
                    item_id=item_id, stage=busy[0], state=RUNNING,
                )
            reset = [s for s in targets if s in rows and rows[s].state != StageState.PENDING.value]
            states = {s: (r.state, r.ready) for s, r in rows.items()}
            from .logic import deps_done
            first_ready = deps_done(shape.deps[stage], states)
            all_states = [st.value for st in StageState if st.value != RUNNING]
            moved = tx.set_state(shape.name, [(item_id, s) for s in reset if s != stage],
                                 StageState.PENDING.value, all_states, ready=False,
                                 clear_output=True)
            if stage in reset:
                moved += tx.set_state(shape.name, [(item_id, stage)], StageState.PENDING.value,
                                      all_states, ready=first_ready, clear_output=True)
            # Stages already pending keep no stale readiness: downstream ones wait again.
            pending = StageState.PENDING.value
            waiting = [(item_id, s) for s in targets
                       if s in rows and rows[s].state == pending and s != stage]
            tx.set_state(shape.name, waiting, pending, (pending,), ready=False)
            if stage in rows and rows[stage].state == pending:
                tx.set_state(shape.name, [(item_id, stage)], pending, (pending,), ready=first_ready)
            history = []
            for s in reset:
                old = rows[s]
                info: dict[str, Any] = {"reason": "rerun", "from_stage": stage,
                                        "previous_state": old.state}
                if old.output is not None:
                    info["superseded_output"] = json.loads(old.output)
                if old.review is not None:
                    info["cleared_review"] = json.loads(old.review)
                history.append(HistoryRow(item_id, s, StageState.PENDING.value, old.attempt,
                                          actor, details=json.dumps(info, separators=(",", ":"))))
            tx.append_history(shape.name, history)
            tx.set_item_states(shape.name, [(item_id, StageState.PENDING.value)])
        names = {s for _, s in moved}
        return [s for s in targets if s in names]

    def overdue_reviews(self, shape: Shape, stage: str, timeout: float) -> list[str]:
        """Items whose ``stage`` has awaited review for ``timeout`` seconds or more."""
        with self.transaction() as tx:  # type: ignore[attr-defined]
            return tx.overdue(shape.name, stage, tx.now - timeout)


__all__: Sequence[str] = ["HumanOps", "not_awaiting"]
