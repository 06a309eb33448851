"""What a worker runs: one stage, subtask or rollback call, turned into a result.

Nothing here touches the store; the scheduler commits what this returns.
Every function here returns instead of raising: a stage's exception is its
failure, recorded with its traceback. The logic is written once, as
coroutines (see :mod:`.calls`): ``execute`` & co. run them in a pool thread,
``execute_async`` & co. on the runner's event loop, with real cancellation
at the timeout.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .. import instrument
from .._crash import crash_point
from ..decisions import review_record
from ..errors import FanOutPlanError, SerializationError, StageTimeout
from ..limits import subtask_rates
from ..outcomes import Completed, FanOut, Review, Skipped, Spawn, SubTask, to_outcome
from ..serialization import ItemCodec, to_json
from ..stage import StageSpec
from ..states import StageState
from ..store.base import Transition
from ..store.fanout import SubResult
from .calls import resolve, run_sync
from .failures import error_text, failure, sub_failure, traceback_text
from .gate import judge
from .subplan import planned, rebuild

T = TypeVar("T")

#: Internal transition state: the stage returned a FanOut (never stored as a stage state).
FANOUT = "fanout"


def execute(spec: StageSpec, codec: ItemCodec, item_json: str, ctx: Any,
            policy: Any = None, gate_state: Any = None, mark: Any = None) -> tuple[Transition, Any]:
    """Restore the item and run one stage for it; never raises. Returns the
    transition and the Python value (output, review data or skip reason) for
    the signals."""
    if mark is not None:
        mark.start()
    run = _stage(spec, codec, item_json, ctx, policy, gate_state, True)
    if instrument.active():
        run = _observed(_stage_execution(ctx), run, _transition_outcome)
    try:
        return run_sync(run)
    finally:
        if mark is not None:
            mark.finish()


async def execute_async(spec: StageSpec, codec: ItemCodec, item_json: str, ctx: Any,
                        policy: Any = None, gate_state: Any = None,
                        timeout: float | None = None) -> tuple[Transition, Any]:
    """:func:`execute` on the event loop; at ``timeout`` the coroutine is cancelled
    (its ``finally`` blocks run) and the stage fails with ``StageTimeout``."""
    def timed_out(exc: StageTimeout) -> tuple[Transition, Any]:
        ctx.cancelled.set()
        return failure(ctx.item_id, ctx.stage, ctx.attempt, exc, policy), None

    run = _stage(spec, codec, item_json, ctx, policy, gate_state, False)
    if instrument.active():
        run = _observed(_stage_execution(ctx), run, _transition_outcome)
    return await _within(run, timeout, timed_out)


def _stage_execution(ctx: Any) -> instrument.Execution:
    return instrument.Execution("stage", ctx.pipeline, ctx.item_id, ctx.stage, ctx.attempt,
                                claimed_at=getattr(ctx, "claimed_at", None))


def _transition_outcome(result: tuple[Any, Any]) -> tuple[str, str | None]:
    return result[0].state, result[0].error


async def _observed(execution: instrument.Execution, run: Coroutine[Any, Any, T],
                    describe: Callable[[T], tuple[str, str | None]]) -> T:
    """Await ``run`` inside the instruments, telling them how it ended."""
    with instrument.around(execution):
        try:
            result = await run
        except asyncio.CancelledError:
            execution.outcome = "cancelled"
            raise
        execution.outcome, execution.error = describe(result)
        return result


async def _within(run: Coroutine[Any, Any, T], timeout: float | None,
                  timed_out: Callable[[StageTimeout], T]) -> T:
    """Await ``run``, cancelled for real after ``timeout`` seconds (then ``timed_out``)."""
    if timeout is None:
        return await run
    task = asyncio.ensure_future(run)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:  # dropped or shut down: stop the user's code too
        task.cancel()
        raise
    if task in done:
        return task.result()
    # Cancel it, and do not wait: a coroutine that swallows the cancellation must
    # not hold the stage (its late end is ignored).
    task.cancel()
    task.add_done_callback(_ignore_result)
    return timed_out(StageTimeout(f"timed out after {timeout:g} s"))


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" warning


async def _stage(spec: StageSpec, codec: ItemCodec, item_json: str, ctx: Any, policy: Any,
                 gate_state: Any, sync: bool) -> tuple[Transition, Any]:
    item_id, stage, attempt = ctx.item_id, ctx.stage, ctx.attempt
    crash_point("in-stage")
    try:
        item = codec.load(item_json)
        if spec.when is not None and not await resolve(
                spec.when(item, ctx) if spec.when_takes_ctx else spec.when(item), sync):
            why_not = getattr(spec.when, "why_not", None)
            reason = why_not(ctx) if why_not is not None else "condition false"
            return (Transition(item_id, stage, attempt, StageState.SKIPPED.value,
                               details=json.dumps({"reason": reason})), reason)
        outcome = to_outcome(await resolve(spec.call(item, ctx), sync))
        if isinstance(outcome, Completed):
            output = to_json(outcome.output, what="output", item_id=item_id, stage=stage)
            if spec.gate is not None:
                return await judge(spec, item, ctx, outcome.output, output, policy, gate_state,
                                   sync)
            return Transition(item_id, stage, attempt, StageState.COMPLETED.value,
                              output=output), outcome.output
        if isinstance(outcome, Review):
            review = to_json(review_record(outcome, spec.reviewers),
                             what="review data", item_id=item_id, stage=stage)
            return Transition(item_id, stage, attempt, StageState.AWAITING_REVIEW.value,
                              review=review), outcome.data
        if isinstance(outcome, Skipped):
            return (Transition(item_id, stage, attempt, StageState.SKIPPED.value,
                               propagate=outcome.propagate,
                               details=json.dumps({"reason": outcome.reason,
                                                   "propagate": outcome.propagate})),
                    outcome.reason)
        if isinstance(outcome, Spawn):
            return spawned(spec, item_id, attempt, outcome)
        assert isinstance(outcome, FanOut)
        subs = subtasks_of(outcome, stage)
        keys = subtask_rates(outcome.rate, outcome.key, [s.name for s in subs])
        return Transition(item_id, stage, attempt, FANOUT), planned(subs, keys, outcome.rate)
    except SerializationError as exc:  # retrying cannot make it serialisable
        return failure(item_id, stage, attempt, exc), None
    except asyncio.CancelledError:
        if not sync:
            raise  # a timeout or a shutdown: the caller records it
        return failure(item_id, stage, attempt, StageTimeout("cancelled"), policy), None
    except BaseException as exc:  # noqa: BLE001 - a stage's error (even SystemExit) is its failure
        return failure(item_id, stage, attempt, exc, policy), None


def spawned(spec: StageSpec, item_id: str, attempt: int, outcome: Spawn
            ) -> tuple[Transition, Any]:
    """The ``waiting`` transition of a Spawn, carrying its children (an empty Spawn
    completes at once with ``{}``, or what ``collect`` makes of it)."""
    from ..nested import child_rows

    children = child_rows(spec, item_id, outcome)
    if not children:
        value = spec.collect({}) if spec.collect is not None else {}
        output = to_json(value, what="output", item_id=item_id, stage=spec.name)
        return Transition(item_id, spec.name, attempt, StageState.COMPLETED.value,
                          output=output), value
    return (Transition(item_id, spec.name, attempt, StageState.WAITING.value,
                       details=json.dumps({"children": len(children)}),
                       children=tuple(children)), [c[1] for c in children])


def subtasks_of(fanout: FanOut, stage: str) -> list[SubTask]:
    """The FanOut's subtasks as a list; names must be unique non-empty strings."""
    spec = fanout.subtasks
    if isinstance(spec, dict) or hasattr(spec, "items"):
        subs = []
        for name, fn in spec.items():
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


async def execute_rebuild(plan: str, item_id: str, stage: str, attempt: int
                          ) -> tuple[Transition, Any]:
    """Rebuild a resumed fan-out from its stored plan, in place of its stage function;
    never raises (a plan that cannot be rebuilt fails the stage, for good). Runs on
    the runner's own event loop, whatever the executor: the plan's modules are
    imported where the runner runs, not on a remote worker."""
    try:
        return Transition(item_id, stage, attempt, FANOUT), rebuild(plan, item_id, stage)
    except FanOutPlanError as exc:
        return failure(item_id, stage, attempt, exc), None


def execute_subtask(sub: SubTask, item_id: str, stage: str, attempt: int,
                    policy: Any = None, mark: Any = None,
                    pipeline: str = "") -> tuple[SubResult, Any]:
    """Run one subtask; never raises."""
    if mark is not None:
        mark.start()
    run = _subtask(sub, item_id, stage, attempt, policy, True)
    if instrument.active():
        run = _observed(_subtask_execution(sub, pipeline, item_id, stage, attempt), run, _sub_outcome)
    try:
        return run_sync(run)
    finally:
        if mark is not None:
            mark.finish()


async def execute_subtask_async(sub: SubTask, item_id: str, stage: str, attempt: int,
                                policy: Any = None, timeout: float | None = None,
                                pipeline: str = "") -> tuple[SubResult, Any]:
    """:func:`execute_subtask` on the event loop, cancelled for real at ``timeout``."""
    def timed_out(exc: StageTimeout) -> tuple[SubResult, Any]:
        return sub_failure(item_id, stage, sub.name, attempt, exc, policy), None

    run = _subtask(sub, item_id, stage, attempt, policy, False)
    if instrument.active():
        run = _observed(_subtask_execution(sub, pipeline, item_id, stage, attempt), run, _sub_outcome)
    return await _within(run, timeout, timed_out)


def _subtask_execution(sub: SubTask, pipeline: str, item_id: str, stage: str,
                       attempt: int) -> instrument.Execution:
    return instrument.Execution("subtask", pipeline, item_id, stage, attempt, subtask=sub.name)


def _sub_outcome(result: tuple[SubResult, Any]) -> tuple[str, str | None]:
    return result[0].state, result[0].error


async def _subtask(sub: SubTask, item_id: str, stage: str, attempt: int, policy: Any,
                   sync: bool) -> tuple[SubResult, Any]:
    crash_point("in-stage")
    try:
        value = await resolve(sub.fn(*sub.args, **sub.kwargs), sync)
        output = to_json(value, what=f"output of subtask {sub.name!r}", item_id=item_id, stage=stage)
        return SubResult(item_id, stage, sub.name, attempt, "completed", output=output), value
    except SerializationError as exc:
        return sub_failure(item_id, stage, sub.name, attempt, exc), None
    except asyncio.CancelledError:
        if not sync:
            raise
        return sub_failure(item_id, stage, sub.name, attempt, StageTimeout("cancelled"),
                           policy), None
    except BaseException as exc:  # noqa: BLE001 - a subtask's error is its failure
        return sub_failure(item_id, stage, sub.name, attempt, exc, policy), None


def execute_rollback(spec: StageSpec, codec: ItemCodec, item_json: str,
                     ctx: Any, mark: Any = None) -> tuple[str | None, str | None]:
    """Run one stage's rollback; returns (error, traceback), both None on success."""
    if mark is not None:
        mark.start()
    run = _rollback(spec, codec, item_json, ctx, True)
    if instrument.active():
        run = _observed(_rollback_execution(ctx), run, _rollback_outcome)
    try:
        return run_sync(run)
    finally:
        if mark is not None:
            mark.finish()


async def execute_rollback_async(spec: StageSpec, codec: ItemCodec, item_json: str,
                                 ctx: Any, timeout: float | None = None
                                 ) -> tuple[str | None, str | None]:
    """:func:`execute_rollback` on the event loop, cancelled at its stage's ``timeout``."""
    run = _rollback(spec, codec, item_json, ctx, False)
    if instrument.active():
        run = _observed(_rollback_execution(ctx), run, _rollback_outcome)

    def timed_out(exc: StageTimeout) -> tuple[str | None, str | None]:
        return f"StageTimeout: rollback {exc}", None

    return await _within(run, timeout, timed_out)


def _rollback_execution(ctx: Any) -> instrument.Execution:
    return instrument.Execution("rollback", ctx.pipeline, ctx.item_id, ctx.stage, ctx.attempt)


def _rollback_outcome(result: tuple[str | None, str | None]) -> tuple[str, str | None]:
    return ("failed" if result[0] else "rolled_back"), result[0]


async def _rollback(spec: StageSpec, codec: ItemCodec, item_json: str, ctx: Any,
                    sync: bool) -> tuple[str | None, str | None]:
    try:
        item = codec.load(item_json)
        assert spec.rollback is not None
        call = spec.rollback(item, ctx) if spec.rollback_takes_ctx else spec.rollback(item)
        await resolve(call, sync)
        return None, None
    except asyncio.CancelledError:
        if not sync:
            raise
        return "StageTimeout: cancelled", None
    except BaseException as exc:  # noqa: BLE001 - recorded as the rollback's failure
        return error_text(exc), traceback_text(exc)
