"""State enums for items, stages and subtasks.

Each is a ``str`` enum equal to its plain name, so ``StageState.COMPLETED ==
"completed"`` and states round-trip through JSON and SQL as plain strings.
"""

from __future__ import annotations

import enum


class _StrEnum(str, enum.Enum):
    def __str__(self) -> str:
        return str(self.value)


class StageState(_StrEnum):
    """State of one (item, stage)."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    SKIPPED = "skipped"
    AWAITING_REVIEW = "awaiting_review"
    REJECTED = "rejected"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    #: The stage spawned child items into another pipeline and waits until they settle.
    WAITING = "waiting"


class ItemState(_StrEnum):
    """State of a whole item, derived from its stages (see docs/concepts.md)."""

    PENDING = "pending"
    RUNNING = "running"
    AWAITING_REVIEW = "awaiting_review"
    COMPLETED = "completed"
    FAILED = "failed"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"


class SubtaskState(_StrEnum):
    """State of one subtask of a fan-out stage."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


#: Stage states that let dependents start.
DONE_STATES = frozenset({StageState.COMPLETED.value, StageState.SKIPPED.value})
#: Item states after which nothing more happens without a human or a retry.
FINISHED_ITEM_STATES = frozenset(
    {ItemState.COMPLETED.value, ItemState.FAILED.value, ItemState.REJECTED.value,
     ItemState.ROLLED_BACK.value, ItemState.CANCELLED.value}
)
