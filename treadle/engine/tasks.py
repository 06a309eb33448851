"""The keys of the work a runner has in hand.

Every piece of work the scheduler owns is one of these frozen values, and each
has exactly one entry in the in-flight table (:mod:`treadle.engine.slots`)
from the moment it is claimed until its result is committed, it times out, it
is dropped or it is given back. A subtask's key holds its stage's key, attempt
included, so two fan-outs of the same stage (before and after a lease lapse)
never share anything.
"""

from __future__ import annotations

import attrs


@attrs.frozen(cache_hash=True)
class StageTask:
    """One claimed run of one stage of one item."""

    item_id: str
    stage: str
    attempt: int

    @property
    def key(self) -> tuple[str, str, int]:
        """The ``(item_id, stage, attempt)`` tuple the store speaks in."""
        return (self.item_id, self.stage, self.attempt)


@attrs.frozen(cache_hash=True)
class SubtaskTask:
    """One run of one fan-out subtask, under its stage's claim."""

    parent: StageTask
    name: str
    attempt: int  # the subtask's own attempt (its row's), not the stage's

    @property
    def item_id(self) -> str:
        return self.parent.item_id

    @property
    def stage(self) -> str:
        return self.parent.stage


@attrs.frozen(cache_hash=True)
class RollbackTask:
    """The rollback (compensation) of one completed stage of an item being rolled back."""

    item_id: str
    stage: str


Task = StageTask | SubtaskTask | RollbackTask

__all__ = ["RollbackTask", "StageTask", "SubtaskTask", "Task"]
