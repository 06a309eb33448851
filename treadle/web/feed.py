"""Live updates: what changed in the store, as a stream of snapshots, and its SSE framing.

Until the store keeps a cross-process event feed (``Runner.events``), the
console polls: every ``interval`` seconds, in a worker thread, it reads the
per-stage counts and the newest history sequence number, and yields a
:class:`Snapshot` when either changed. :func:`changes` is the only producer
of the stream; an event feed replaces its body and nothing else.
:class:`Broadcast` runs one such producer per app, however many pages are
open, and hands each change to every open stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
from starlette.concurrency import run_in_threadpool

#: Seconds between two reads of the store.
INTERVAL = 0.5
#: Seconds between keep-alive comments on an idle stream.
KEEPALIVE = 15.0

log = logging.getLogger("treadle.web")


@attrs.frozen
class Snapshot:
    """Where the workload stands: the newest history seq and per-stage counts."""

    seq: int | None
    counts: dict[str, dict[str, int]]
    items: dict[str, int]


def newest_seq(store: Any) -> int | None:
    """The newest history sequence number, or None when the store cannot say cheaply.

    Reads the stores' own tables (the store protocol has no call for it
    yet); any other store falls back to counts alone.
    """
    read = getattr(store, "_read", None)
    if read is not None:
        rows = read("SELECT max(id) FROM treadle_history")
        return rows[0][0] if rows else None
    history = getattr(store, "_history", None)
    if isinstance(history, list):
        return history[-1][0] if history else 0
    return None


def snapshot(runner: Any) -> Snapshot:
    """One read of the store (blocking: call it in a worker thread)."""
    return Snapshot(newest_seq(runner.store), runner.counts(), runner.item_counts())


async def changes(runner: Any, *, interval: float = INTERVAL,
                  disconnected: Callable[[], Awaitable[bool]] | None = None,
                  ) -> AsyncIterator[Snapshot | None]:
    """Yield a snapshot now and after every change; ``None`` as a keep-alive when idle."""
    last: Snapshot | None = None
    idle = 0.0
    while True:
        if disconnected is not None and await disconnected():
            return
        current = await run_in_threadpool(snapshot, runner)
        if current != last:
            last, idle = current, 0.0
            yield current
        elif idle >= KEEPALIVE:
            idle = 0.0
            yield None
        await asyncio.sleep(interval)
        idle += interval


class Broadcast:
    """One :func:`changes` producer per app, shared by every open stream.

    The producer starts with the first subscriber and stops with the last;
    a subscriber gets the newest snapshot at once, then each later one (a
    slow subscriber skips to the newest), and ``None`` after ``KEEPALIVE``
    seconds without a change.
    """

    def __init__(self, runner: Any, *, interval: float = INTERVAL) -> None:
        self.runner = runner
        self.interval = interval
        self._latest: Snapshot | None = None
        self._version = 0
        self._changed: asyncio.Condition | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribers = 0

    async def subscribe(self) -> AsyncIterator[Snapshot | None]:
        if self._changed is None:
            self._changed = asyncio.Condition()
        changed = self._changed
        self._subscribers += 1
        if self._task is None:
            self._task = asyncio.create_task(self._produce())
        seen = 0
        try:
            while True:
                def moved(seen: int = seen) -> bool:
                    return self._version != seen

                async with changed:
                    try:
                        await asyncio.wait_for(changed.wait_for(moved), KEEPALIVE)
                    except asyncio.TimeoutError:
                        yield None
                        continue
                    seen, snap = self._version, self._latest
                yield snap
        finally:
            self._subscribers -= 1
            if self._subscribers == 0 and self._task is not None:
                self._task.cancel()
                self._task, self._latest, self._version = None, None, 0

    async def _produce(self) -> None:
        assert self._changed is not None
        while True:
            try:
                async for snap in changes(self.runner, interval=self.interval):
                    if snap is None:
                        continue
                    async with self._changed:
                        self._latest, self._version = snap, self._version + 1
                        self._changed.notify_all()
            except asyncio.CancelledError:
                raise
            except Exception:  # e.g. the database went away: say so, try again
                log.exception("treadle web console: reading the store for live updates failed")
                await asyncio.sleep(max(1.0, self.interval))


def sse(event: str, data: str, *, id: Any = None) -> str:
    """One server-sent event; multi-line data becomes several ``data:`` lines."""
    head = f"id: {id}\n" if id is not None else ""
    body = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"{head}event: {event}\n{body}\n"


def changed_event(snap: Snapshot) -> str:
    return sse("changed", json.dumps({"seq": snap.seq, "items": snap.items}), id=snap.seq)
