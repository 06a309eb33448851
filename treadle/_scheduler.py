"""The scheduler: one thread that decides and records; pool threads only run stages.

Each turn of the loop is one *group commit*: every stage and subtask result
that came back since the last turn is written, fan-outs are started,
dependents that became ready are marked, and the next batch of ready work is
claimed, all in one transaction. Work is handed to the pool only after that
transaction has committed, so a stage's result is durable before any
dependent starts, and signals report only committed transitions.
"""

from __future__ import annotations

import collections
import heapq
import json
import logging
import os
import queue
import signal as _signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any, Union

import attrs
import structlog

from . import signals
from ._crash import crash_point
from ._execute import FANOUT, execute, execute_rollback, execute_subtask, failure, sub_failure
from ._gate import gate_history
from ._pool import WorkerPool
from .context import Outputs, StageContext, StartMark
from .contrib.retry import resolve as resolve_retry
from .errors import StageTimeout, StoreError
from .store.urls import mask_url
from .outcomes import SubTask
from .pipeline import Pipeline
from .serialization import from_json
from .states import StageState
from .store.base import Claim, CommitResult, StateStore, Transition
from .store.fanout import FanOutPlan, FanOutStart, SubResult

_log = logging.getLogger("treadle.runner")

StageKey = tuple[str, str, int]            # item_id, stage, attempt
SubKey = tuple[str, str, int, str]         # ... and subtask name


def _outcome(fut: Future[Any]) -> Any:
    """A finished future's result, or the exception it raised."""
    try:
        return fut.result()
    except BaseException as exc:  # noqa: BLE001 - handed to the scheduler
        return exc


def pid_alive(pid: int) -> bool:
    """True if a process with ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


@attrs.define
class _FanRun:
    """A fan-out in progress: its subtasks, and the outputs and errors so far."""

    attempt: int
    subtasks: dict[str, SubTask]
    outputs: dict[str, str | None] = attrs.field(factory=dict)
    errors: dict[str, str] = attrs.field(factory=dict)
    remaining: set[str] = attrs.field(factory=set)
    cancelled: bool = False  # some subtasks were given back at shutdown: never finish now


@attrs.define
class Counters:
    executed: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    skipped_downstream: int = 0
    awaiting_review: int = 0
    refused: int = 0
    interrupted: bool = False


class Scheduler:
    """One run of the loop, for one runner identity (owner)."""

    POLL = 0.2  # seconds between looks at the store while others hold the work

    def __init__(self, pipeline: Pipeline, store: StateStore, *, owner: str, workers: int,
                 executor: Executor | None, lease: float, grace: float,
                 only: Sequence[str] | None = None) -> None:
        self.pipeline = pipeline
        self.store = store
        self.owner = owner
        self.workers = workers
        self.executor = executor
        self.lease = lease
        self.grace = grace
        self.only = only
        self.host = socket.gethostname()
        self.capacity = max(128, 8 * workers)
        self.results: queue.SimpleQueue[tuple[Union[StageKey, SubKey], Any]] = queue.SimpleQueue()
        self.inflight: dict[Union[StageKey, SubKey], StageContext | None] = {}
        self.futures: dict[Union[StageKey, SubKey], Future[Any]] = {}
        self.done: list[tuple[Transition, Any]] = []
        self.sub_done: list[tuple[SubResult, Any]] = []
        self.fan_starts: list[tuple[FanOutStart, list[SubTask]]] = []
        self.fanouts: dict[tuple[str, str], _FanRun] = {}
        self.counters = Counters()
        self.stop = threading.Event()
        self._logger = structlog.get_logger("treadle")
        self._pool: WorkerPool | None = None
        self._abandoned = False
        self._orphans_possible = False
        self._rollback = pipeline.on_failure == "rollback"
        self.rollbacks: dict[str, list[str]] = {}  # item -> stages still to roll back
        self.policies = {n: resolve_retry(s.retry) for n, s in pipeline.stages.items()}
        self.limits = {n: s.concurrency for n, s in pipeline.stages.items() if s.concurrency}
        self.active: collections.Counter[str] = collections.Counter()  # running per limited stage
        self.parked: dict[str, collections.deque[tuple[Any, ...]]] = {n: collections.deque() for n in self.limits}
        self.deadlines: list[tuple[float, Any]] = []   # (monotonic deadline, key)
        self.timers: list[tuple[float, tuple[str, str, str]]] = []  # subtask retries due
        self.restarts: list[tuple[str, str, str]] = []
        self._sub_attempts: dict[Any, int] = {}
        self.zombies: set[Any] = set()  # timed out but still running: hold their slot
        self.marks: dict[Any, StartMark] = {}  # when each task with a timeout started
        # In another process a task cannot tell us when it started: time from submission.
        self._remote = isinstance(executor, ProcessPoolExecutor)

    # -- the loop ------------------------------------------------------------
    def run(self) -> Counters:
        if self.executor is None:
            self._pool = WorkerPool(self.workers, self.results)
        restore = self._install_signal_handlers()
        self.store.register_runner(self.owner, self.host, os.getpid(), self.lease)
        try:
            self._recover()
            self._pump_rollbacks()
            self._loop()
        finally:
            try:
                self._shutdown()
            finally:
                self.store.unregister_runner(self.owner)
                restore()
                if self._pool is not None:
                    # Stages still running past the grace period were released; do not
                    # wait for them here (a thread cannot be stopped, only asked to).
                    self._pool.shutdown(wait=not self._abandoned)
        return self.counters

    def _pending_writes(self) -> bool:
        return bool(self.done or self.sub_done or self.fan_starts or self.restarts)

    def _loop(self) -> None:
        next_beat = time.monotonic() + self.lease / 3
        next_recover = time.monotonic() + 1.0
        while True:
            self._drain(block=False)
            self._tick()
            stopping = self.stop.is_set()
            limit = 0 if stopping else self.capacity - len(self.inflight)
            claims: list[Claim] = []
            if self._pending_writes() or limit > 0:
                claims = self._commit(max(limit, 0))
            now = time.monotonic()
            if now >= next_beat:
                self._call(self.store.heartbeat, self.owner, self.lease)
                next_beat = now + self.lease / 3
            if stopping:
                return
            if self._pending_writes():
                continue  # e.g. a fan-out just finished: commit its stage now
            if self.inflight or self.fanouts:
                if not claims or len(self.inflight) >= self.capacity:
                    wait = min(self.POLL, max(0.0, next_beat - now), self._next_event(now))
                    self._drain(block=True, timeout=wait)
                continue
            if claims:
                continue
            look = self._call(self.store.outlook, self.pipeline, self.only)
            if look.ready == 0 and look.running == 0:
                if self._pump_rollbacks():
                    continue
                return
            if now >= next_recover:
                self._recover()
                next_recover = now + 1.0
            self._drain(block=True, timeout=self.POLL)

    def _next_event(self, now: float) -> float:
        """Seconds until the next stage deadline or subtask retry."""
        nxt = min([d for d, _ in self.deadlines[:1]] + [t for t, _ in self.timers[:1]], default=None)
        return self.POLL if nxt is None else max(0.0, nxt - now)

    def _tick(self) -> None:
        """Fail stages and subtasks past their timeout; queue subtask retries that are due."""
        now = time.monotonic()
        while self.deadlines and self.deadlines[0][0] <= now:
            _, key = heapq.heappop(self.deadlines)
            if key not in self.inflight:
                continue
            mark = self.marks.get(key)
            if mark is not None:  # the clock starts when a worker starts the task
                timeout = self.pipeline.stages[key[1]].timeout or 0.0
                if mark.started is None or mark.started + timeout > now:
                    due = (mark.started if mark.started is not None else now) + timeout
                    heapq.heappush(self.deadlines, (due, key))
                    continue
            self._expire(key)
        while self.timers and self.timers[0][0] <= now:
            self.restarts.append(heapq.heappop(self.timers)[1])

    def _expire(self, key: Union[StageKey, SubKey]) -> None:
        ctx = self.inflight.pop(key)
        self.futures.pop(key, None)
        self.marks.pop(key, None)
        self.zombies.add(key)
        if ctx is not None:
            ctx.cancelled.set()
        timeout = self.pipeline.stages[key[1]].timeout
        exc = StageTimeout(f"timed out after {timeout:g} s")
        policy = self.policies[key[1]]
        if len(key) == 4:
            attempt = self._sub_attempts.pop(key, 1)
            self.sub_done.append((sub_failure(key[0], key[1], key[3], attempt, exc, policy), None))
        else:
            self.done.append((failure(key[0], key[1], key[2], exc, policy), None))

    def _drain(self, *, block: bool, timeout: float | None = None) -> None:
        try:
            if block:
                self._take(*self.results.get(timeout=timeout))
            while True:
                self._take(*self.results.get_nowait())
        except queue.Empty:
            pass

    def _take(self, key: Union[StageKey, SubKey], outcome: Any) -> None:
        if len(key) == 2:
            self._rollback_done(key, outcome)  # type: ignore[arg-type]
            return
        if key not in self.inflight:
            if key in self.zombies:  # a timed-out run finally returned: free its slot
                self.zombies.discard(key)
                self._release_slot(key[1])
            return  # timed out or released: its late result is not ours to record
        del self.inflight[key]
        self.futures.pop(key, None)
        self.marks.pop(key, None)
        sub_attempt = self._sub_attempts.pop(key, 1)
        self._release_slot(key[1])
        if isinstance(outcome, BaseException):  # e.g. a process pool that broke
            exc = outcome
            if len(key) == 4:
                result, value = sub_failure(key[0], key[1], key[3], sub_attempt, exc,
                                            self.policies[key[1]]), None
            else:
                result, value = failure(key[0], key[1], key[2], exc), None
        else:
            result, value = outcome
        if isinstance(result, SubResult):
            self.sub_done.append((result, value))
        elif result.state == FANOUT:
            names = tuple(s.name for s in value)
            self.fan_starts.append((FanOutStart(result.item_id, result.stage, result.attempt, names), value))
        else:
            self.done.append((result, value))

    def _commit(self, limit: int) -> list[Claim]:
        batch, subs, starts, restarts = self.done, self.sub_done, self.fan_starts, self.restarts
        if batch or subs:
            crash_point("before-result-commit")
        result = self._call(
            self.store.commit,
            self.pipeline, self.owner, [t for t, _ in batch], limit, self.only,
            fanouts=[s for s, _ in starts], subtasks=[r for r, _ in subs], restarts=restarts,
        )
        if self._orphans_possible:
            self._orphans_possible = False
            keep = {k for k in self.inflight if len(k) == 3}
            keep |= {(i, s, r.attempt) for (i, s), r in self.fanouts.items()}
            keep |= {(c.item_id, c.stage, c.attempt) for c in result.claims}
            released = self._call(self.store.release_orphans, self.pipeline, self.owner, keep)
            if released:
                _log.warning("treadle: gave back %d claim(s) whose commit reply was lost", released)
        self.done, self.sub_done, self.fan_starts, self.restarts = [], [], [], []
        if batch or subs:
            crash_point("after-result-commit")
        if result.claims:
            crash_point("after-claim-commit")
        self._report(batch, subs, result)
        if self._rollback and any(t.state == StageState.FAILED for t in result.accepted):
            self._pump_rollbacks()
        self._fan_out(starts, result.fanouts)
        self._collect_subtasks(subs, result)
        restarted = {(i, s, n) for i, s, n, _ in result.restarted}
        for item_id, stage, name in restarts:
            if (item_id, stage, name) not in restarted:
                self._drop_fanout((item_id, stage))  # refused: the stage is no longer ours
        for item_id, stage, name, attempt in result.restarted:
            run = self.fanouts.get((item_id, stage))
            if run is not None and not run.cancelled and not self.stop.is_set():
                self._start_subtask(item_id, stage, run, name, attempt)
        self._dispatch(result.claims)
        return result.claims

    # -- fan-out -------------------------------------------------------------
    def _fan_out(self, starts: list[tuple[FanOutStart, list[SubTask]]], plans: list[FanOutPlan]) -> None:
        for (start, subtasks), plan in zip(starts, plans):
            if plan.refused:
                self.counters.refused += 1
                continue
            key = (start.item_id, start.stage)
            by_name = {s.name: s for s in subtasks}
            run = _FanRun(start.attempt, by_name, outputs=dict(plan.kept),
                          remaining={n for n, _ in plan.run})
            self.fanouts[key] = run
            if self.stop.is_set():  # shutting down: start nothing; the stage is released
                run.cancelled = True
                continue
            for name, sub_attempt in plan.run:
                self._start_subtask(start.item_id, start.stage, run, name, sub_attempt)
            if not run.remaining:
                self._finish_fanout(key, run)

    def _start_subtask(self, item_id: str, stage: str, run: _FanRun, name: str, attempt: int) -> None:
        signals.send(signals.subtask_started, self.pipeline, item_id=item_id, stage=stage,
                     subtask=name, attempt=attempt)
        key = (item_id, stage, run.attempt, name)
        self._sub_attempts[key] = attempt
        self._submit(key, execute_subtask, run.subtasks[name], item_id, stage, attempt,
                     self.policies[stage], StartMark())

    def _collect_subtasks(self, subs: list[tuple[SubResult, Any]], result: CommitResult) -> None:
        values = {(r.item_id, r.stage, r.name, r.attempt): v for r, v in subs}
        for r in result.sub_accepted:
            key = (r.item_id, r.stage)
            kw = dict(item_id=r.item_id, stage=r.stage, subtask=r.name, attempt=r.attempt)
            if r.state == "completed":
                signals.send(signals.subtask_completed, self.pipeline,
                             data=values.get((r.item_id, r.stage, r.name, r.attempt)), **kw)
            else:
                signals.send(signals.subtask_failed, self.pipeline, error=r.error,
                             final=r.state == "failed", **kw)
            run = self.fanouts.get(key)
            if run is None:
                continue
            if r.state == "pending":  # a retry: run it again once its wait is over
                delay = json.loads(r.details or "{}").get("retry_in", 0.0)
                heapq.heappush(self.timers, (time.monotonic() + delay, (r.item_id, r.stage, r.name)))
                continue
            run.remaining.discard(r.name)
            if r.state == "completed":
                run.outputs[r.name] = r.output
            else:
                run.errors[r.name] = r.error or "failed"
            if not run.remaining and not run.cancelled:
                self._finish_fanout(key, run)
        self.counters.refused += len(result.sub_refused)
        for r in result.sub_refused:  # the stage's claim was lost: this fan-out is not ours
            self._drop_fanout((r.item_id, r.stage))

    def _drop_fanout(self, key: tuple[str, str]) -> None:
        """Forget a fan-out whose stage claim this runner lost (another took it over)."""
        run = self.fanouts.pop(key, None)
        if run is None:
            return
        for sub_key in [k for k in self.inflight if len(k) == 4 and k[:2] == key]:
            self.inflight.pop(sub_key, None)  # late results are ignored
            fut = self.futures.pop(sub_key, None)
            if fut is not None:
                fut.cancel()

    def _finish_fanout(self, key: tuple[str, str], run: _FanRun) -> None:
        del self.fanouts[key]
        (item_id, stage), attempt = key, run.attempt
        names = list(run.subtasks)
        if run.errors:
            failed = [n for n in names if n in run.errors]
            detail = "; ".join(f"{n}: {run.errors[n]}" for n in failed[:5])
            t = Transition(item_id, stage, attempt, StageState.FAILED.value,
                           error=f"{len(failed)} of {len(names)} subtasks failed ({detail})",
                           details=json.dumps({"failed_subtasks": failed}))
            self.done.append((t, None))
            return
        body = ",".join(f"{json.dumps(n)}:{run.outputs[n] or 'null'}" for n in names)
        output = "{" + body + "}"
        self.done.append((Transition(item_id, stage, attempt, StageState.COMPLETED.value,
                                     output=output), None))

    # -- after commit --------------------------------------------------------
    def _report(self, batch: list[tuple[Transition, Any]], subs: list[tuple[SubResult, Any]],
                result: CommitResult) -> None:
        p = self.pipeline
        crash_point("before-signals")
        values = {(t.item_id, t.stage, t.attempt): v for t, v in batch}
        c = self.counters
        c.executed += len(batch) + len(subs)
        for t in result.refused:
            c.refused += 1
            _log.warning("treadle: result of %s/%s attempt %d refused: its claim was lost "
                         "(lease lapsed and another runner took it over)", t.item_id, t.stage, t.attempt)
        for t in result.accepted:
            value = values.get((t.item_id, t.stage, t.attempt))
            kw = dict(item_id=t.item_id, stage=t.stage, attempt=t.attempt)
            if t.details is not None and '"verdict"' in t.details:
                self._report_gate(t, value, kw)
            if t.state == StageState.COMPLETED:
                c.completed += 1
                if value is None and t.output is not None:
                    value = from_json(t.output)
                signals.send(signals.stage_completed, p, data=value, **kw)
            elif t.state == StageState.FAILED:
                c.failed += 1
                signals.send(signals.stage_failed, p, error=t.error, final=True, **kw)
            elif t.state == StageState.SKIPPED:
                c.skipped += 1
                signals.send(signals.stage_skipped, p, data=value, **kw)
            elif t.state == StageState.PENDING:  # failed, with another attempt scheduled
                if t.error is not None:
                    signals.send(signals.stage_failed, p, error=t.error, final=False, **kw)
                signals.send(signals.retry_scheduled, p, error=t.error, data=value, **kw)
            elif t.state == StageState.AWAITING_REVIEW:
                c.awaiting_review += 1
                review = from_json(t.review) or {}
                signals.send(signals.review_required, p, data=review.get("data"),
                             message=review.get("message", ""), **kw)
        for item_id, stage in result.skipped:
            c.skipped_downstream += 1
            signals.send(signals.stage_skipped, p, item_id=item_id, stage=stage, attempt=0,
                         data="upstream skipped")
        for item_id, state in result.finished:
            signals.send(signals.item_finished, p, item_id=item_id, state=state)

    def _report_gate(self, t: Transition, value: Any, kw: dict[str, Any]) -> None:
        record = json.loads(t.details or "{}")
        verdict = record["verdict"]
        signal = signals.quality_passed if verdict["verdict"] == "accepted" else signals.quality_failed
        signals.send(signal, self.pipeline, data=verdict, **kw)
        if t.state == StageState.AWAITING_REVIEW and '"escalated":true' in (t.review or ""):
            signals.send(signals.escalated, self.pipeline, data=verdict, **kw)

    def _submit(self, key: Union[StageKey, SubKey], fn: Callable[..., Any], *args: Any,
                ctx: StageContext | None = None) -> None:
        """Hand work to the pool, or park it while its stage is at its concurrency limit."""
        self.inflight[key] = ctx
        stage = key[1]
        if stage in self.limits:
            if self.active[stage] >= self.limits[stage]:
                self.parked[stage].append((key, fn, args))
                return
            self.active[stage] += 1
        self._start(key, fn, args)

    def _release_slot(self, stage: str) -> None:
        if stage not in self.limits:
            return
        self.active[stage] -= 1
        while self.parked[stage] and self.active[stage] < self.limits[stage]:
            key, fn, args = self.parked[stage].popleft()
            if key in self.inflight:
                self.active[stage] += 1
                self._start(key, fn, args)

    def _start(self, key: Union[StageKey, SubKey], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        timeout = self.pipeline.stages[key[1]].timeout
        if timeout is not None and len(key) > 2:
            heapq.heappush(self.deadlines, (time.monotonic() + timeout, key))
            mark = args[-1] if args and isinstance(args[-1], StartMark) else None
            if mark is not None and not self._remote:
                self.marks[key] = mark
        if self._pool is not None:
            self._pool.submit(key, fn, args)
            return
        assert self.executor is not None
        try:
            fut = self.executor.submit(fn, *args)
        except BaseException as exc:  # noqa: BLE001 - an executor that is shutting down
            fut = Future()
            fut.set_exception(exc)
        self.futures[key] = fut
        fut.add_done_callback(lambda f, key=key: self.results.put((key, _outcome(f))))

    def _dispatch(self, claims: list[Claim]) -> None:
        p = self.pipeline
        for claim in claims:
            spec = p.stages[claim.stage]
            ancestors = p.ancestors[claim.stage]
            raw = {s: o for s, o in claim.outputs.items() if s in ancestors}
            gate_state = None
            if spec.gate is not None:  # earlier verdicts and feedback, from the history
                gate_state = gate_history(self._call(self.store.history, p, claim.item_id),
                                          claim.stage)
            ctx = StageContext(claim.item_id, claim.stage, claim.attempt, Outputs(raw),
                               pipeline=p.name, logger=self._logger,
                               feedback=gate_state.feedback if gate_state else ())
            key = (claim.item_id, claim.stage, claim.attempt)
            signals.send(signals.stage_started, p, item_id=claim.item_id, stage=claim.stage,
                         attempt=claim.attempt)
            self._submit(key, execute, spec, p.codec, claim.item, ctx, self.policies[claim.stage],
                         gate_state, ctx.mark, ctx=ctx)

    # -- rollback ----------------------------------------------------------------
    def _pump_rollbacks(self) -> bool:
        """Claim items waiting for their rollbacks and start them; True if any."""
        if not self._rollback or self.stop.is_set():
            return False
        claimed = self._call(self.store.claim_rollbacks, self.pipeline, self.owner, 16)
        for item_id, plan in claimed:
            self.rollbacks[item_id] = plan
            self._next_rollback(item_id)
        return bool(claimed)

    def _next_rollback(self, item_id: str) -> None:
        plan = self.rollbacks[item_id]
        if plan and self.stop.is_set():
            del self.rollbacks[item_id]  # shutting down: the next run resumes it
            return
        if not plan:
            del self.rollbacks[item_id]
            state = self._call(self.store.finish_rollback, self.pipeline, self.owner, item_id)
            if state is not None:
                signals.send(signals.item_finished, self.pipeline, item_id=item_id, state=state)
            return
        stage = plan[0]
        records = self.store.stage_records(self.pipeline, item_id)
        outputs = {r.stage: r.output for r in records if r.state == StageState.COMPLETED}
        attempt = next((r.attempt for r in records if r.stage == stage), 0)
        ctx = StageContext(item_id, stage, attempt, Outputs(outputs), pipeline=self.pipeline.name,
                           logger=self._logger)
        item_json, _ = self.store.item_data(self.pipeline, item_id)
        key = (item_id, stage)
        self.inflight[key] = ctx  # type: ignore[index]
        self._start(key, execute_rollback, (self.pipeline.stages[stage], self.pipeline.codec,
                                            item_json, ctx))

    def _rollback_done(self, key: tuple[str, str], outcome: Any) -> None:
        if self.inflight.pop(key, None) is None:  # type: ignore[call-overload]
            return
        item_id, stage = key
        error, tb = (f"{type(outcome).__name__}: {outcome}", None) if isinstance(outcome, BaseException) else outcome
        crash_point("mid-rollback")
        if error is not None:
            _log.warning("treadle: rollback of %s/%s failed: %s", item_id, stage, error)
        if not self._call(self.store.record_rollback, self.pipeline, self.owner, item_id, stage,
                          error=error, traceback=tb):
            self.rollbacks.pop(item_id, None)  # no longer ours
            return
        self.rollbacks[item_id].pop(0)
        self._next_rollback(item_id)

    # -- the store connection ----------------------------------------------------
    RECONNECT_FOR = 60.0  # seconds of retrying a lost database connection

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the store; while the connection is lost, retry with back-off.

        A transaction cut by a lost connection is rolled back by the server,
        or committed with its reply lost: the retried results are then refused
        (already applied), and claims it made are given back afterwards.
        """
        deadline = time.monotonic() + self.RECONNECT_FOR
        pause = 0.05
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the store says which are retryable
                if not self.store.is_disconnect(exc):
                    raise
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"Lost the connection to the store {mask_url(self.store.url)} for "
                        f"{self.RECONNECT_FOR:g} s ({type(exc).__name__}); giving up. Nothing "
                        "committed is lost: run again once the database is reachable."
                    ) from None
                self._orphans_possible = True
                _log.warning("treadle: lost the database connection (%s); reconnecting",
                             type(exc).__name__)
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    # -- leases, shutdown ------------------------------------------------------
    def _recover(self) -> None:
        stale = self._call(self.store.recover, self.pipeline, self.host, pid_alive)
        if stale:
            _log.warning("treadle: recovered %d stale claim(s) of dead runners", len(stale))

    def _shutdown(self) -> None:
        """Stop claiming; let running work finish for ``grace`` seconds; commit
        what finished; give the rest back as pending for the next run.

        Work claimed but not started yet (queued in the pool) is cancelled at
        once and given back, so no new stage starts after a stop. Whatever
        goes wrong while finishing up, the claims are given back."""
        self.stop.set()
        queued = [k for k, f in list(self.futures.items()) if f.cancel()]
        if self._pool is not None:
            queued += self._pool.cancel_queued()
        for parked in self.parked.values():
            queued += [entry[0] for entry in parked]
            parked.clear()
        for key in queued:
            self.inflight.pop(key, None)
            self.futures.pop(key, None)
        unstarted_subs = {(k[0], k[1]) for k in queued if len(k) == 4}
        for key in unstarted_subs:
            run = self.fanouts.get(key)
            if run is not None:
                run.cancelled = True  # it cannot finish now: its stage is released below
        deadline = time.monotonic() + self.grace
        def waiting() -> bool:
            return bool(self.inflight) or any(not r.cancelled for r in self.fanouts.values())

        next_beat = time.monotonic() + self.lease / 3
        try:
            while waiting() and time.monotonic() < deadline:
                self._drain(block=True, timeout=min(0.1, max(0.0, deadline - time.monotonic())))
                if self._pending_writes():
                    self._commit(0)
                if time.monotonic() >= next_beat:  # keep our claims while we wait
                    self._call(self.store.heartbeat, self.owner, self.lease)
                    next_beat = time.monotonic() + self.lease / 3
            if self._pending_writes():
                self._commit(0)
        except Exception:  # noqa: BLE001 - release below no matter what
            _log.exception("treadle: could not commit the last results at shutdown; "
                           "their stages run again on the next run")
        self._abandoned = bool(self.inflight or self.zombies)
        keys: set[StageKey] = {k for k in self.inflight if len(k) == 3}  # type: ignore[misc]
        unstarted: set[StageKey] = {k for k in queued if len(k) == 3}  # type: ignore[misc]
        keys |= {(i, s, run.attempt) for (i, s), run in self.fanouts.items()}
        keys |= {(s.item_id, s.stage, s.attempt) for s, _ in self.fan_starts}
        keys |= {(t.item_id, t.stage, t.attempt) for t, _ in self.done}  # never committed
        for ctx in self.inflight.values():
            if ctx is not None:
                ctx.cancelled.set()
        self.inflight.clear()
        self.fanouts.clear()
        if keys or unstarted:
            self.store.release(self.pipeline, self.owner, sorted(keys), sorted(unstarted - keys))
        if keys:
            _log.warning("treadle: %d stage(s) still running at shutdown were released; "
                         "they run again on the next run", len(keys))

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {}

        def handler(signum: int, frame: Any) -> None:
            if self.stop.is_set() and signum == _signal.SIGINT:
                raise KeyboardInterrupt
            self.counters.interrupted = True
            self.stop.set()

        for sig in (_signal.SIGINT, _signal.SIGTERM):
            try:
                previous[sig] = _signal.signal(sig, handler)
            except (ValueError, OSError):
                pass

        def restore() -> None:
            for sig, old in previous.items():
                _signal.signal(sig, old)

        return restore
