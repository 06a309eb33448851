"""Human decisions on a runner: approve, reject, rerun, review timeouts."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import _bulk, signals
from ._diff import json_diff
from .decisions import TIMEOUT_ACTOR
from .serialization import normalize_id, to_json
from .status import BulkResult
from .store.records import CommitResult, dumps

if TYPE_CHECKING:
    from ._notify import Notifications
    from .pipeline import Pipeline
    from .store.base import StateStore

_UNSET: Any = object()


def _check_expect(expect: object) -> None:
    if expect is not None and (isinstance(expect, bool) or not isinstance(expect, int)):
        raise ValueError(f"expect= is the review version the reviewer saw (an int), got {expect!r}")


class ReviewMixin:
    """The decision methods of :class:`~treadle.Runner`."""

    pipeline: Pipeline
    store: StateStore
    notifications: Notifications

    def _prepare(self) -> None: ...

    def approve(self, item_id: Any, stage: str, *, data: Any = _UNSET, note: str | None = None,
                reviewer: str | None = None, attempt: int | None = None,
                expect: int | None = None, choice: str | list[str] | None = None) -> None:
        """Complete a stage awaiting review.

        Its output becomes ``data`` when given (the reviewer's edit), else the
        data the stage asked to review; dependents then see it in
        ``ctx.outputs``. The history records reviewer, note and, for an edit,
        a JSON diff. Raises ``InvalidTransitionError`` if the stage is not
        awaiting review, ``ItemNotFoundError`` for an unknown item,
        ``SerializationError`` for data that is not JSON; the store is then
        unchanged. For a gated stage, ``attempt=N`` approves the output of
        attempt N (listed in the review's ``attempts``) instead.

        ``expect`` is the review version the reviewer saw
        (``status(item).stages[stage].review.version``): if the stage was re-run
        since, the decision is refused with ``InvalidTransitionError`` saying so.

        ``choice``: the option picked, for a review that offers ``options`` (a
        list of them when it allows ``multiple``); for a review with a ``form``,
        ``data`` is the answer. Either is checked before anything changes:
        ``InvalidDecisionError`` names the options or the field at fault. A
        review with ``assignees`` refuses (``InvalidTransitionError``) a
        ``reviewer`` not among them.
        """
        _check_expect(expect)
        key, stage = self._decision_target(item_id, stage)
        output = None
        if data is not _UNSET and attempt is not None:
            raise ValueError("approve() takes data= or attempt=, not both")
        if attempt is not None:
            data = self._attempt_output(key, stage, attempt)
        if data is not _UNSET:
            output = to_json(data, what="approved data", item_id=key, stage=stage)
        self._decide(key, stage, approve=True, output=output, note=note, reviewer=reviewer,
                     actor=reviewer or "human", expect=expect, choice=choice)

    def reject(self, item_id: Any, stage: str, *, reason: str, reviewer: str | None = None,
               expect: int | None = None) -> None:
        """Reject a stage awaiting review: nothing downstream runs; the item is rejected.

        ``retry`` of a rejected stage runs it again, producing a fresh review.
        ``expect``: the review version the reviewer saw (see :meth:`approve`).
        """
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("reject() needs a reason, e.g. reason='duplicate of t1'")
        _check_expect(expect)
        key, stage = self._decision_target(item_id, stage)
        self._decide(key, stage, approve=False, output=None, note=reason, reviewer=reviewer,
                     actor=reviewer or "human", expect=expect)

    def request_changes(self, item_id: Any, stage: str, *, feedback: Any,
                        reviewer: str | None = None, expect: int | None = None) -> None:
        """Send a stage awaiting review back to run again, with ``feedback``.

        The next attempt sees the feedback in ``ctx.feedback`` (after earlier
        gate feedback) and, for a gated stage, gets a fresh attempt budget.
        ``feedback`` must be plain JSON data (else ``SerializationError``, and
        nothing changes); ``expect``: the review version the reviewer saw (see
        :meth:`approve`).
        """
        if feedback is None or (isinstance(feedback, str) and not feedback.strip()):
            raise ValueError("request_changes() needs feedback saying what to change")
        _check_expect(expect)
        key, stage = self._decision_target(item_id, stage)
        dumps(feedback, what="feedback", item_id=key, stage=stage)  # before anything changes
        self.store.request_changes(self.pipeline, key, stage, feedback=feedback,
                                   actor=reviewer or "human", reviewer=reviewer, expect=expect)
        signals.send(signals.review_decided, self.pipeline, item_id=key, stage=stage,
                     decision="changes_requested", data=feedback, reviewer=reviewer, note=None,
                     actor=reviewer or "human")

    def _attempt_output(self, key: str, stage: str, attempt: int) -> Any:
        from .errors import InvalidTransitionError

        for rec in self.store.stage_records(self.pipeline, key):
            if rec.stage == stage and rec.review:
                attempts = json.loads(rec.review).get("attempts") or []
                for a in attempts:
                    if a.get("attempt") == attempt:
                        return a.get("output")
                known = [a.get("attempt") for a in attempts]
                raise InvalidTransitionError(
                    f"Stage {stage!r} of item {key!r} has no attempt {attempt} to approve; "
                    f"its review lists attempts {known}.", item_id=key, stage=stage)
        raise InvalidTransitionError(
            f"Stage {stage!r} of item {key!r} is not awaiting review; nothing to approve.",
            item_id=key, stage=stage)

    def approve_all(self, stage: str | None = None, *, where_message: str | None = None,
                    note: str | None = None, reviewer: str | None = None) -> BulkResult:
        """Approve, as they are, every stage awaiting review (at ``stage``, or any),
        or those whose review message contains ``where_message`` (case-insensitive).

        One transaction per batch of 500; each decision is recorded in the
        history and signalled as :meth:`approve` records one. Reviews decided
        by someone else meanwhile are skipped (``BulkResult.skipped``).
        """
        return self._decide_all(stage, where_message, approve=True, note=note, reviewer=reviewer)

    def reject_all(self, stage: str | None = None, *, reason: str,
                   where_message: str | None = None, reviewer: str | None = None) -> BulkResult:
        """Reject every stage awaiting review (at ``stage``, or any; optionally only
        those whose message contains ``where_message``), like :meth:`approve_all`."""
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("reject_all() needs a reason, e.g. reason='duplicates'")
        return self._decide_all(stage, where_message, approve=False, note=reason,
                                reviewer=reviewer)

    def _decide_all(self, stage: str | None, where_message: str | None, *, approve: bool,
                    note: str | None, reviewer: str | None) -> BulkResult:
        if stage is not None:
            stage = self.pipeline.check_stage(stage)
        self._prepare()
        keys = _bulk.select_reviews(self.store, self.pipeline, stage, where_message)
        return _bulk.decide(self.store, self.pipeline, keys, approve=approve, note=note,
                            reviewer=reviewer)

    def rerun(self, item_id: Any, *, from_stage: str, actor: str = "human") -> list[str]:
        """Send ``from_stage`` and everything downstream back to ``pending``.

        Outputs are superseded (kept in the history), review decisions
        downstream are cleared (recorded as such); the next run redoes them.
        Returns the stages reset.
        """
        key, stage = self._decision_target(item_id, from_stage)
        return self.store.rerun(self.pipeline, key, stage, actor)

    def apply_review_timeouts(self) -> int:
        """Decide every review that waited past its stage's ``review_timeout``
        (actor ``timeout``), or, for a stage with ``escalate_to``, reassign it to
        those reviewers and notify them (once; nothing is decided). Returns how
        many were decided or escalated."""
        from .errors import InvalidTransitionError

        decided = 0
        for name, spec in self.pipeline.stages.items():
            if spec.review_timeout is None:
                continue
            for item_id in self.store.overdue_reviews(self.pipeline, name, spec.review_timeout):
                if spec.escalate_to:
                    try:
                        escalated = self.store.escalate_review(
                            self.pipeline, item_id, name, spec.escalate_to, TIMEOUT_ACTOR)
                    except InvalidTransitionError:
                        continue  # decided meanwhile
                    if escalated:
                        self.notifications.escalated(item_id, name)
                        decided += 1
                    continue
                try:
                    self._decide(item_id, name, approve=spec.on_timeout == "approve", output=None,
                                 note=f"review timed out after {spec.review_timeout:g} s",
                                 reviewer=None, actor=TIMEOUT_ACTOR)
                except InvalidTransitionError:
                    continue
                decided += 1
        return decided

    # -- internals -----------------------------------------------------------
    def _decision_target(self, item_id: Any, stage: str) -> tuple[str, str]:
        self._prepare()
        return normalize_id(item_id), self.pipeline.check_stage(stage)

    def _decide(self, key: str, stage: str, *, approve: bool, output: str | None,
                note: str | None, reviewer: str | None, actor: str,
                expect: int | None = None, choice: Any = None) -> CommitResult:
        decision = "approved" if approve else "rejected"
        review = {"decision": decision, "reviewer": reviewer, "note": note}
        if choice is not None:
            review["choice"] = choice
        details: dict[str, Any] = {"decision": decision, "reviewer": reviewer, "note": note}
        if output is not None:
            original = self._review_data(key, stage)
            details["diff"] = json_diff(original, json.loads(output))
            details["edited"] = bool(details["diff"])
        result = self.store.decide(self.pipeline, key, stage, approve=approve, output=output,
                                   review=review, actor=actor, details=details, expect=expect)
        data = json.loads(result.accepted[0].output) if approve and result.accepted[0].output else None
        signals.send(signals.review_decided, self.pipeline, item_id=key, stage=stage,
                     decision=decision, data=data, reviewer=reviewer, note=note, actor=actor)
        for item, state in result.finished:
            signals.send(signals.item_finished, self.pipeline, item_id=item, state=state)
        return result

    def _review_data(self, key: str, stage: str) -> Any:
        for rec in self.store.stage_records(self.pipeline, key):
            if rec.stage == stage and rec.review:
                return json.loads(rec.review).get("data")
        return None
