"""The scheduler loop: drain results, one commit, dispatch. Nothing else.

Each turn is one *group commit*: every stage and subtask result that came
back since the last turn is written, fan-outs are started, dependents that
became ready are marked, and the next batch of ready work is claimed, all in
one transaction. Work is handed to the pool only after that transaction has
committed, so a stage's result is durable before any dependent starts, and
signals report only committed transitions.

Who owns what: every claimed stage is held by exactly one of the in-flight
table (:mod:`.slots`), a fan-out in progress (:mod:`.fanout`), or the list of
results waiting for the next commit. Shutdown gives back whatever any of
them still holds; the heartbeat (:mod:`.lease`) and signal delivery
(:mod:`.report`) run on threads of their own.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import json
import logging
import math
import queue
import signal as _signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

import attrs
import structlog

from .. import signals
from .._crash import crash_point
from ..context import Outputs, StageContext, StartMark, raw_outputs
from ..contrib.retry import resolve as resolve_retry
from ..errors import InvalidLimitError, StageTimeout, StoreError
from ..limits import Rate
from ..outcomes import SubTask
from ..pipeline import Pipeline
from ..states import StageState
from ..store.base import Claim, CommitResult, StateStore, Transition
from ..store.fanout import FanOutStart, SubResult
from ..store.urls import mask_url
from .aio import AsyncPool
from .calls import is_async
from .control import Control
from .failures import clean_text, failure, sub_failure
from .fanout import FanOuts, FanRun
from .gate import gate_history
from .gctune import fewer_collections
from .lease import Lease
from .pool import ExecutorPool, ThreadPool
from .report import Counters, Reporter
from .rollback import Rollbacks
from .slots import Entry, Slots
from .tasks import RollbackTask, StageTask, SubtaskTask, Task
from .throttle import KeyQueue, Throttle
from .worker import (
    FANOUT,
    execute,
    execute_async,
    execute_rebuild,
    execute_subtask,
    execute_subtask_async,
)

_log = logging.getLogger("treadle.runner")
#: A fan-out's subtasks whose key has a rate: name -> (key, rate).
Rated = dict[str, tuple[str, Rate]]
COMPLETED = StageState.COMPLETED.value


def _average(average: float | None, sample: float) -> float:
    """The next value of an exponential running average."""
    return sample if average is None else 0.8 * average + 0.2 * sample


def _is_value_error(exc: BaseException) -> bool:
    """Did a commit fail because of a value the database refuses (a lone surrogate,
    a NUL, a number out of range), rather than because the store is in trouble?"""
    return isinstance(exc, (ValueError, TypeError, OverflowError))


@attrs.define
class _Writes:
    """Results waiting for the next group commit."""

    done: list[tuple[Transition, Any]] = attrs.field(factory=list)
    subs: list[tuple[SubtaskTask, SubResult, Any]] = attrs.field(factory=list)
    #: fan-outs to start: the stage, its subtasks, and the rate-limited ones' (key, rate)
    starts: list[tuple[StageTask, FanOutStart, list[SubTask], Rated]] = attrs.field(factory=list)
    restarts: list[tuple[StageTask, str]] = attrs.field(factory=list)
    #: (item, stage) -> the outputs a completed run was given: its successor's inputs
    inputs: dict[tuple[str, str], Mapping[str, str | None]] = attrs.field(factory=dict)

    def __bool__(self) -> bool:
        return bool(self.done or self.subs or self.starts or self.restarts)

    def claims(self) -> set[tuple[str, str, int]]:
        """The stage claims these writes still hold."""
        held = {(t.item_id, t.stage, t.attempt) for t, _ in self.done}
        held |= {start[0].key for start in self.starts}
        held |= {task.parent.key for task, _, _ in self.subs}
        return held


class Scheduler:
    """One run of the loop, for one runner identity (owner)."""

    POLL = 0.2  # seconds between looks at the store while others hold the work
    SIGNALS_STUCK_AFTER = 30.0  # a receiver running this long no longer delays run()'s return

    def __init__(self, pipeline: Pipeline, store: StateStore, *, owner: str, workers: int,
                 executor: Executor | None, lease: float, grace: float,
                 only: Sequence[str] | None = None, async_limit: int = 1000) -> None:
        self.pipeline = pipeline
        self.async_limit = async_limit
        self.store = store
        self.owner = owner
        self.workers = workers
        self.executor = executor
        self.grace = grace
        self.only = only
        self.results: queue.SimpleQueue[tuple[Task, Any]] = queue.SimpleQueue()
        self.counters = Counters()
        self.reporter = Reporter(pipeline, self.counters)
        self.lease = Lease(store, owner, lease)
        self.stop = threading.Event()
        self.writes = _Writes()
        self.fanouts = FanOuts()
        self.timers: list[tuple[float, int, StageTask, str]] = []  # subtask retries due
        self._seq = itertools.count()
        self.undispatched: collections.deque[Claim] = collections.deque()
        self._releasing = False
        self.policies = {n: resolve_retry(s.retry) for n, s in pipeline.stages.items()}
        # stages whose function, condition or gate is ``async def`` run on the event loop
        self.on_loop = {n for n, s in pipeline.stages.items()
                        if is_async(s.fn) or is_async(s.when) or is_async(s.gate)}
        self._logger = structlog.get_logger("treadle")
        self.pool: ThreadPool | ExecutorPool | None = None
        self.aio: AsyncPool | None = None
        self.slots: Slots = None  # type: ignore[assignment]  # made with the pool in run()
        self.rollbacks: Rollbacks = None  # type: ignore[assignment]
        self._capacity = 0
        self._task_s: float | None = None  # running average of a task's duration
        self._commit_s = 0.002             # ... and of a commit's
        self._sized_by: ExecutorPool | None = None
        self.throttle = Throttle(pipeline.order)  # rate-limited stages waiting for a token
        self.keyq = KeyQueue()  # fan-out subtasks waiting for a token of their key
        self.unplanned: set[str] = set()  # stages whose FanOut could not be stored (warned)

    # -- the run -------------------------------------------------------------
    def _start_pool(self) -> None:
        p = self.pipeline
        if self.executor is None:
            pool: ThreadPool | ExecutorPool = ThreadPool(self.workers, self.results)
            # our threads say when they start: claim ahead for larger group commits
            self._capacity = max(512, 32 * self.workers)
        else:
            pool = ExecutorPool(self.executor, self.workers, self.results)
            self._sized_by = pool  # claims follow what the executor can run, as it changes
        self.pool = pool
        limits = {n: s.concurrency for n, s in p.stages.items() if s.concurrency}
        timeouts = {n: s.timeout for n, s in p.stages.items() if s.timeout is not None}
        self.aio = AsyncPool(self.async_limit, self.results)  # its thread starts on first use
        self.slots = Slots(pool, limits, timeouts, self.aio)
        self.rollbacks = Rollbacks(p, self.owner, self.lease, self.slots, self.reporter,
                                   self.stop.is_set, self._logger, self.only)
        self.control = Control(p, self.store, self.lease)

    @property
    def capacity(self) -> int:
        """How many tasks to hold at most (claimed ahead of the pool).

        With its own threads, a runner claims what its workers can run until the
        next commit, not more: with fast stages that is many (up to
        ``max(512, 32 x workers)``, so each commit carries many results); with
        slow ones, a few per worker, which leaves ready work for other runners
        on the same store to share.
        """
        extra = self.async_limit if self.on_loop else 0
        if self._sized_by is not None:
            return 2 * self._sized_by.capacity + extra
        w = self.workers
        if self._task_s is None:  # nothing measured yet: a little ahead
            return 2 * w + extra
        ahead = w * (2 + math.ceil(self._commit_s / max(self._task_s, 1e-6)))
        return min(self._capacity, ahead) + extra


    def run(self) -> Counters:
        """Run until nothing more can move (or a stop); returns the counters."""
        with fewer_collections():  # gctune.py: fewer cyclic GC walks while running
            return self._run()

    def _run(self) -> Counters:
        self._start_pool()
        assert self.pool is not None
        restore = self._install_signal_handlers()
        abandoned = False
        try:
            self.lease.register()
            self.lease.start()
            try:
                self.lease.recover(self.pipeline)
                self.control.refresh(force=True)
                self.rollbacks.pump()
                self._loop()
            finally:
                try:
                    abandoned = self._shutdown()
                finally:
                    self.lease.stop()
                    self.lease.unregister()
        finally:
            restore()
            self.reporter.flush(self.SIGNALS_STUCK_AFTER)
            # Stages still running past the grace period were released; do not
            # wait for them here (a thread cannot be stopped, only asked to).
            self.pool.shutdown(wait=not abandoned)
            if self.aio is not None:
                self.aio.shutdown(wait=True)
        return self.counters

    def _loop(self) -> None:
        next_recover = time.monotonic() + 1.0
        slots = self.slots
        while True:
            self._drain(block=False)
            self._tick()
            self._follow_control()
            stopping = self.stop.is_set()
            room = 0 if stopping else self.capacity - len(slots)
            claims: list[Claim] = []
            if self.writes or room > 0:
                claims = self._commit(max(room, 0))
            if stopping:
                return
            if self.writes:
                continue  # e.g. a fan-out just finished: commit its stage now
            now = time.monotonic()
            if len(slots) or len(self.fanouts) or self.timers:
                if not claims or len(slots) >= self.capacity:
                    self._drain(block=True, timeout=self._next_event(now))
                continue
            if claims:
                continue
            self._follow_control(force=True)  # a resume may free work
            look = self.lease.call(self.store.outlook, self.pipeline, self.only,
                                   self.control.stages)
            if look.ready == 0 and look.running == 0:
                if self.rollbacks.pump():
                    continue
                if self.reporter.settle(self.SIGNALS_STUCK_AFTER):
                    continue  # receivers ran (one may have approved something): look again
                return
            if now >= next_recover:
                self.lease.recover(self.pipeline)
                next_recover = now + 1.0
            if look.ready:  # due soon (a retry's delay): look again shortly
                self._drain(block=True, timeout=self.throttle.wait(self.POLL))
            else:  # others hold the work: until a commit (PostgreSQL notifies) or a recovery is due
                self.lease.call(self.store.wait_for_events, self.pipeline,
                                max(0.0, min(1.0, next_recover - time.monotonic())))

    def _next_event(self, now: float) -> float:
        """Seconds until the next deadline or subtask retry (at most POLL)."""
        nxt = self.slots.next_deadline()
        for due in (self.timers[0][0] if self.timers else None, self.keyq.next_due()):
            if due is not None:
                nxt = due if nxt is None else min(nxt, due)
        wait = self.throttle.wait(self.POLL)
        return wait if nxt is None else min(wait, max(0.0, nxt - now))

    # -- results in ----------------------------------------------------------
    def _drain(self, *, block: bool, timeout: float | None = None) -> None:
        try:
            if block:
                self._take(*self.results.get(timeout=timeout))
            while True:
                self._take(*self.results.get_nowait())
        except queue.Empty:
            pass

    def _take(self, task: Task, outcome: Any) -> None:
        entry = self.slots.finish(task)
        if entry is None:
            return  # timed out, dropped or released: its late result is not ours to record
        mark = entry.mark
        if mark is not None and mark.started is not None and mark.finished is not None:
            self._task_s = _average(self._task_s, mark.finished - mark.started)
        if isinstance(task, RollbackTask):
            self.rollbacks.done(task, outcome)
        elif isinstance(outcome, BaseException):  # the pool failed it (e.g. a broken process pool)
            self._fail(task, outcome)
        elif isinstance(task, SubtaskTask):
            self.writes.subs.append((task, outcome[0], outcome[1]))
        else:
            t, value = outcome
            if t.state == FANOUT:
                try:  # a FanOut rate that contradicts the Pipeline's limit fails the stage
                    rated = value.rated(self.pipeline.name, self.pipeline.named_limits)
                except InvalidLimitError as exc:
                    self._fail(task, exc)
                    return
                if value.plan is None:
                    self._unplanned(t.stage, value.why_not)
                names = tuple(s.name for s in value.subtasks)
                self.writes.starts.append(
                    (task, FanOutStart(t.item_id, t.stage, t.attempt, names, value.plan),
                     value.subtasks, rated))
            else:
                self.writes.done.append((t, value))
                raw = raw_outputs(entry.ctx.outputs) if entry.ctx is not None else None
                if raw is not None and t.state == COMPLETED:
                    self.writes.inputs[(t.item_id, t.stage)] = raw

    def _unplanned(self, stage: str, why_not: str | None) -> None:
        """Say once per stage (and run) that its fan-outs have no plan to resume from."""
        if stage in self.unplanned:
            return
        self.unplanned.add(stage)
        _log.warning("treadle: the subtasks of stage %r cannot be stored for a resume (%s); "
                     "after a crash mid fan-out its function runs again to rebuild them "
                     "(see 'Rebuildable subtasks' in docs/fanout.md)", stage, why_not)

    def _tick(self) -> None:
        """Fail tasks past their timeout; queue subtask retries that are due."""
        now = time.monotonic()
        for entry in self.slots.expire(now):
            self._expired(entry)
        if self._sized_by is not None:
            self.slots.refill()
        while self.timers and self.timers[0][0] <= now:
            _, _, parent, name = heapq.heappop(self.timers)
            if self.fanouts.get(parent) is not None:
                self.writes.restarts.append((parent, name))
        for parent, name in self.keyq.take_due(now):  # a token of their key is due
            if self.fanouts.get(parent) is not None:
                self.writes.restarts.append((parent, name))

    def _expired(self, entry: Entry) -> None:
        if entry.ctx is not None:
            entry.ctx.cancelled.set()
        task = entry.task
        timeout = self.pipeline.stages[task.stage].timeout or 0.0
        if isinstance(task, RollbackTask):  # recorded as failed, the item's next rollback runs
            self.rollbacks.done(task, (f"StageTimeout: rollback timed out after {timeout:g} s",
                                       None))
        else:
            self._fail(task, StageTimeout(f"timed out after {timeout:g} s"))

    def _fail(self, task: StageTask | SubtaskTask, exc: BaseException) -> None:
        """Record ``exc`` as the failure of a stage or subtask run (its retry policy applies)."""
        policy = self.policies[task.stage]
        if isinstance(task, SubtaskTask):
            self.writes.subs.append((task, sub_failure(task.item_id, task.stage, task.name,
                                                       task.attempt, exc, policy), None))
        else:
            self.writes.done.append((failure(task.item_id, task.stage, task.attempt, exc, policy),
                                     None))

    # -- the commit ----------------------------------------------------------
    def _commit(self, limit: int) -> list[Claim]:
        writes, self.writes = self.writes, _Writes()
        if writes.done or writes.subs:
            crash_point("before-result-commit")
        try:
            result = self._store_commit(writes, limit)
        except StoreError:
            self._restore(writes)
            raise
        except Exception as exc:  # one bad result must not block the others
            if writes and _is_value_error(exc):
                return self._commit_apart(writes, limit, exc)
            self._restore(writes)  # the store is in trouble, not a value: stop, give back
            raise self._store_trouble(exc) from exc
        self._after_commit(writes, result)
        return result.claims

    def _store_commit(self, writes: _Writes, limit: int) -> CommitResult:
        started = time.monotonic()
        result = self.lease.call(
            self.store.commit, self.pipeline, self.owner, [t for t, _ in writes.done], limit,
            self.only, fanouts=[start[1] for start in writes.starts],
            subtasks=[r for _, r, _ in writes.subs],
            restarts=[(t.item_id, t.stage, name) for t, name in writes.restarts],
            stages=self.throttle.stages(self.control.stages), inputs=writes.inputs,
            sub_rates=self._sub_rates(writes),
        )
        self.throttle.note(result.waits)
        self._commit_s = _average(self._commit_s, time.monotonic() - started)
        return result

    def _sub_rates(self, writes: _Writes) -> dict[tuple[str, str, str], tuple[str, Rate]]:
        """(item, stage, name) -> (key, rate) of the subtasks these writes start that
        wait for a token of their key."""
        out = {(t.item_id, t.stage, n): kr for t, _, _, rated in writes.starts
               for n, kr in rated.items()}
        for parent, name in writes.restarts:
            run = self.fanouts.get(parent)
            if run is not None and name in run.rated:
                out[(parent.item_id, parent.stage, name)] = run.rated[name]
        return out

    def _restore(self, writes: _Writes) -> None:
        """Put writes that could not be committed back (shutdown releases their claims)."""
        self.writes.done[:0] = writes.done
        self.writes.subs[:0] = writes.subs
        self.writes.starts[:0] = writes.starts

    def _commit_apart(self, writes: _Writes, limit: int, exc: Exception) -> list[Claim]:
        """A group commit failed on something other than the connection (a value
        the database cannot store): commit each result on its own; one that still
        fails is recorded as that stage's (or subtask's) failure instead."""
        _log.warning("treadle: a group commit of %d result(s) failed (%s: %s); committing them "
                     "one by one", len(writes.done) + len(writes.subs) + len(writes.starts),
                     type(exc).__name__, clean_text(str(exc)))
        pieces = [*(_Writes(done=[d]) for d in writes.done),
                  *(_Writes(subs=[s]) for s in writes.subs),
                  *(_Writes(starts=[st]) for st in writes.starts)]
        if writes.restarts:
            pieces.append(_Writes(restarts=list(writes.restarts)))
        for n, piece in enumerate(pieces):
            try:
                self._commit_piece(piece)
            except StoreError:
                for rest in pieces[n + 1:]:  # not committed: shutdown gives their claims back
                    self._restore(rest)
                raise
        result = self._store_commit(_Writes(), limit)
        self._after_commit(_Writes(), result)
        return result.claims

    def _commit_piece(self, piece: _Writes) -> None:
        """Commit one result on its own; if the store refuses its value, record the
        stage's (or subtask's) failure instead. Raises StoreError (piece kept) otherwise."""
        try:
            self._after_commit(piece, self._store_commit(piece, 0))
        except StoreError:
            self._restore(piece)
            raise
        except Exception as err:
            if not _is_value_error(err):
                self._restore(piece)
                raise self._store_trouble(err) from err
            self._store_failure(piece, err)

    def _store_trouble(self, exc: Exception) -> StoreError:
        return StoreError(
            f"The store {mask_url(self.store.url)} failed a commit ({type(exc).__name__}: "
            f"{clean_text(str(exc))}); the run stops. Nothing committed is lost: run again "
            "once the database is healthy.")

    def _store_failure(self, piece: _Writes, err: Exception) -> None:
        message = (f"SerializationError: the result could not be stored "
                   f"({type(err).__name__}: {clean_text(str(err))})")
        fallback = _Writes()
        for t, _ in piece.done:
            fallback.done.append((Transition(t.item_id, t.stage, t.attempt,
                                             StageState.FAILED.value, error=message), None))
        for sub, r, _ in piece.subs:
            fallback.subs.append((sub, SubResult(r.item_id, r.stage, r.name, r.attempt, "failed",
                                                 error=message), None))
        for started, *_ in piece.starts:
            fallback.done.append((Transition(started.item_id, started.stage, started.attempt,
                                             StageState.FAILED.value, error=message), None))
        if not fallback:
            return
        try:
            self._after_commit(fallback, self._store_commit(fallback, 0))
        except StoreError:
            self._restore(piece)  # the connection is gone: shutdown gives the claim back
            raise
        except Exception as again:
            keys = sorted(piece.claims())
            try:
                self.lease.call(self.store.release, self.pipeline, self.owner, keys)
                given_back = "they go back to pending"
            except Exception as exc:  # noqa: BLE001 - nothing more to try: end the run
                given_back = f"giving them back failed too ({type(exc).__name__})"
            raise StoreError(
                f"The store refuses to record the results of {keys}, even as failures "
                f"({type(again).__name__}: {clean_text(str(again))}); {given_back}. The run "
                "stops here rather than retry them for ever; nothing committed is lost. "
                "Check the database, then run again.") from again

    def _after_commit(self, writes: _Writes, result: CommitResult) -> None:
        """Everything that follows a committed transaction, in this order: claims
        taken into hand, counters and signals, fan-outs, subtask results, dispatch."""
        self.undispatched.extend(result.claims)
        if self.lease.orphans_possible:
            self._release_orphans(writes, result.claims)
        if writes.done or writes.subs:
            crash_point("after-result-commit")
        if result.claims:
            crash_point("after-claim-commit")
        self.reporter.committed(writes.done, [(r, v) for _, r, v in writes.subs], result)
        if self.rollbacks.enabled and any(t.state == StageState.FAILED for t in result.accepted):
            self.rollbacks.pump()
        self._fan_out(writes.starts, result)
        self._subtask_results(writes.subs, result)
        self._restarted(writes.restarts, result)
        self.keyq.settle()
        self._dispatch()
        self.reporter.send()

    def _release_orphans(self, writes: _Writes, claims: Sequence[Claim]) -> None:
        """After a retried commit: give back claims of ours that nobody holds (the
        reply of a committed claim was lost). Fan-outs just started are held."""
        self.lease.orphans_possible = False
        keep = self._held() | writes.claims() | {(c.item_id, c.stage, c.attempt) for c in claims}
        released = self.lease.call(self.store.release_orphans, self.pipeline, self.owner, keep)
        if released:
            _log.warning("treadle: gave back %d claim(s) whose commit reply was lost", released)

    def _held(self) -> set[tuple[str, str, int]]:
        """Every stage claim this runner holds: in hand, fanning out, or being committed."""
        held = {t.key for t in self.slots.stage_tasks()}
        held |= {t.key for t in self.fanouts.runs}
        held |= {(c.item_id, c.stage, c.attempt) for c in self.undispatched}
        return held | self.writes.claims()

    def _follow_control(self, *, force: bool = False) -> None:
        """Take in the pauses and cancellations written since the last look (if due)."""
        cancelled = self.control.refresh(force=force)
        if cancelled:
            self._cancelled(cancelled)

    def _cancelled(self, items: set[str]) -> None:
        """Items were cancelled (by anyone): their work in hand is told to stop
        (``ctx.cancelled``) and forgotten, so its results are never recorded; the
        cancel already took their claims back in the store."""
        mine = [t for t in self.slots.entries if t.item_id in items]
        for entry in self.slots.drop(mine):
            if entry.ctx is not None:
                entry.ctx.cancelled.set()
            if isinstance(entry.task, StageTask):
                self.counters.cancelled += 1
        for run in [r for r in self.fanouts if r.task.item_id in items]:
            self.fanouts.pop(run.task)
            self.counters.cancelled += 1
        self.timers = [t for t in self.timers if t[2].item_id not in items]
        heapq.heapify(self.timers)
        kept = [c for c in self.undispatched if c.item_id not in items]
        self.counters.cancelled += len(self.undispatched) - len(kept)
        self.undispatched = collections.deque(kept)
        w = self.writes
        w.done = [d for d in w.done if d[0].item_id not in items]
        w.subs = [d for d in w.subs if d[0].item_id not in items]
        w.starts = [d for d in w.starts if d[0].item_id not in items]
        w.restarts = [d for d in w.restarts if d[0].item_id not in items]
        self.keyq.forget(lambda parent: parent.item_id in items)

    # -- fan-out -------------------------------------------------------------
    def _fan_out(self, starts: list[tuple[StageTask, FanOutStart, list[SubTask], Rated]],
                 result: CommitResult) -> None:
        for (task, _, subtasks, rated), plan in zip(starts, result.fanouts):
            if plan.refused:
                self.counters.refused += 1
                continue
            later = [n for n in (s.name for s in subtasks) if n in rated and n not in plan.kept]
            granted = {n: a for i, s, n, a in result.restarted if (i, s) == task.key[:2]}
            run = FanRun(task, {s.name: s for s in subtasks}, outputs=dict(plan.kept),
                         remaining={n for n, _ in plan.run} | set(later), rated=rated)
            self.fanouts.add(run)
            if self.stop.is_set():  # shutting down: start nothing; the stage is released
                run.cancelled = True
                continue
            for name, sub_attempt in plan.run:
                self._start_subtask(run, name, sub_attempt)
            for name in later:  # started with a token of their key, or queued for one
                if name in granted:
                    self._start_subtask(run, name, granted[name])
                else:
                    self.keyq.defer(*rated[name], task, name,
                                    result.sub_waits.get((*task.key[:2], name)))
            if not run.remaining:
                self._finish_fanout(run)

    def _start_subtask(self, run: FanRun, name: str, attempt: int) -> None:
        parent = run.task
        self.reporter.emit(signals.subtask_started, item_id=parent.item_id, stage=parent.stage,
                           subtask=name, attempt=attempt)
        task = SubtaskTask(parent, name, attempt)
        sub, policy = run.subtasks[name], self.policies[parent.stage]
        if is_async(sub.fn):
            timeout = self.pipeline.stages[parent.stage].timeout
            self.slots.admit(Entry(task, execute_subtask_async,
                                   (sub, parent.item_id, parent.stage, attempt, policy, timeout,
                                    self.pipeline.name), aio=True))
            return
        mark = StartMark()
        self.slots.admit(Entry(task, execute_subtask,
                               (sub, parent.item_id, parent.stage, attempt, policy, mark,
                                self.pipeline.name), mark=mark))

    def _finish_fanout(self, run: FanRun) -> None:
        self.fanouts.pop(run.task)
        self.writes.done.append((run.result(), None))

    def _subtask_results(self, subs: list[tuple[SubtaskTask, SubResult, Any]],
                         result: CommitResult) -> None:
        if not subs:
            return
        tasks = {(r.item_id, r.stage, r.name, r.attempt): t for t, r, _ in subs}
        for r in result.sub_accepted:
            task = tasks.get((r.item_id, r.stage, r.name, r.attempt))
            run = None if task is None else self.fanouts.get(task.parent)
            if task is None or run is None:
                continue
            if r.state == "pending":  # a retry: run it again once its wait is over
                delay = json.loads(r.details or "{}").get("retry_in", 0.0)
                heapq.heappush(self.timers, (time.monotonic() + delay, next(self._seq),
                                             task.parent, r.name))
                continue
            if run.settle(r.name, r.output, r.error, r.state == "completed"):
                self._finish_fanout(run)
        for r in result.sub_refused:  # the stage's claim was lost: that fan-out is not ours
            task = tasks.get((r.item_id, r.stage, r.name, r.attempt))
            if task is not None:
                self._drop_fanout(task.parent)

    def _restarted(self, restarts: list[tuple[StageTask, str]], result: CommitResult) -> None:
        if not restarts:
            return
        done = {(i, s, n): a for i, s, n, a in result.restarted}
        for parent, name in restarts:
            attempt = done.get((parent.item_id, parent.stage, name))
            run = self.fanouts.get(parent)
            if run is None:
                continue
            wait = result.sub_waits.get((parent.item_id, parent.stage, name))
            if attempt is None and wait is not None:  # no token yet: keep its place
                self.keyq.defer(*run.rated[name], parent, name, wait)
            elif attempt is None:
                self._drop_fanout(parent)  # refused: the stage is no longer ours
            elif not run.cancelled and not self.stop.is_set():
                self._start_subtask(run, name, attempt)

    def _drop_fanout(self, parent: StageTask) -> None:
        """Forget a fan-out whose stage claim this runner lost, with its subtasks; if
        the claim is still ours after all, give it back so the stage runs again."""
        run = self.fanouts.pop(parent)
        if run is None:
            return
        self.slots.drop([t for t in list(self.slots.entries)
                         if isinstance(t, SubtaskTask) and t.parent == parent])
        self.timers = [t for t in self.timers if t[2] != parent]
        heapq.heapify(self.timers)
        self.keyq.forget(lambda p: p == parent)
        self.lease.call(self.store.release, self.pipeline, self.owner, [parent.key])

    # -- dispatch ------------------------------------------------------------
    def _dispatch(self) -> None:
        p = self.pipeline
        queue_ = self.undispatched
        listening = self.reporter.listening
        stages, all_ancestors, types = p.stages, p.ancestors, p.output_types
        admit, on_loop = self.slots.admit, self.on_loop
        while queue_:
            claim = queue_[0]
            if claim.plan is not None:  # a fan-out cut short: rebuild it, not the stage function
                queue_.popleft()
                self._resume_fanout(claim)
                continue
            spec = stages[claim.stage]
            if claim.outputs:
                ancestors = all_ancestors[claim.stage]
                raw = {s: o for s, o in claim.outputs.items() if s in ancestors}
            else:
                raw = {}
            gate_state = None
            if spec.gate is not None:  # earlier verdicts and feedback, from the history
                gate_state = gate_history(
                    self.lease.call(self.store.history, p, claim.item_id), claim.stage)
            ctx = StageContext(claim.item_id, claim.stage, claim.attempt, Outputs(raw, types),
                               pipeline=p.name, logger=self._logger,
                               feedback=gate_state.feedback if gate_state else ())
            task = StageTask(claim.item_id, claim.stage, claim.attempt)
            if listening:
                self.reporter.emit(signals.stage_started, item_id=claim.item_id,
                                   stage=claim.stage, attempt=claim.attempt)
            policy = self.policies[claim.stage]
            if claim.stage in on_loop:
                entry = Entry(task, execute_async, (spec, p.codec, claim.item, ctx, policy,
                                                    gate_state, spec.timeout), ctx=ctx, aio=True)
            else:
                entry = Entry(task, execute, (spec, p.codec, claim.item, ctx, policy, gate_state,
                                              ctx.mark), ctx=ctx, mark=ctx.mark)
            queue_.popleft()
            admit(entry)

    def _resume_fanout(self, claim: Claim) -> None:
        """Rebuild a fan-out from its stored plan on the runner's event loop (importing
        the subtasks' modules may run user code: not on this thread, and not on a
        remote executor); the result starts the fan-out as a returned FanOut would."""
        assert claim.plan is not None
        task = StageTask(claim.item_id, claim.stage, claim.attempt)
        self.reporter.emit(signals.stage_started, item_id=claim.item_id, stage=claim.stage,
                           attempt=claim.attempt)
        self.slots.admit(Entry(task, execute_rebuild, (claim.plan, claim.item_id, claim.stage,
                                                       claim.attempt), aio=True))

    # -- shutdown --------------------------------------------------------------
    def _shutdown(self) -> bool:
        """Stop claiming; let running work finish for ``grace`` seconds; commit what
        finished; give the rest back as pending for the next run.

        Work claimed but not started (queued, parked, not yet dispatched) goes back
        at once with its attempt number, so no new stage starts after a stop.
        Whatever goes wrong while finishing up, the claims are given back.
        Returns True if tasks were left running (their threads are abandoned).
        """
        self.stop.set()
        unstarted: set[tuple[str, str, int]] = {(c.item_id, c.stage, c.attempt)
                                                for c in self.undispatched}
        self.undispatched.clear()
        try:
            for entry in self.slots.take_unstarted():
                task = entry.task
                if isinstance(task, StageTask):
                    unstarted.add(task.key)
                elif isinstance(task, SubtaskTask):
                    run = self.fanouts.get(task.parent)
                    if run is not None:
                        run.cancelled = True  # it cannot finish now: its stage is released below
                else:
                    self.rollbacks.plans.pop(task.item_id, None)
            for parent in [t[2] for t in self.timers] + self.keyq.forget(lambda p: True):
                run = self.fanouts.get(parent)
                if run is not None:
                    run.cancelled = True
            self.timers.clear()
            deadline = time.monotonic() + self.grace
            while (len(self.slots) or self.fanouts.live()) and time.monotonic() < deadline:
                self._drain(block=True, timeout=min(0.1, max(0.0, deadline - time.monotonic())))
                if self.writes:
                    self._commit(0)
            if self.writes:
                self._commit(0)
            # Coroutines still running are cancelled for real; their claims go back
            # keeping their attempt number (the attempt did not happen).
            coroutines = self.slots.running_coroutines()
            unstarted |= {e.task.key for e in coroutines if isinstance(e.task, StageTask)}
            self.slots.cancel(coroutines)
        except Exception:  # noqa: BLE001 - release below no matter what
            _log.exception("treadle: could not commit the last results at shutdown; "
                           "their stages run again on the next run")
        finally:
            self._release_all(unstarted)
        return self.slots.may_still_run()

    def _release_all(self, unstarted: set[tuple[str, str, int]]) -> None:
        self._releasing = True  # a Ctrl-C now must not cut the release short
        keys = self._held() - unstarted
        for ctx in self.slots.contexts():
            ctx.cancelled.set()
        self.rollbacks.abandon()
        self.fanouts.clear()
        if keys or unstarted:
            try:
                self.lease.call(self.store.release, self.pipeline, self.owner, sorted(keys),
                                sorted(unstarted))
            except Exception:  # noqa: BLE001 - the leases lapse instead
                _log.exception("treadle: could not give back %d claim(s); they are recovered "
                               "when this runner's lease lapses", len(keys) + len(unstarted))
                return
        if keys:
            _log.warning("treadle: %d stage(s) still running at shutdown were released; "
                         "they run again on the next run", len(keys))

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {}

        def handler(signum: int, frame: Any) -> None:
            if self.stop.is_set() and signum == _signal.SIGINT and not self._releasing:
                raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for running stages
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


__all__ = ["Counters", "Scheduler"]
