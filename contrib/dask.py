"""Run stages on a Dask cluster: ``Runner(..., executor=DaskExecutor(client))``.

    from distributed import Client
    from treadle import Runner, open_store
    from treadle.contrib.dask import DaskExecutor

    client = Client("tcp://scheduler:8786")
    runner = Runner(pipeline, open_store("postgresql://..."),
                    executor=DaskExecutor(client, resources={"transcode": {"GPU": 1}}))

Stage functions, subtasks, gates and rollbacks run on the cluster's workers
(sent with cloudpickle, so closures work); their outputs and errors come back
to the runner, which stays the only writer of the store: the durability
contract is the one of the thread pool. The runner hands the cluster no more
tasks than it has threads (re-read as workers come and go), so a stage's
timeout counts from when the cluster can run it; a timed-out task is
cancelled on the cluster. ``async def`` stages still run on the runner's
event loop. Install with ``pip install "treadle[dask]"``.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from typing import Any

try:
    import cloudpickle
    from distributed import Client
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "treadle.contrib.dask needs dask.distributed: pip install \"treadle[dask]\""
    ) from exc


def _run_pickled(blob: bytes) -> Any:
    """On a worker: unpickle ``(fn, args)`` and call it."""
    fn, args = cloudpickle.loads(blob)
    return fn(*args)


_shipped: dict[str, bool] = {}


def _ship_module(name: str | None) -> None:
    """Workers would import user code by module name, which only works if they have
    the same files on their path. A module that is not an installed package (the
    pipeline's own file, e.g. ``python -m treadle run file.py:pipeline``) is sent
    by value instead, with the function."""
    if not name or name in _shipped:
        return
    module = sys.modules.get(name)
    path: str | None = getattr(module, "__file__", None)
    by_value = path is not None and name != "__main__" and not any(
        os.path.abspath(path).startswith(os.path.abspath(p) + os.sep) for p in _INSTALLED if p)
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    _shipped[name] = by_value


_INSTALLED = {sysconfig.get_paths().get(k) for k in ("purelib", "platlib", "stdlib", "platstdlib")}


class DaskExecutor(Executor):
    """A ``concurrent.futures.Executor`` on a ``distributed.Client``.

    ``resources`` maps a stage name to the Dask resources each of its runs
    (and its subtasks' and rollback's) needs, e.g. ``{"transcode": {"GPU": 1}}``;
    workers declare what they have (``dask worker --resources "GPU=2"``).
    """

    #: Seconds between two reads of the cluster's size.
    REFRESH = 1.0

    def __init__(self, client: Client,
                 resources: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.client = client
        self.resources = {k: dict(v) for k, v in (resources or {}).items()}
        self._executors: dict[tuple[tuple[str, float], ...], Executor] = {}
        self._lock = threading.Lock()
        self._capacity = 0
        self._read_at = 0.0

    @property
    def capacity(self) -> int:
        """Threads across the cluster's workers now (at least 1), re-read every second."""
        now = time.monotonic()
        if now - self._read_at >= self.REFRESH:
            workers = self.client.scheduler_info().get("workers", {})
            self._capacity = max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))
            self._read_at = now
        return self._capacity

    @property
    def dashboard_link(self) -> str | None:
        """The cluster's dashboard, if it has one."""
        try:
            return str(self.client.dashboard_link)
        except Exception:  # noqa: BLE001 - no dashboard
            return None

    def _executor(self, stage: str | None) -> Executor:
        need = self.resources.get(stage or "", {})
        key = tuple(sorted(need.items()))
        with self._lock:
            ex = self._executors.get(key)
            if ex is None:
                ex = self._executors[key] = self.client.get_executor(  # type: ignore[no-untyped-call]
                    pure=False, resources=need or None)
        return ex

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` on the cluster (no stage resources)."""
        return self._executor(None).submit(fn, *args, **kwargs)

    def submit_task(self, task: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> Future[Any]:
        """The runner's way in: ``task.stage`` picks the resources."""
        for arg in args[:1]:  # the stage spec or the subtask: ship their modules if need be
            for user_fn in (getattr(arg, "fn", None), getattr(arg, "when", None),
                            getattr(arg, "gate", None), getattr(arg, "rollback", None)):
                if user_fn is not None:
                    _ship_module(getattr(user_fn, "__module__", None))
        # Pickled here with cloudpickle (Dask would try plain pickle first, which
        # refers to the user's module by name even when it is shipped by value).
        blob = cloudpickle.dumps((fn, args))
        return self._executor(getattr(task, "stage", None)).submit(_run_pickled, blob)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shut down the per-resource executors; the client stays the caller's."""
        with self._lock:
            executors, self._executors = list(self._executors.values()), {}
        for ex in executors:
            ex.shutdown(wait=wait)


__all__ = ["DaskExecutor"]
