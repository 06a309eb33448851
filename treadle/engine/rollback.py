"""Rollbacks (compensation) on the runner side: claim items, run their rollbacks in order.

The store says which items wait for rollback and in which order their
stages roll back (reverse completion order); this runs them one at a time
per item, recording each before starting the next, so a crash resumes with
the next rollback not yet recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from .. import signals
from .._crash import crash_point
from ..context import Outputs, StageContext
from ..states import StageState
from .calls import is_async
from .lease import Lease
from .report import Reporter
from .slots import Entry, Slots
from .tasks import RollbackTask
from .worker import execute_rollback, execute_rollback_async

_log = logging.getLogger("treadle.runner")


class Rollbacks:
    """The items this runner is rolling back, and their rollbacks still to run."""

    BATCH = 16

    def __init__(self, pipeline: Any, owner: str, lease: Lease, slots: Slots,
                 reporter: Reporter, stopping: Callable[[], bool], logger: Any,
                 only: Sequence[str] | None = None) -> None:
        self.pipeline = pipeline
        self.owner = owner
        self.lease = lease
        self.slots = slots
        self.reporter = reporter
        self.stopping = stopping
        self.logger = logger
        self.enabled = pipeline.on_failure == "rollback"
        self.plans: dict[str, list[str]] = {}  # item -> stages still to roll back
        self.only = only  # Runner.advance(item_id): that item's rollback only

    def __len__(self) -> int:
        return len(self.plans)

    def pump(self) -> bool:
        """Claim items waiting for their rollbacks and start them; True if any."""
        if not self.enabled or self.stopping():
            return False
        store = self.lease.store
        claimed = self.lease.call(store.claim_rollbacks, self.pipeline, self.owner, self.BATCH,
                                  self.only)
        for item_id, plan in claimed:
            self.plans[item_id] = list(plan)
            self._next(item_id)
        return bool(claimed)

    def _next(self, item_id: str) -> None:
        plan = self.plans[item_id]
        if plan and self.stopping():
            del self.plans[item_id]  # shutting down: the next run resumes it
            return
        store = self.lease.store
        if not plan:
            del self.plans[item_id]
            state = self.lease.call(store.finish_rollback, self.pipeline, self.owner, item_id)
            if state is not None:
                self.reporter.emit(signals.item_finished, item_id=item_id, state=state)
                self.reporter.send()
            return
        stage = plan[0]
        records = self.lease.call(store.stage_records, self.pipeline, item_id)
        outputs = {r.stage: r.output for r in records if r.state == StageState.COMPLETED}
        attempt = next((r.attempt for r in records if r.stage == stage), 0)
        ctx = StageContext(item_id, stage, attempt, Outputs(outputs, self.pipeline.output_types),
                           pipeline=self.pipeline.name,
                           logger=self.logger)
        item_json, _ = self.lease.call(store.item_data, self.pipeline, item_id)
        task = RollbackTask(item_id, stage)
        spec = self.pipeline.stages[stage]
        on_loop = is_async(spec.rollback)
        if on_loop:
            self.slots.admit(Entry(task, execute_rollback_async,
                                   (spec, self.pipeline.codec, item_json, ctx, spec.timeout),
                                   ctx=ctx, aio=True))
        else:  # a deadline like its stage's (timeout=), counted from its start
            self.slots.admit(Entry(task, execute_rollback,
                                   (spec, self.pipeline.codec, item_json, ctx, ctx.mark),
                                   ctx=ctx, mark=ctx.mark))

    def done(self, task: RollbackTask, outcome: Any) -> None:
        """A rollback returned (or raised): record it, start the item's next one."""
        item_id, stage = task.item_id, task.stage
        if isinstance(outcome, BaseException):
            error, tb = f"{type(outcome).__name__}: {outcome}", None
        else:
            error, tb = outcome
        crash_point("mid-rollback")
        if error is not None:
            _log.warning("treadle: rollback of %s/%s failed: %s", item_id, stage, error)
        recorded = self.lease.call(self.lease.store.record_rollback, self.pipeline, self.owner,
                                   item_id, stage, error=error, traceback=tb)
        if not recorded or item_id not in self.plans:
            self.plans.pop(item_id, None)  # no longer ours
            return
        self.plans[item_id].pop(0)
        self._next(item_id)

    def abandon(self) -> None:
        """Shutdown: forget the items in progress; recovery hands them to the next run."""
        self.plans.clear()


__all__ = ["Rollbacks"]
