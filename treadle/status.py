"""Read-only views of what the store knows: returned by ``Runner.status`` and friends."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs

from .states import ItemState, StageState, SubtaskState


@attrs.frozen
class SubtaskStatus:
    """One subtask of a fan-out stage."""

    name: str
    state: SubtaskState
    attempts: int = 0
    error: str | None = None
    output: Any = None


@attrs.frozen
class ReviewInfo:
    """What a reviewer saw and decided."""

    data: Any
    message: str = ""
    decision: str | None = None
    reviewer: str | None = None
    note: str | None = None
    #: The review version: the stage's attempt when it went to review (it grows with
    #: every re-run). Pass it as ``expect=`` to a decision so that it applies to what
    #: the reviewer saw, and is refused if the stage was re-run meanwhile.
    version: int | None = None
    #: The decision made on an earlier result of this stage, before it was rerun
    #: because its definition changed (``rerun --stale``): decision, reviewer, note, data.
    previous: dict[str, Any] | None = None
    #: What the review offers: its options (None: approve / reject only), whether
    #: several may be chosen, the default pick, and the option(s) chosen.
    options: list[str] | None = None
    multiple: bool = False
    default: Any = None
    choice: Any = None
    #: The form's fields (name, type, nullable, required, default), or None.
    form: list[dict[str, Any]] | None = None
    #: Who may decide (empty: anyone), and whether a review timeout reassigned it.
    assignees: list[str] = attrs.field(factory=list)
    escalated_to: list[str] | None = None


@attrs.frozen
class StageStatus:
    """One (item, stage): state, attempts, output, last error, review, subtasks."""

    stage: str
    state: StageState
    attempts: int = 0
    output: Any = None
    error: str | None = None
    review: ReviewInfo | None = None
    subtasks: dict[str, SubtaskStatus] = attrs.field(factory=dict)
    updated_at: float | None = None
    #: For a gated stage: every judged attempt (attempt, at, verdict, output).
    attempt_log: list[dict[str, Any]] = attrs.field(factory=list)
    #: The fingerprint of the stage definition that made the result (None: not
    #: recorded, e.g. made before fingerprints), and the pipeline version then.
    fingerprint: str | None = None
    version: str | None = None


@attrs.frozen
class ItemStatus:
    """An item and every stage of the pipeline, in topological order."""

    item_id: str
    state: ItemState
    stages: dict[str, StageStatus]
    submitted_at: float | None = None
    #: The pipeline version the item is recorded at (set at submission, or by a migration).
    version: str | None = None
    #: A child item's parent: (parent pipeline, parent id, spawning stage), else None.
    parent: tuple[str, str, str] | None = None
    #: The child items this item spawned (``Spawn``), in spawn order.
    children: list[ChildStatus] = attrs.field(factory=list)


@attrs.frozen
class ChildStatus:
    """One child item spawned by a stage of its parent (docs/nested.md)."""

    stage: str
    pipeline: str
    item_id: str
    state: ItemState


@attrs.frozen
class HistoryEntry:
    """One recorded transition; the history is append-only."""

    seq: int
    at: float
    item_id: str
    stage: str | None
    subtask: str | None
    state: str
    attempt: int
    actor: str
    error: str | None = None
    traceback: str | None = None
    details: Any = None


@attrs.frozen
class Event:
    """One committed event of the feed (:meth:`treadle.Runner.events`).

    ``id`` increases in commit order and is the cursor: pass the last one seen
    as ``since`` to get what came after. ``state`` names what happened (the
    history's state: ``submitted``, ``running`` (a start), ``completed``,
    ``failed``, ``skipped``, ``awaiting_review``, ``approved``... see
    docs/volume.md); ``item_id`` is None for events of the whole pipeline
    (``paused``, ``resumed``).
    """

    id: int
    at: float
    item_id: str | None
    stage: str | None
    subtask: str | None
    state: str
    attempt: int
    actor: str
    error: str | None = None
    details: Any = None


@attrs.frozen
class RunReport:
    """What a ``Runner.run()`` did, and where the workload stands at its end."""

    executed: int
    completed: int
    failed: int
    skipped: int
    awaiting_review: int
    refused: int
    items: dict[str, int]
    interrupted: bool = False
    failures: list[tuple[str, str, str | None]] = attrs.field(factory=list)
    #: Stages skipped without running because an upstream Skipped(propagate=True).
    skipped_downstream: int = 0
    #: Stage runs in hand when their item was cancelled (their results were discarded).
    cancelled: int = 0
    #: Stage runs ready but held by a pause when the run ended (``resume`` frees them).
    paused: int = 0

    @property
    def ok(self) -> bool:
        """True when no item has failed for good."""
        return self.items.get(ItemState.FAILED.value, 0) == 0


@attrs.frozen
class BulkResult:
    """What a bulk decision or retry did.

    ``done``: the (item_id, stage) pairs decided or put back to pending, in
    selection order; ``skipped``: those selected but changed by someone else
    before their batch ran (decided, re-run or retried meanwhile; for a
    retry also items rolled back), left as they were.
    """

    done: list[tuple[str, str]] = attrs.field(factory=list)
    skipped: list[tuple[str, str]] = attrs.field(factory=list)

    @property
    def item_ids(self) -> list[str]:
        """The ids of the items in ``done``, each once, in order."""
        return list(dict.fromkeys(i for i, _ in self.done))

    def by_stage(self) -> dict[str, int]:
        """How many of ``done`` per stage."""
        return dict(Counter(s for _, s in self.done))
