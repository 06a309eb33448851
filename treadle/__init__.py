"""treadle: persistent, resumable, human-in-the-loop pipelines.

Decorate plain functions with :func:`stage`, list them in a :class:`Pipeline`,
and let a :class:`Runner` move items through them on a durable store
(:func:`open_store`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .context import StageContext
from .decisions import chose
from .errors import (
    CycleError,
    DuplicateStageError,
    FanOutPlanError,
    InvalidDecisionError,
    InvalidItemError,
    InvalidLimitError,
    InvalidStageError,
    InvalidTransitionError,
    ItemNotFoundError,
    PipelineCycleError,
    PipelineDefinitionError,
    SerializationError,
    StageTimeout,
    StoreError,
    StoreOptionError,
    TreadleError,
    UnknownLimitError,
    UnknownStageError,
)
from .metrics import StageMetrics
from .outcomes import Completed, FanOut, Review, Skipped, Spawn, SubTask
from .pipeline import Pipeline
from .runner import Runner
from .stage import StageSpec, stage
from .states import ItemState, StageState, SubtaskState
from .status import (
    BulkResult,
    Event,
    HistoryEntry,
    ItemStatus,
    ReviewInfo,
    RunReport,
    StageStatus,
    SubtaskStatus,
)
from .store import MemoryStore, StateStore, open_store
from .verdicts import Accepted, Rejected, Uncertain

try:
    __version__ = version("treadle")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "Accepted", "BulkResult", "Completed", "CycleError", "DuplicateStageError", "Event", "FanOut",
    "FanOutPlanError", "HistoryEntry", "InvalidDecisionError", "InvalidItemError",
    "InvalidLimitError", "InvalidStageError", "InvalidTransitionError", "ItemNotFoundError",
    "ItemState", "ItemStatus", "MemoryStore", "Pipeline", "PipelineCycleError",
    "PipelineDefinitionError", "Rejected", "Review", "ReviewInfo", "RunReport", "Runner",
    "SerializationError", "Skipped", "Spawn", "StageContext", "StageMetrics", "StageSpec",
    "StageState", "StageStatus", "StageTimeout", "StateStore", "StoreError", "StoreOptionError",
    "SubTask", "SubtaskState", "SubtaskStatus", "TreadleError", "Uncertain", "UnknownLimitError",
    "UnknownStageError", "chose", "open_store", "stage",
]
