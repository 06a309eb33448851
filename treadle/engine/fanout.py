"""Fan-outs in progress: which subtasks of which stage claim still have to finish.

A fan-out belongs to the stage claim (item, stage, attempt) that started it.
Everything about it is keyed by that claim, so a late result of an old
fan-out (before a lease lapse) can never touch a newer one of the same stage.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from ..limits import Rate, resolve_rates
from ..outcomes import SubTask
from ..states import StageState
from ..store.base import Transition
from .tasks import StageTask


@attrs.frozen
class Fanned:
    """What a stage's FanOut asks for: its subtasks, each rate-limited one's key
    (name -> key), the FanOut's rates (key -> Rate, None: the Pipeline's), and
    their stored plan (or why there is none)."""

    subtasks: list[SubTask]
    keys: dict[str, str] = attrs.field(factory=dict)
    rates: Mapping[str, Rate | None] = attrs.field(factory=dict)
    #: the subtasks written down for a resume (engine/subplan.py), or why they cannot be
    plan: str | None = None
    why_not: str | None = None

    def rated(self, pipeline: str, named: Mapping[str, Any]) -> dict[str, tuple[str, Rate]]:
        """name -> (key, rate) of the subtasks whose key has a rate; raises
        ``InvalidLimitError`` for a rate that contradicts the Pipeline's."""
        if not self.rates:
            return {}
        rates = resolve_rates(pipeline, self.rates, named)
        return {n: (k, rates[k]) for n, k in self.keys.items()}


@attrs.define
class FanRun:
    """One fan-out: its subtasks, and the outputs and errors so far."""

    task: StageTask
    subtasks: dict[str, SubTask]
    outputs: dict[str, str | None] = attrs.field(factory=dict)
    errors: dict[str, str] = attrs.field(factory=dict)
    remaining: set[str] = attrs.field(factory=set)
    cancelled: bool = False  # some subtasks were given back at shutdown: it cannot finish now
    #: subtasks whose key has a rate: name -> (key, rate)
    rated: dict[str, tuple[str, Rate]] = attrs.field(factory=dict)

    def settle(self, name: str, output: str | None, error: str | None, completed: bool) -> bool:
        """Record one subtask's final result; True when the fan-out is complete."""
        self.remaining.discard(name)
        if completed:
            self.outputs[name] = output
        else:
            self.errors[name] = error or "failed"
        return not self.remaining and not self.cancelled

    def result(self) -> Transition:
        """The stage's transition once every subtask has finished."""
        t = self.task
        names = list(self.subtasks)
        if self.errors:
            failed = [n for n in names if n in self.errors]
            detail = "; ".join(f"{n}: {self.errors[n]}" for n in failed[:5])
            return Transition(t.item_id, t.stage, t.attempt, StageState.FAILED.value,
                              error=f"{len(failed)} of {len(names)} subtasks failed ({detail})",
                              details=json.dumps({"failed_subtasks": failed}))
        body = ",".join(f"{json.dumps(n)}:{self.outputs[n] or 'null'}" for n in names)
        return Transition(t.item_id, t.stage, t.attempt, StageState.COMPLETED.value,
                          output="{" + body + "}")


class FanOuts:
    """The fan-outs this runner is running, by stage claim."""

    def __init__(self) -> None:
        self.runs: dict[StageTask, FanRun] = {}
        self._current: dict[tuple[str, str], StageTask] = {}

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Iterator[FanRun]:
        return iter(list(self.runs.values()))

    def add(self, run: FanRun) -> None:
        self.runs[run.task] = run
        self._current[(run.task.item_id, run.task.stage)] = run.task

    def get(self, task: StageTask) -> FanRun | None:
        return self.runs.get(task)

    def current(self, item_id: str, stage: str) -> FanRun | None:
        """The fan-out of this runner's current claim of (item, stage), if any."""
        task = self._current.get((item_id, stage))
        return None if task is None else self.runs.get(task)

    def pop(self, task: StageTask) -> FanRun | None:
        run = self.runs.pop(task, None)
        if run is not None and self._current.get((task.item_id, task.stage)) == task:
            del self._current[(task.item_id, task.stage)]
        return run

    def live(self) -> bool:
        """Some fan-out can still finish (is not given up)."""
        return any(not r.cancelled for r in self.runs.values())

    def clear(self) -> None:
        self.runs.clear()
        self._current.clear()


__all__ = ["FanOuts", "FanRun", "Fanned"]
