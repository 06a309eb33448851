"""Where tasks run: the runner's own threads, or any ``concurrent.futures.Executor``.

Both report each task's outcome to the scheduler's results queue as
``(task, outcome)``, where the outcome is what the task returned or the
exception that escaped it. Both say how many tasks they can run at once
(:attr:`capacity`), so the scheduler hands them no more than that and keeps
the rest claimed but queued on its side.

The runner's own pool replaces a thread written off by a timeout: a stage
that ignores ``ctx.cancelled`` keeps its thread, so a new thread takes its
place (up to a bound, with a warning) and queued work still starts.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

_log = logging.getLogger("treadle.runner")

_STOP = object()
_RETIRE = object()



class ThreadPool:
    """``workers`` daemon threads running tasks from one queue.

    Daemon threads: a stage that never returns cannot keep the process alive
    after the runner released its claim (it runs again on the next run).
    """

    #: Written-off threads replaced at most this many times ``workers`` at once.
    SPARE_FACTOR = 4

    def __init__(self, workers: int, results: queue.SimpleQueue[tuple[Any, Any]]) -> None:
        self.capacity = workers
        self._tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._results = results
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._spare_for: set[Any] = set()  # tasks a thread was added in place of
        self._warned = False
        for _ in range(workers):
            self._add_thread()

    def _add_thread(self) -> None:
        t = threading.Thread(target=self._work, name=f"treadle-{len(self._threads)}", daemon=True)
        self._threads.append(t)
        t.start()

    def submit(self, task: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Queue one task."""
        self._tasks.put((task, fn, args))

    def written_off(self, task: Any) -> bool:
        """A task timed out and may hold its thread for good: add a thread in its place.
        True: the pool's capacity is not held by it (this pool queues what it cannot run)."""
        with self._lock:
            if len(self._spare_for) >= self.SPARE_FACTOR * self.capacity:
                if not self._warned:
                    self._warned = True
                    _log.warning(
                        "treadle: %d timed-out stages still hold their threads (they ignore "
                        "ctx.cancelled); no more threads are added, so queued stages wait for "
                        "one of them to return", len(self._spare_for))
                return True
            self._spare_for.add(task)
            self._add_thread()
            return True

    def returned(self, task: Any) -> None:
        """A written-off task finally returned: if a thread was added in its place,
        there is one too many now; retire one."""
        with self._lock:
            if task in self._spare_for:
                self._spare_for.discard(task)
                self._tasks.put(_RETIRE)

    def cancel_queued(self) -> list[Any]:
        """Take back every task not started yet; returns them."""
        taken = []
        retire = 0
        while True:
            try:
                entry = self._tasks.get_nowait()
            except queue.Empty:
                break
            if entry is _STOP:
                self._tasks.put(entry)
                break
            if entry is _RETIRE:
                retire += 1
                continue
            taken.append(entry[0])
        for _ in range(retire):
            self._tasks.put(_RETIRE)
        return taken

    def shutdown(self, wait: bool) -> None:
        """Stop the threads once they are idle; wait for them if ``wait``."""
        for _ in self._threads:
            self._tasks.put(_STOP)
        if wait:
            for t in self._threads:
                t.join()

    def _work(self) -> None:
        get, put = self._tasks.get, self._results.put
        while True:
            entry = get()
            if entry is _STOP or entry is _RETIRE:
                return
            task, fn, args = entry
            try:
                outcome = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the scheduler
                outcome = exc
            put((task, outcome))


def _outcome(fut: Future[Any]) -> Any:
    """A finished future's result, or the exception it raised."""
    try:
        return fut.result()
    except BaseException as exc:  # noqa: BLE001 - handed to the scheduler
        return exc


def executor_capacity(executor: Executor, default: int) -> int:
    """How many tasks ``executor`` runs at once, as far as it says."""
    for attr in ("capacity", "_max_workers"):
        value = getattr(executor, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


class ExecutorPool:
    """Any ``concurrent.futures.Executor`` (a process pool, a Dask client's executor, ...).

    It cannot tell when a task starts, so the scheduler hands it no more
    than :attr:`capacity` tasks at once and counts timeouts from hand-over.
    An executor with a ``capacity`` attribute (e.g. a cluster whose workers
    come and go) is asked again each time; one with ``submit_task(task, fn,
    args)`` gets the task too (e.g. to pick per-stage resources).
    """

    def __init__(self, executor: Executor, workers: int,
                 results: queue.SimpleQueue[tuple[Any, Any]]) -> None:
        self.executor = executor
        self._workers = workers
        self._submit_task = getattr(executor, "submit_task", None)
        self._results = results
        self._futures: dict[Any, Future[Any]] = {}
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        """How many tasks the executor runs at once (asked again each time)."""
        return executor_capacity(self.executor, self._workers)

    def submit(self, task: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Hand one task to the executor (an executor that refuses it fails the task)."""
        try:
            if self._submit_task is not None:
                fut = self._submit_task(task, fn, args)
            else:
                fut = self.executor.submit(fn, *args)
        except BaseException as exc:  # noqa: BLE001 - e.g. an executor shutting down
            fut = Future()
            fut.set_exception(exc)
        with self._lock:
            self._futures[task] = fut
        fut.add_done_callback(functools.partial(self._done, task))

    def _done(self, task: Any, fut: Future[Any]) -> None:
        with self._lock:
            self._futures.pop(task, None)
        if not fut.cancelled():
            self._results.put((task, _outcome(fut)))

    def written_off(self, task: Any) -> bool:
        """A task timed out: cancel it if the executor still can (a cluster can).
        True if it was cancelled (it holds no worker now)."""
        with self._lock:
            fut = self._futures.get(task)
        return fut is None or fut.cancel() or fut.done()

    def returned(self, task: Any) -> None:
        """Nothing to do: the executor owns its workers."""

    def cancel_queued(self) -> list[Any]:
        """Cancel the tasks the executor has not started; returns them."""
        with self._lock:
            pending = list(self._futures.items())
        return [task for task, fut in pending if fut.cancel()]

    def shutdown(self, wait: bool) -> None:
        """The executor belongs to the caller: it is not shut down here."""


Pool = ThreadPool | ExecutorPool

__all__ = ["ExecutorPool", "Pool", "ThreadPool", "executor_capacity"]
