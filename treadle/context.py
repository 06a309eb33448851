"""``StageContext``: what a stage function receives as ``ctx``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from .serialization import from_json, structure

_lazy_lock = threading.Lock()


class StartMark:
    """Set by the worker when it starts a task: timeouts count from then."""

    __slots__ = ("finished", "started")

    def __init__(self) -> None:
        self.started: float | None = None
        self.finished: float | None = None

    def start(self) -> None:
        self.started = time.monotonic()

    def finish(self) -> None:
        self.finished = time.monotonic()


class Outputs(Mapping[str, Any]):
    """Read-only mapping of upstream stage name -> output, decoded on first access.

    ``types`` maps a stage name to its ``output_type`` (an attrs class or
    dataclass): that stage's output comes back as an instance of it.
    """

    __slots__ = ("_decoded", "_raw", "_types")

    def __init__(self, raw: Mapping[str, str | None],
                 types: Mapping[str, type] | None = None) -> None:
        self._raw = raw
        self._decoded: dict[str, Any] = {}
        self._types = types or {}

    def typed(self, types: Mapping[str, type]) -> Outputs:
        """The same outputs, restoring the stages named in ``types`` as those types."""
        return Outputs(self._raw, {**self._types, **types})

    def __getitem__(self, name: str) -> Any:
        try:
            return self._decoded[name]
        except KeyError:
            value = from_json(self._raw[name])
            tp = self._types.get(name)
            if tp is not None:
                value = structure(value, tp, what=f"output of stage {name!r}", stage=name)
            self._decoded[name] = value
            return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"Outputs({dict(self)!r})"


def raw_outputs(outputs: Mapping[str, Any]) -> Mapping[str, str | None] | None:
    """The JSON texts behind an :class:`Outputs` (None for any other mapping): what a
    run was given, passed on as its successor's inputs (``store/chain.py``)."""
    return outputs._raw if isinstance(outputs, Outputs) else None


class StageContext:
    """Facts about the running (item, stage).

    - ``item_id``, ``stage``, ``pipeline``: what is running;
    - ``attempt``: from 1;
    - ``outputs``: each upstream stage's output (read-only mapping);
    - ``feedback``: earlier attempts' gate or reviewer feedback, oldest first;
    - ``log``: a structlog logger bound with pipeline, item_id, stage, attempt;
    - ``cancelled``: a ``threading.Event`` set when the stage timed out or the
      runner gave it up at shutdown; long stages should check it.
    """

    __slots__ = (
        "_cancelled",
        "_log",
        "_logger",
        "attempt",
        "claimed_at",
        "feedback",
        "item_id",
        "mark",
        "outputs",
        "pipeline",
        "stage",
    )

    def __init__(self, item_id: str, stage: str, attempt: int, outputs: Mapping[str, Any], *,
                 pipeline: str = "", feedback: tuple[Any, ...] = (), logger: Any = None) -> None:
        self.item_id = item_id
        self.stage = stage
        self.attempt = attempt
        self.outputs = outputs
        self.feedback = feedback
        self.pipeline = pipeline
        self._logger = logger
        self._log: Any = None
        self._cancelled: threading.Event | None = None
        self.mark = StartMark()
        self.claimed_at = time.time()

    @property
    def log(self) -> Any:
        """A structlog logger bound with this stage's keys (created on first use)."""
        if self._log is None:
            import structlog

            base = self._logger or structlog.get_logger("treadle")
            self._log = base.bind(pipeline=self.pipeline, item_id=self.item_id, stage=self.stage,
                                  attempt=self.attempt)
        return self._log

    @property
    def cancelled(self) -> threading.Event:
        """Set when the stage should stop: timed out, or the runner is shutting down."""
        if self._cancelled is None:
            with _lazy_lock:
                if self._cancelled is None:
                    self._cancelled = threading.Event()
        return self._cancelled

    def __repr__(self) -> str:
        return (f"StageContext(item_id={self.item_id!r}, stage={self.stage!r}, "
                f"attempt={self.attempt})")
