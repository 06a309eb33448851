"""What a pool thread runs: one stage, subtask or rollback call, turned into a result.

Nothing here touches the store; the scheduler commits what this returns.
Every function here returns instead of raising: a stage's exception is its
failure, recorded with its traceback.
"""

from __future__ import annotations

import json
from typing import Any

from .._crash import crash_point
from ..errors import SerializationError
from ..outcomes import Completed, FanOut, Review, Skipped, SubTask, to_outcome
from ..serialization import ItemCodec, to_json
from ..stage import StageSpec
from ..states import StageState
from ..store.base import Transition
from ..store.fanout import SubResult
from .failures import error_text, traceback_text, failure, sub_failure
from .gate import judge

#: Internal transition state: the stage returned a FanOut (never stored as a stage state).
FANOUT = "fanout"


def execute(spec: StageSpec, codec: ItemCodec, item_json: str, ctx: Any,
            policy: Any = None, gate_state: Any = None, mark: Any = None) -> tuple[Transition, Any]:
    """Restore the item and run one stage for it; never raises. Returns the
    transition and the Python value (output, review data or skip reason) for
    the signals."""
    item_id, stage, attempt = ctx.item_id, ctx.stage, ctx.attempt
    if mark is not None:
        mark.start()
    crash_point("in-stage")
    try:
        item = codec.load(item_json)
        if spec.when is not None:
            if not (spec.when(item, ctx) if spec.when_takes_ctx else spec.when(item)):
                reason = "condition false"
                return (Transition(item_id, stage, attempt, StageState.SKIPPED.value,
                                   details=json.dumps({"reason": reason})), reason)
        outcome = to_outcome(spec.call(item, ctx))
        if isinstance(outcome, Completed):
            output = to_json(outcome.output, what="output", item_id=item_id, stage=stage)
            if spec.gate is not None:
                return judge(spec, item, ctx, outcome.output, output, policy, gate_state)
            return Transition(item_id, stage, attempt, StageState.COMPLETED.value,
                              output=output), outcome.output
        if isinstance(outcome, Review):
            review = to_json({"data": outcome.data, "message": outcome.message},
                             what="review data", item_id=item_id, stage=stage)
            return Transition(item_id, stage, attempt, StageState.AWAITING_REVIEW.value,
                              review=review), outcome.data
        if isinstance(outcome, Skipped):
            return (Transition(item_id, stage, attempt, StageState.SKIPPED.value,
                               propagate=outcome.propagate,
                               details=json.dumps({"reason": outcome.reason,
                                                   "propagate": outcome.propagate})),
                    outcome.reason)
        assert isinstance(outcome, FanOut)
        return Transition(item_id, stage, attempt, FANOUT), subtasks_of(outcome, stage)
    except SerializationError as exc:  # retrying cannot make it serialisable
        return failure(item_id, stage, attempt, exc), None
    except BaseException as exc:  # noqa: BLE001 - a stage's error (even SystemExit) is its failure
        return failure(item_id, stage, attempt, exc, policy), None


def subtasks_of(fanout: FanOut, stage: str) -> list[SubTask]:
    """The FanOut's subtasks as a list; names must be unique non-empty strings."""
    spec = fanout.subtasks
    if isinstance(spec, dict) or hasattr(spec, "items"):
        subs = []
        for name, fn in spec.items():  # type: ignore[union-attr]
            if not callable(fn):
                raise TypeError(f"FanOut subtask {name!r} of stage {stage!r} is {fn!r}, not callable")
            subs.append(SubTask(name, fn))
    else:
        subs = list(spec)
        for sub in subs:
            if not isinstance(sub, SubTask):
                raise TypeError(f"FanOut of stage {stage!r} holds {sub!r}; use SubTask(name, fn, ...) "
                                "or a mapping name -> callable")
    seen: set[str] = set()
    for sub in subs:
        if not isinstance(sub.name, str) or not sub.name:
            raise ValueError(f"FanOut subtask names of stage {stage!r} must be non-empty strings, "
                             f"got {sub.name!r}")
        if sub.name in seen:
            raise ValueError(f"FanOut of stage {stage!r} has two subtasks named {sub.name!r}; "
                             "subtask names must be unique within the stage")
        seen.add(sub.name)
    return subs


def execute_subtask(sub: SubTask, item_id: str, stage: str, attempt: int,
                    policy: Any = None, mark: Any = None) -> tuple[SubResult, Any]:
    """Run one subtask; never raises."""
    if mark is not None:
        mark.start()
    crash_point("in-stage")
    try:
        value = sub.fn(*sub.args, **sub.kwargs)
        output = to_json(value, what=f"output of subtask {sub.name!r}", item_id=item_id, stage=stage)
        return SubResult(item_id, stage, sub.name, attempt, "completed", output=output), value
    except SerializationError as exc:
        return sub_failure(item_id, stage, sub.name, attempt, exc), None
    except BaseException as exc:  # noqa: BLE001 - a subtask's error is its failure
        return sub_failure(item_id, stage, sub.name, attempt, exc, policy), None


def execute_rollback(spec: StageSpec, codec: ItemCodec, item_json: str,
                     ctx: Any) -> tuple[str | None, str | None]:
    """Run one stage's rollback; returns (error, traceback), both None on success."""
    try:
        item = codec.load(item_json)
        assert spec.rollback is not None
        if spec.rollback_takes_ctx:
            spec.rollback(item, ctx)
        else:
            spec.rollback(item)
        return None, None
    except BaseException as exc:  # noqa: BLE001 - recorded as the rollback's failure
        return error_text(exc), traceback_text(exc)
