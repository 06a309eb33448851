"""The runner's own worker threads: cheaper than ``ThreadPoolExecutor`` per task.

Each task is ``(key, fn, args)``; its result (or the exception it raised)
goes to the scheduler's results queue as ``(key, outcome)``. Threads are
daemons: a stage that never returns cannot keep the process alive after the
runner has released its claim (it would run again on the next run anyway).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = object()


class WorkerPool:
    """``workers`` daemon threads running tasks from one queue."""

    def __init__(self, workers: int, results: queue.SimpleQueue[Any]) -> None:
        self._tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._results = results
        self._threads = [
            threading.Thread(target=self._work, name=f"treadle-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def submit(self, key: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Queue one task."""
        self._tasks.put((key, fn, args))

    def cancel_queued(self) -> list[Any]:
        """Take back every task not started yet; returns their keys."""
        keys = []
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return keys
            if task is _STOP:
                self._tasks.put(task)
                return keys
            keys.append(task[0])

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
            task = get()
            if task is _STOP:
                return
            key, fn, args = task
            try:
                outcome = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the scheduler
                outcome = exc
            put((key, outcome))
