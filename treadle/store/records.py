"""The records a store exchanges with the engine, and the one JSON boundary of the store.

Plain frozen values, imported by every store module (none of which imports
another to share a base class): what a stage run produced (``Transition``),
what a runner claimed (``Claim``), what one group commit did
(``CommitResult``), the stored rows as read back (``StageRecord``,
``SubRecord``) and the fan-out records.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

import attrs

from ..errors import SerializationError
from ..states import StageState

PENDING = StageState.PENDING.value
RUNNING = StageState.RUNNING.value
COMPLETED = StageState.COMPLETED.value
SKIPPED = StageState.SKIPPED.value
FAILED = StageState.FAILED.value
REJECTED = StageState.REJECTED.value
AWAITING = StageState.AWAITING_REVIEW.value
ROLLED_BACK = StageState.ROLLED_BACK.value
WAITING = StageState.WAITING.value
#: The item state of an item whose rollback waits for a runner; ``rolling_back:<owner>``
#: while that runner runs it.
ROLLING_BACK = "rolling_back"
#: The item state of a cancelled item (terminal; see ``store/control.py``).
CANCELLED = "cancelled"
#: The kinds of control rows (``store/control.py``).
PAUSE, RESUME, CANCEL = "pause", "resume", "cancel"


class Shape(Protocol):
    """What a store needs to know of a pipeline (a ``Pipeline`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def order(self) -> tuple[str, ...]: ...
    @property
    def deps(self) -> Mapping[str, tuple[str, ...]]: ...
    @property
    def dependents(self) -> Mapping[str, tuple[str, ...]]: ...
    @property
    def descendants(self) -> Mapping[str, frozenset[str]]: ...
    @property
    def rollback_stages(self) -> frozenset[str]: ...
    @property
    def on_failure(self) -> str: ...


def dumps(value: Any, *, what: str, item_id: str | None = None, stage: str | None = None) -> str:
    """``value`` as compact JSON text, strictly: plain JSON data only (no sets, no NaN).

    Every value the store writes itself (history details, review records)
    passes here before the first row changes, so a value that cannot be
    stored (not JSON, NaN, a lone surrogate) raises :class:`SerializationError`
    and changes nothing.
    """
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")  # a lone surrogate ('\ud800') passes json.dumps, not the driver
        return text
    except (TypeError, ValueError, RecursionError) as exc:
        where = "".join((f" of item {item_id!r}" if item_id is not None else "",
                         f" at stage {stage!r}" if stage is not None else ""))
        raise SerializationError(
            f"The {what}{where} cannot be stored as JSON: {exc}. Use dicts, lists, str, int, "
            "float, bool and None.", item_id=item_id, stage=stage) from exc


@attrs.frozen
class Transition:
    """The result of one claimed (item, stage) run, to be committed.

    ``state`` is completed, failed, skipped or awaiting_review. ``output`` and
    ``review`` are JSON texts. The store applies it only if the row is still
    ``running`` under ``owner`` at ``attempt``; otherwise it is refused.
    """

    item_id: str
    stage: str
    attempt: int
    state: str
    output: str | None = None
    error: str | None = None
    traceback: str | None = None
    review: str | None = None
    propagate: bool = False
    details: str | None = None
    delay: float = 0.0
    logged_as: str | None = None  # history state when it differs (a retry: "failed")
    verdict: str | None = None    # a gate judged this output: accepted / rejected / uncertain
    escalated: bool = False       # a gated stage went to human review after its attempts
    #: ``waiting`` (a Spawn): the (child pipeline, child id, item JSON) to submit with it
    children: tuple[tuple[str, str, str], ...] = ()


@attrs.frozen
class Claim:
    """A claimed (item, stage) with what is needed to run it."""

    item_id: str
    stage: str
    attempt: int
    item: str
    outputs: Mapping[str, str | None]
    #: a fan-out cut short (a crash, a shutdown) whose subtasks can be rebuilt: their
    #: stored plan (JSON), to run instead of the stage function (docs/fanout.md)
    plan: str | None = None


class HistoryRow(NamedTuple):
    """One transition to append to the history (a tuple: many are made per commit)."""

    item_id: str
    stage: str | None
    state: str
    attempt: int
    actor: str
    error: str | None = None
    traceback: str | None = None
    details: str | None = None
    subtask: str | None = None


class ControlRow(NamedTuple):
    """One stored request every runner honours: a pause, a resume or a cancellation."""

    id: int
    kind: str
    target: str
    at: float
    actor: str
    reason: str | None


@attrs.frozen
class FanOutStart:
    """A stage returned FanOut with these subtask names (in order), and the plan
    (JSON) to rebuild them from after a crash, or None when they cannot be."""

    item_id: str
    stage: str
    attempt: int
    names: tuple[str, ...]
    plan: str | None = None


@attrs.frozen
class FanOutPlan:
    """What to run for a started fan-out; ``refused`` if the stage claim was lost."""

    item_id: str
    stage: str
    attempt: int
    run: list[tuple[str, int]]
    kept: dict[str, str | None]
    dropped: list[str]
    refused: bool = False


@attrs.frozen
class SubResult:
    """The result of one subtask run."""

    item_id: str
    stage: str
    name: str
    attempt: int
    state: str
    output: str | None = None
    error: str | None = None
    traceback: str | None = None
    logged_as: str | None = None  # history state when it differs (a retry: "failed")
    details: str | None = None


@attrs.frozen
class SubRecord:
    """A stored subtask row."""

    stage: str
    name: str
    state: str
    attempt: int
    output: str | None
    error: str | None


@attrs.frozen
class CommitResult:
    """What one group commit did."""

    accepted: list[Transition]
    refused: list[Transition]
    skipped: list[tuple[str, str]]
    finished: list[tuple[str, str]]
    claims: list[Claim]
    fanouts: list[FanOutPlan] = attrs.field(factory=list)
    sub_accepted: list[SubResult] = attrs.field(factory=list)
    sub_refused: list[SubResult] = attrs.field(factory=list)
    restarted: list[tuple[str, str, str, int]] = attrs.field(factory=list)
    #: rate-limited stages left without a token -> seconds until the next is due
    waits: dict[str, float] = attrs.field(factory=dict)
    #: fan-out subtasks left without a token of their key: (item, stage, name) ->
    #: seconds until the next is due (they stay pending)
    sub_waits: dict[tuple[str, str, str], float] = attrs.field(factory=dict)


@attrs.frozen
class Outlook:
    """Whether a runner should keep waiting: work ready (perhaps not yet due), work others hold."""

    ready: int
    running: int


@attrs.frozen
class StageRecord:
    """A stored stage run, as read back for status."""

    item_id: str
    stage: str
    state: str
    ready: bool
    attempt: int
    output: str | None
    error: str | None
    review: str | None
    updated_at: float
    fingerprint: str | None = None  # of the definition that made the result (None: unknown)
    version: str | None = None      # the pipeline version that made it


@attrs.frozen
class StatusRows:
    """What ``status`` shows of one item, as stored: its item row's fields, its stage
    rows (in pipeline order) and its subtask rows (read for many items at once)."""

    item_id: str
    submitted_at: float
    version: str | None
    stored_state: str
    stages: list[StageRecord]
    subtasks: list[SubRecord]


#: One stage row as ``plan`` reads it: (item_id, stage, state, fingerprint). A plain
#: tuple: plan reads every row of the pipeline.
ResultRow = tuple[str, str, str, "str | None"]


__all__ = [
    "AWAITING",
    "CANCEL",
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "PAUSE",
    "PENDING",
    "REJECTED",
    "RESUME",
    "ROLLED_BACK",
    "ROLLING_BACK",
    "RUNNING",
    "SKIPPED",
    "WAITING",
    "Claim",
    "CommitResult",
    "ControlRow",
    "FanOutPlan",
    "FanOutStart",
    "HistoryRow",
    "Outlook",
    "ResultRow",
    "Shape",
    "StageRecord",
    "StatusRows",
    "SubRecord",
    "SubResult",
    "Transition",
    "dumps",
]
