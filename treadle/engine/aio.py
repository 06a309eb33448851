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
from concurrent.futures import Future
from typing import Any


class AsyncPool:
    """Runs task coroutines on a loop thread; outcomes go to the results queue."""

    def __init__(self, limit: int, results: queue.SimpleQueue[tuple[Any, Any]]) -> None:
        self.capacity = limit
        self._results = results
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._futures: dict[Any, Future[None]] = {}
        self._lock = threading.Lock()

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
        """Start one task's coroutine on the loop."""
        loop = self._loop or self._start()
        fut = asyncio.run_coroutine_threadsafe(self._run(task, fn, args), loop)
        with self._lock:
            self._futures[task] = fut

    async def _run(self, task: Any, fn: Callable[..., Coroutine[Any, Any, Any]],
                   args: tuple[Any, ...]) -> None:
        try:
            outcome = await fn(*args)
        except asyncio.CancelledError:
            return  # dropped or shut down: the scheduler already let it go
        except BaseException as exc:  # noqa: BLE001 - handed to the scheduler
            outcome = exc
        finally:
            with self._lock:
                self._futures.pop(task, None)
        self._results.put((task, outcome))

    def cancel(self, task: Any) -> None:
        """Cancel one task's coroutine (its ``finally`` blocks run); no result follows."""
        with self._lock:
            fut = self._futures.pop(task, None)
        if fut is not None:
            fut.cancel()

    def running(self) -> list[Any]:
        """The tasks whose coroutines are still running."""
        with self._lock:
            return list(self._futures)

    def written_off(self) -> None:
        """Nothing to replace: a coroutine holds no thread."""

    def returned(self) -> None:
        """Nothing to retire."""

    def cancel_queued(self) -> list[Any]:
        """Nothing waits here: coroutines start at once (the scheduler queues the rest)."""
        return []

    def shutdown(self, wait: bool) -> None:
        """Cancel what still runs and stop the loop."""
        loop = self._loop
        if loop is None:
            return
        for task in self.running():
            self.cancel(task)
        loop.call_soon_threadsafe(loop.stop)
        if wait and self._thread is not None:
            self._thread.join(timeout=10.0)
        self._loop = None


__all__ = ["AsyncPool"]
