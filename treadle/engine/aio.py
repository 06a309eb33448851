"""The runner's event loop: where ``async def`` stages, subtasks and rollbacks run.

One daemon thread runs one asyncio loop, started on the first async task.
Coroutines do not hold a worker thread, so thousands can wait on I/O at once
(the runner's ``async_limit`` caps them). A coroutine is cancelled for real:
at its timeout (inside the task, see :mod:`.worker`), when its fan-out is
dropped, and at shutdown after the grace period.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any


class AsyncPool:
    """Runs task coroutines on a loop thread; outcomes go to the results queue.

    Submissions are batched: the scheduler thread appends to a list and wakes
    the loop once per batch (waking it per task makes the two threads fight
    over the GIL).
    """

    def __init__(self, limit: int, results: queue.SimpleQueue[tuple[Any, Any]]) -> None:
        self.capacity = limit
        self._results = results
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._incoming: list[tuple[Any, Callable[..., Coroutine[Any, Any, Any]],
                                   tuple[Any, ...]]] = []
        self._woken = False
        self._tasks: dict[Any, asyncio.Task[None]] = {}   # touched on the loop thread only
        self._live: set[Any] = set()                       # submitted, not finished (any thread)

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            try:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="treadle-async", daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop
        return loop

    def submit(self, task: Any, fn: Callable[..., Coroutine[Any, Any, Any]],
               args: tuple[Any, ...]) -> None:
        """Start one task's coroutine on the loop (with the next batch)."""
        loop = self._loop or self._start()
        with self._lock:
            self._incoming.append((task, fn, args))
            self._live.add(task)
            if self._woken:
                return
            self._woken = True
        loop.call_soon_threadsafe(self._start_incoming)

    def _start_incoming(self) -> None:
        with self._lock:
            batch, self._incoming = self._incoming, []
            self._woken = False
        loop = self._loop
        assert loop is not None
        for task, fn, args in batch:
            if task in self._live:  # not cancelled meanwhile
                self._tasks[task] = loop.create_task(self._run(task, fn, args))

    async def _run(self, task: Any, fn: Callable[..., Coroutine[Any, Any, Any]],
                   args: tuple[Any, ...]) -> None:
        try:
            outcome = await fn(*args)
        except asyncio.CancelledError:
            return  # dropped or shut down: the scheduler already let it go
        except BaseException as exc:  # noqa: BLE001 - handed to the scheduler
            outcome = exc
        finally:
            self._tasks.pop(task, None)
            with self._lock:
                self._live.discard(task)
        self._results.put((task, outcome))

    def cancel(self, task: Any) -> None:
        """Cancel one task's coroutine (its ``finally`` blocks run); no result follows."""
        with self._lock:
            if task not in self._live:
                return
            self._live.discard(task)
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._cancel, task)

    def _cancel(self, task: Any) -> None:
        running = self._tasks.pop(task, None)
        if running is not None:
            running.cancel()

    def running(self) -> list[Any]:
        """The tasks whose coroutines are still running (or about to start)."""
        with self._lock:
            return list(self._live)

    #: Seconds ``shutdown`` waits for the cancelled coroutines to finish. They had
    #: the runner's grace period already; one that swallows its cancellation keeps
    #: the (daemon) loop thread, not ``run()``.
    SHUTDOWN_WAIT = 1.0

    def shutdown(self, wait: bool) -> None:
        """Cancel what still runs and stop the loop."""
        loop = self._loop
        if loop is None:
            return
        for task in self.running():
            self.cancel(task)
        loop.call_soon_threadsafe(loop.stop)
        if wait and self._thread is not None:
            self._thread.join(timeout=self.SHUTDOWN_WAIT)
        self._loop = None


__all__ = ["AsyncPool"]
