"""The exceptions treadle raises.

Every error derives from :class:`TreadleError`; each subclass also inherits the
builtin that fits (``ValueError``, ``KeyError``, ...) so generic handlers keep
working. Messages name the item, stage or value at fault and say what to do.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest candidate, or ``""``."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean {matches[0]!r}?" if matches else ""


class TreadleError(Exception):
    """Base class of every error raised by treadle."""


class PipelineDefinitionError(TreadleError, ValueError):
    """The pipeline definition is invalid; raised when a ``Pipeline`` is built."""

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage


class CycleError(PipelineDefinitionError):
    """The stages' dependencies form a cycle."""

    def __init__(self, cycle: Sequence[str]) -> None:
        path = " -> ".join(cycle)
        super().__init__(
            f"Stages form a cycle: {path}. Remove one of these dependencies.",
            stage=cycle[0] if cycle else None,
        )
        self.cycle = list(cycle)


class PipelineCycleError(CycleError):
    """Pipelines spawn child items into each other in a cycle (``@stage(spawns=...)``)."""

    def __init__(self, cycle: Sequence[str], *, stage: str | None = None) -> None:
        path = " -> ".join(cycle)
        PipelineDefinitionError.__init__(
            self, f"Pipelines spawn into each other in a cycle: {path}. A pipeline may not spawn "
            "child items into itself or into a pipeline that spawns back into it; remove one "
            "spawns=.", stage=stage)
        self.cycle = list(cycle)


class UnknownStageError(PipelineDefinitionError, KeyError):
    """A stage name that the pipeline does not define."""

    def __init__(self, message: str, *, stage: str) -> None:
        PipelineDefinitionError.__init__(self, message, stage=stage)

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicateStageError(PipelineDefinitionError):
    """Two stages share one name."""


class InvalidStageError(PipelineDefinitionError, TypeError):
    """A stage is not callable or its signature cannot take ``(item)`` or ``(item, ctx)``."""


class InvalidLimitError(PipelineDefinitionError):
    """A flow-control limit is declared wrong: in ``Pipeline(limits=...)``,
    ``@stage(limits=...)`` or ``FanOut(rate=...)``; ``.limit`` names it."""

    def __init__(self, message: str, *, limit: str | None, stage: str | None = None) -> None:
        super().__init__(message, stage=stage)
        self.limit = limit


class UnknownLimitError(InvalidLimitError, KeyError):
    """A stage or fan-out names a limit the Pipeline does not declare."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class InvalidTransitionError(TreadleError, ValueError):
    """A state change that the current state does not allow; nothing was changed."""

    def __init__(
        self, message: str, *, item_id: str | None = None, stage: str | None = None,
        state: str | None = None,
    ) -> None:
        super().__init__(message)
        self.item_id = item_id
        self.stage = stage
        self.state = state


class InvalidDecisionError(InvalidTransitionError):
    """A review decision whose choice or form answer does not fit what the review
    asked (``field`` names the form field at fault); nothing was changed."""

    def __init__(self, message: str, *, item_id: str | None = None, stage: str | None = None,
                 field: str | None = None) -> None:
        super().__init__(message, item_id=item_id, stage=stage, state="awaiting_review")
        self.field = field


class ItemNotFoundError(TreadleError, KeyError):
    """No item with that id is in the store for this pipeline."""

    def __init__(self, item_id: str, pipeline: str) -> None:
        super().__init__(
            f"Item {item_id!r} is not in pipeline {pipeline!r}; submit it first, or check the id "
            "and the store (python -m treadle status TARGET, or runner.items(), lists the known ones)."
        )
        self.item_id = item_id
        self.pipeline = pipeline

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidItemError(TreadleError, TypeError):
    """A submitted item has no usable ``id`` or is not of the pipeline's item type."""


class SerializationError(TreadleError, TypeError):
    """A value cannot be stored as JSON (after cattrs unstructuring)."""

    def __init__(self, message: str, *, item_id: str | None = None, stage: str | None = None) -> None:
        super().__init__(message)
        self.item_id = item_id
        self.stage = stage


class StoreError(TreadleError, RuntimeError):
    """The state store cannot be used: unreachable, bad URL, or a newer schema."""


class StoreOptionError(StoreError, ValueError):
    """A store option (a store URL's ``?name=value``, or a setting such as the item
    cache's byte bound) has a value it cannot take; nothing was opened or changed."""

    def __init__(self, message: str, *, option: str, value: object) -> None:
        super().__init__(message)
        self.option = option
        self.value = value


class StageTimeout(TreadleError, TimeoutError):
    """A stage ran past its ``timeout``."""


class FanOutPlanError(TreadleError, ImportError):
    """A fan-out's stored subtask plan cannot be rebuilt after a restart (its function
    is gone or no longer importable, or the plan is unreadable); the stage fails with it.

    ``retry`` of the stage calls the stage function again, which rebuilds the FanOut
    from the current code (docs/fanout.md).
    """

    def __init__(self, message: str, *, item_id: str | None = None, stage: str | None = None,
                 subtask: str | None = None, function: str | None = None) -> None:
        super().__init__(message)
        self.item_id = item_id
        self.stage = stage
        self.subtask = subtask
        self.function = function
