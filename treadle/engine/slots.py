"""The in-flight table: every task the runner holds, from claim to release.

One :class:`Entry` per task. It is added when the task is dispatched and
removed exactly once, by whichever comes first: its result, its timeout, a
drop (its fan-out was lost), or shutdown. Removal releases everything the
entry held: its concurrency slot, its place in the pool's capacity, its
deadline. A task removed before its result arrives may still be running in
the pool: its late result is recognised and ignored.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from ..context import StageContext, StartMark
from .aio import AsyncPool
from .pool import ExecutorPool, ThreadPool
from .tasks import StageTask, Task

_log = logging.getLogger("treadle.runner")


@attrs.define(eq=False)
class Entry:
    """A task in hand: what to call, its context, when it must be done."""

    task: Task
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    ctx: StageContext | None = None
    mark: StartMark | None = None
    handed: bool = False               # given to the pool
    deadline: float | None = None      # monotonic, once handed (for stages with a timeout)
    aio: bool = False                  # a coroutine for the event loop, not a thread


@attrs.define(eq=False)
class Lane:
    """One place tasks run (threads or executor, or the event loop) and how many it takes."""

    pool: ThreadPool | ExecutorPool | AsyncPool
    bounded: bool                      # hand at most pool.capacity at once (else the pool queues)
    in_flight: int = 0
    queued: collections.deque[Entry] = attrs.field(factory=collections.deque)

    def has_room(self) -> bool:
        return not self.bounded or self.in_flight < self.pool.capacity


class Slots:
    """In-flight tasks, per-stage concurrency limits, pool capacity and deadlines."""

    def __init__(self, pool: ThreadPool | ExecutorPool, limits: Mapping[str, int],
                 timeouts: Mapping[str, float], aio: AsyncPool | None = None) -> None:
        self.pool = pool
        self.aio = aio
        self.limits = dict(limits)
        self.timeouts = dict(timeouts)
        self.entries: dict[Task, Entry] = {}
        self.active: collections.Counter[str] = collections.Counter()
        self.waiting: dict[str, collections.deque[Entry]] = {s: collections.deque() for s in limits}
        # A foreign executor cannot say when a task starts: hand it no more than it
        # can run, so hand-over is the start. Our own threads say when they start.
        self._remote = isinstance(pool, ExecutorPool)
        self.threads = Lane(pool, self._remote)
        self.loop = Lane(aio, True) if aio is not None else None
        self._deadlines: list[tuple[float, int, Entry]] = []
        self._seq = itertools.count()
        self._stale = 0
        self.written_off: set[Task] = set()   # timed out, may still run: its thread was replaced
        self.ignored: set[Task] = set()       # dropped while running: its result is ignored
        self._holding: set[Task] = set()      # written off, still holding an executor's worker
        self._warned = False

    # -- in ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, task: object) -> bool:
        return task in self.entries

    def admit(self, entry: Entry) -> None:
        """Take a task in hand; run it now, or once its stage has a free slot."""
        self.entries[entry.task] = entry
        stage = entry.task.stage
        limit = self.limits.get(stage) if self.limits else None
        if limit is not None:
            if self.active[stage] >= limit:
                self.waiting[stage].append(entry)
                return
            self.active[stage] += 1
        self._queue(entry)

    def _lane(self, entry: Entry) -> Lane:
        if entry.aio:
            assert self.loop is not None, "an async task without an event loop"
            return self.loop
        return self.threads

    def _queue(self, entry: Entry) -> None:
        lane = self._lane(entry)
        if not lane.has_room():
            lane.queued.append(entry)
            return
        self._hand(entry, lane)

    def _hand(self, entry: Entry, lane: Lane) -> None:
        entry.handed = True
        lane.in_flight += 1
        timeout = self.timeouts.get(entry.task.stage) if self.timeouts else None
        if timeout is not None and entry.mark is not None:  # coroutines time out themselves
            entry.deadline = time.monotonic() + timeout
            heapq.heappush(self._deadlines, (entry.deadline, next(self._seq), entry))
        lane.pool.submit(entry.task, entry.fn, entry.args)

    # -- out -----------------------------------------------------------------
    def finish(self, task: Task) -> Entry | None:
        """A result arrived: the entry, released; None if the task was no longer ours."""
        entry = self.entries.pop(task, None)
        if entry is None:
            if task in self.written_off:
                self.written_off.discard(task)
                self.pool.returned(task)
                if task in self._holding:  # it held an executor's worker until now
                    self._holding.discard(task)
                    self.threads.in_flight -= 1
                    self.refill()
            else:
                self.ignored.discard(task)
            return None
        self._release(entry)
        return entry

    def expire(self, now: float) -> list[Entry]:
        """Entries past their deadline, removed and released (their threads written off)."""
        out = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, entry = heapq.heappop(heap)
            if self.entries.get(entry.task) is not entry:
                self._stale = max(0, self._stale - 1)
                continue
            timeout = self.timeouts[entry.task.stage]
            mark = entry.mark
            if not self._remote and mark is not None:  # the clock starts when a worker starts it
                started = mark.started
                due = (now if started is None else started) + timeout
                if due > now:
                    entry.deadline = due
                    heapq.heappush(heap, (due, next(self._seq), entry))
                    continue
            del self.entries[entry.task]
            entry.deadline = None
            self.written_off.add(entry.task)
            if self.pool.written_off(entry.task):
                self._release(entry)
            else:
                # An executor's worker still runs it: handing its place to another task
                # would queue that one inside the executor, where its clock would run
                # out before it starts. The place is freed when it returns.
                self._holding.add(entry.task)
                entry.handed = False
                self._release_limit(entry)
                self._warn_if_all_held()
            out.append(entry)
        return out

    def drop(self, tasks: Iterable[Task]) -> list[Entry]:
        """Give up these tasks (their claim is lost); running ones' results are ignored."""
        out = []
        for task in tasks:
            entry = self.entries.pop(task, None)
            if entry is None:
                continue
            if entry.handed:
                self.ignored.add(task)
                if entry.aio and self.aio is not None:
                    self.aio.cancel(task)  # a coroutine can really be stopped
                self._release(entry)
            else:
                self._unqueue(entry)
            out.append(entry)
        return out

    def take_unstarted(self) -> list[Entry]:
        """Shutdown: every task not started yet, removed (its claim goes back untouched)."""
        out: list[Entry] = []
        for waiting in self.waiting.values():
            out.extend(waiting)
            waiting.clear()
        for lane in self._lanes():
            out.extend(lane.queued)
            lane.queued.clear()
        for task in self.pool.cancel_queued():
            entry = self.entries.get(task)
            if entry is not None:
                entry.handed = False
                self.threads.in_flight -= 1
                self._release_limit(entry)
                out.append(entry)
        for entry in out:
            self.entries.pop(entry.task, None)
            if entry.deadline is not None:
                self._stale += 1
        return out

    def _unqueue(self, entry: Entry) -> None:
        waiting = self.waiting.get(entry.task.stage)
        if waiting is not None and entry in waiting:
            waiting.remove(entry)  # it never took a slot
        elif entry in (lane := self._lane(entry)).queued:
            lane.queued.remove(entry)
            self._release_limit(entry)

    def _release(self, entry: Entry) -> None:
        if entry.deadline is not None:
            entry.deadline = None
            self._stale += 1
            self._compact()
        lane = self._lane(entry)
        if entry.handed:
            entry.handed = False
            lane.in_flight -= 1
        self._release_limit(entry)
        while lane.queued and lane.has_room():
            self._hand(lane.queued.popleft(), lane)

    def _warn_if_all_held(self) -> None:
        if not self._warned and len(self._holding) >= self.threads.pool.capacity:
            self._warned = True
            _log.warning("treadle: every worker of the executor runs a stage that timed out "
                         "and did not stop; queued stages wait until one of them returns")

    def may_still_run(self) -> bool:
        """Some task this run handed out may still be running user code."""
        return bool(self.entries or self.written_off or self.ignored)

    def refill(self) -> None:
        """Hand queued tasks to pools that have room now (a cluster that grew)."""
        for lane in self._lanes():
            while lane.queued and lane.has_room():
                self._hand(lane.queued.popleft(), lane)

    def _lanes(self) -> list[Lane]:
        return [self.threads] if self.loop is None else [self.threads, self.loop]

    def _release_limit(self, entry: Entry) -> None:
        stage = entry.task.stage
        if stage not in self.limits:
            return
        self.active[stage] -= 1
        waiting = self.waiting[stage]
        while waiting and self.active[stage] < self.limits[stage]:
            self.active[stage] += 1
            self._queue(waiting.popleft())

    def _compact(self) -> None:
        """Drop deadlines of finished tasks once they are most of the heap."""
        if self._stale > 64 and self._stale * 2 > len(self._deadlines):
            self._deadlines = [d for d in self._deadlines
                               if self.entries.get(d[2].task) is d[2] and d[2].deadline is not None]
            heapq.heapify(self._deadlines)
            self._stale = 0

    # -- questions -----------------------------------------------------------
    def next_deadline(self) -> float | None:
        """The monotonic time of the next deadline, if any."""
        return self._deadlines[0][0] if self._deadlines else None

    @property
    def deadline_count(self) -> int:
        """Entries in the deadline heap (finished ones are dropped from time to time)."""
        return len(self._deadlines)

    def stage_tasks(self) -> list[StageTask]:
        """The stage claims in hand (subtasks and rollbacks are not claims of their own)."""
        return [t for t in self.entries if isinstance(t, StageTask)]

    def running_coroutines(self) -> list[Entry]:
        """Entries running on the event loop (cancelled at the end of shutdown)."""
        return [e for e in self.entries.values() if e.aio and e.handed]

    def cancel(self, entries: Iterable[Entry]) -> None:
        """Shutdown: cancel these coroutines for real and forget them."""
        for entry in entries:
            if self.entries.pop(entry.task, None) is None:
                continue
            if self.aio is not None:
                self.aio.cancel(entry.task)
            self._release(entry)

    def contexts(self) -> list[StageContext]:
        """The contexts of every task in hand (to set ``cancelled`` at shutdown)."""
        return [e.ctx for e in self.entries.values() if e.ctx is not None]


__all__ = ["Entry", "Slots"]
