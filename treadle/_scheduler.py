"""The scheduler: one thread that decides and records; pool threads only run stages.

Each turn of the loop is one *group commit*: every stage result that came
back since the last turn is written, dependents that became ready are marked,
and the next batch of ready work is claimed, all in one transaction. Work is
handed to the pool only after that transaction has committed, so a stage's
result is durable before any dependent starts, and signals report only
committed transitions.
"""

from __future__ import annotations

import logging
import os
import queue
import signal as _signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from types import MappingProxyType
from typing import Any

import attrs
import structlog

from . import signals
from ._execute import execute
from .context import StageContext
from .pipeline import Pipeline
from .serialization import from_json
from .states import StageState
from .store.base import Claim, CommitResult, StateStore, Transition

_log = logging.getLogger("treadle.runner")


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
class _Unit:
    claim: Claim
    ctx: StageContext
    started: float


@attrs.define
class Counters:
    executed: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0
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
        self.results: queue.SimpleQueue[tuple[tuple[str, str, int], Future[Any]]] = queue.SimpleQueue()
        self.inflight: dict[tuple[str, str, int], _Unit] = {}
        self.done: list[tuple[Transition, Any]] = []
        self.counters = Counters()
        self.stop = threading.Event()
        self._logger = structlog.get_logger("treadle")

    # -- the loop ------------------------------------------------------------
    def run(self) -> Counters:
        own_pool = self.executor is None
        pool = self.executor or ThreadPoolExecutor(self.workers, thread_name_prefix="treadle")
        restore = self._install_signal_handlers()
        self.store.register_runner(self.owner, self.host, os.getpid(), self.lease)
        try:
            self._recover()
            self._loop(pool)
        finally:
            try:
                self._shutdown()
            finally:
                self.store.unregister_runner(self.owner)
                restore()
                if own_pool:
                    pool.shutdown(wait=not self.inflight, cancel_futures=True)
        return self.counters

    def _loop(self, pool: Executor) -> None:
        capacity = max(64, 8 * self.workers)
        next_beat = time.monotonic() + self.lease / 3
        next_recover = time.monotonic() + 1.0
        while True:
            self._drain(block=False)
            stopping = self.stop.is_set()
            limit = 0 if stopping else capacity - len(self.inflight)
            claims: list[Claim] = []
            if self.done or limit > 0:
                result = self._commit(limit)
                claims = result.claims
                self._dispatch(pool, claims)
            now = time.monotonic()
            if now >= next_beat:
                self.store.heartbeat(self.owner, self.lease)
                next_beat = now + self.lease / 3
            if stopping:
                return
            if self.inflight:
                if not claims or len(self.inflight) >= capacity:
                    self._drain(block=True, timeout=min(self.POLL, max(0.0, next_beat - now)))
                continue
            if claims:
                continue
            look = self.store.outlook(self.pipeline, self.only)
            if look.ready == 0 and look.running == 0:
                return
            if now >= next_recover:
                self._recover()
                next_recover = now + 1.0
            self._drain(block=True, timeout=self.POLL)

    def _drain(self, *, block: bool, timeout: float | None = None) -> None:
        try:
            if block:
                self._take(*self.results.get(timeout=timeout))
            while True:
                self._take(*self.results.get_nowait())
        except queue.Empty:
            pass

    def _take(self, key: tuple[str, str, int], fut: Future[Any]) -> None:
        if self.inflight.pop(key, None) is None:
            return  # released at shutdown: its late result is not ours to record
        try:
            self.done.append(fut.result())
        except BaseException as exc:  # noqa: BLE001 - e.g. a process pool that broke
            from ._execute import failure
            self.done.append((failure(key[0], key[1], key[2], exc), None))

    def _commit(self, limit: int) -> CommitResult:
        batch = self.done
        result = self.store.commit(self.pipeline, self.owner, [t for t, _ in batch], limit,
                                   self.only)
        self.done = []
        self._report(batch, result)
        return result

    # -- after commit --------------------------------------------------------
    def _report(self, batch: list[tuple[Transition, Any]], result: CommitResult) -> None:
        p = self.pipeline
        values = {(t.item_id, t.stage, t.attempt): v for t, v in batch}
        c = self.counters
        c.executed += len(batch)
        for t in result.refused:
            c.refused += 1
            _log.warning("treadle: result of %s/%s attempt %d refused: its claim was lost "
                         "(lease lapsed and another runner took it over)", t.item_id, t.stage, t.attempt)
        for t in result.accepted:
            value = values.get((t.item_id, t.stage, t.attempt))
            kw = dict(item_id=t.item_id, stage=t.stage, attempt=t.attempt)
            if t.state == StageState.COMPLETED:
                c.completed += 1
                signals.send(signals.stage_completed, p, data=value, **kw)
            elif t.state == StageState.FAILED:
                c.failed += 1
                signals.send(signals.stage_failed, p, error=t.error, final=True, **kw)
            elif t.state == StageState.SKIPPED:
                c.skipped += 1
                signals.send(signals.stage_skipped, p, data=value, **kw)
            elif t.state == StageState.AWAITING_REVIEW:
                c.awaiting_review += 1
                review = from_json(t.review) or {}
                signals.send(signals.review_required, p, data=review.get("data"),
                             message=review.get("message", ""), **kw)
        for item_id, stage in result.skipped:
            c.skipped += 1
            signals.send(signals.stage_skipped, p, item_id=item_id, stage=stage, attempt=0,
                         data="upstream skipped")
        for item_id, state in result.finished:
            signals.send(signals.item_finished, p, item_id=item_id, state=state)

    def _dispatch(self, pool: Executor, claims: list[Claim]) -> None:
        p = self.pipeline
        for claim in claims:
            spec = p.stages[claim.stage]
            ancestors = p.ancestors[claim.stage]
            outputs = {s: from_json(o) for s, o in claim.outputs.items() if s in ancestors}
            ctx = StageContext(
                item_id=claim.item_id, stage=claim.stage, attempt=claim.attempt,
                outputs=MappingProxyType(outputs), pipeline=p.name,
                log=self._logger.bind(pipeline=p.name, item_id=claim.item_id, stage=claim.stage,
                                      attempt=claim.attempt),
            )
            key = (claim.item_id, claim.stage, claim.attempt)
            self.inflight[key] = _Unit(claim, ctx, time.monotonic())
            signals.send(signals.stage_started, p, item_id=claim.item_id, stage=claim.stage,
                         attempt=claim.attempt)
            try:
                item = p.codec.load(claim.item)
                fut = pool.submit(execute, spec, item, ctx)
            except BaseException as exc:  # noqa: BLE001 - a bad stored item or a dead pool
                from ._execute import failure
                fut = Future()
                fut.set_result((failure(claim.item_id, claim.stage, claim.attempt, exc), None))
            fut.add_done_callback(lambda f, key=key: self.results.put((key, f)))

    # -- leases, shutdown ------------------------------------------------------
    def _recover(self) -> None:
        stale = self.store.recover(self.pipeline, self.host, pid_alive)
        if stale:
            _log.warning("treadle: recovered %d stale claim(s) of dead runners", len(stale))

    def _shutdown(self) -> None:
        """Stop claiming; let in-flight stages finish for ``grace`` seconds; commit
        what finished; give the rest back as pending for the next run."""
        deadline = time.monotonic() + self.grace
        while self.inflight and time.monotonic() < deadline:
            self._drain(block=True, timeout=min(0.1, max(0.0, deadline - time.monotonic())))
        if self.done:
            self._commit(0)
        if self.inflight:
            for unit in self.inflight.values():
                unit.ctx.cancelled.set()
            keys = list(self.inflight)
            self.inflight.clear()
            self.store.release(self.pipeline, self.owner, keys)
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

