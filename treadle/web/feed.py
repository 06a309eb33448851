"""Live updates: the committed event feed, read once per app and handed to every open stream.

One producer per app (:class:`Broadcast`, started by the first open stream
and stopped with the last) follows the store's event feed with
``Runner.events(since=cursor)``, waiting in between with
``Runner.wait_for_events`` (woken by a notification on PostgreSQL, polling
elsewhere); both run in worker threads, never on the event loop. After each
batch of events it reads the counts once and publishes a :class:`Snapshot`;
the events themselves go into a bounded buffer from which every ``/events``
stream takes what follows its own cursor. A stream whose cursor is older
than the buffer (a client resuming with ``Last-Event-ID`` after a long
absence, or after the server restarted) reads the gap from the store.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs
from starlette.concurrency import run_in_threadpool

from ..status import Event

#: Seconds a wait for new events lasts at most (also the longest a stopped
#: producer's worker thread lingers).
WAIT = 1.0
#: Seconds between two reads of the counts when no event came (what changes
#: without an event, e.g. an expired lease, still shows).
REFRESH = 5.0
#: Seconds between keep-alive comments on an idle stream.
KEEPALIVE = 15.0
#: Events read from the store at once.
BATCH = 1000
#: Recent events kept in memory for the open streams.
BUFFER = 10_000

log = logging.getLogger("treadle.web")


@attrs.frozen
class Snapshot:
    """Where the workload stands: the newest event id (the cursor) and the counts."""

    seq: int | None
    counts: dict[str, dict[str, int]]
    items: dict[str, int]
    paused: tuple[str | None, ...] = ()


def newest_id(runner: Any) -> int:
    """The id of the newest committed event (0 for none); blocking."""
    newest: int = runner.last_event_id()
    return newest


def snapshot(runner: Any, seq: int | None) -> Snapshot:
    """One read of the counts and pauses (blocking: call it in a worker thread)."""
    return Snapshot(seq, runner.counts(), runner.item_counts(), tuple(runner.paused()))


def current(runner: Any) -> Snapshot:
    """A fresh snapshot, for a page that just connected (blocking)."""
    return snapshot(runner, runner.last_event_id())


async def follow(broadcast: Broadcast) -> AsyncIterator[Snapshot | None]:
    """What one ``/stream`` sends: a fresh snapshot at once, then the broadcast's.

    The broadcast's newest snapshot may predate the page that connects (a
    pause it just posted, say): sending it first would flip the page back to
    an older state for a moment, so it is skipped when it is no newer than
    the fresh one.
    """
    fresh = await run_in_threadpool(current, broadcast.runner)
    yield fresh
    first = True
    async for snap in broadcast.subscribe():
        if first and snap is not None and (snap.seq or 0) <= (fresh.seq or 0):
            first = False
            continue
        first = first and snap is None
        yield snap


def wait_and_read(runner: Any, cursor: int, timeout: float = WAIT) -> list[Event]:
    """The events after ``cursor``; when there are none, wait up to ``timeout`` s and read again."""
    batch: list[Event] = runner.events(since=cursor, limit=BATCH)
    if batch:
        return batch
    runner.wait_for_events(timeout)
    events: list[Event] = runner.events(since=cursor, limit=BATCH)
    return events


class Broadcast:
    """One reader of the event feed per app, shared by every open stream.

    ``subscribe()`` yields the newest :class:`Snapshot` at once, then each
    later one (a slow subscriber skips to the newest), and ``None`` after
    ``KEEPALIVE`` seconds without a change. ``after(cursor)`` gives the
    buffered events after ``cursor``, or None when the buffer no longer
    reaches back that far.
    """

    def __init__(self, runner: Any, *, wait: float = WAIT, refresh: float = REFRESH,
                 buffer: int = BUFFER) -> None:
        self.runner = runner
        self.wait = wait
        self.refresh = refresh
        self._latest: Snapshot | None = None
        self._version = 0
        #: Set (and replaced by a fresh one) at each new snapshot.
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribers = 0
        self._events: collections.deque[Event] = collections.deque(maxlen=buffer)
        #: Every event with ``floor < id <= head`` is in the buffer.
        self._floor = self._head = 0

    @property
    def head(self) -> int:
        """The id of the newest event read so far."""
        return self._head

    async def subscribe(self) -> AsyncIterator[Snapshot | None]:
        """The snapshots, as they change; ``None`` as a keep-alive."""
        if self._wake is None:
            self._wake = asyncio.Event()
        self._subscribers += 1
        if self._task is None:
            self._task = asyncio.create_task(self._produce())
        seen = 0
        try:
            while True:
                if self._version == seen:
                    # an Event, not a Condition: a stream cancelled while it waits
                    # (the client left) holds no lock that others would wait for
                    wake = self._wake
                    try:
                        await asyncio.wait_for(wake.wait(), KEEPALIVE)
                    except asyncio.TimeoutError:
                        yield None
                        continue
                    if self._version == seen:
                        continue
                seen, snap = self._version, self._latest
                yield snap
        finally:
            self._subscribers -= 1
            if self._subscribers == 0 and self._task is not None:
                self._task.cancel()
                self._task, self._latest, self._version = None, None, 0
                self._events.clear()
                self._floor = self._head = 0

    def after(self, cursor: int) -> list[Event] | None:
        """The buffered events after ``cursor`` (in commit order), or None when
        some of them are no longer (or not yet) buffered: read those from the store."""
        if cursor < self._floor or self._latest is None:
            return None
        return [e for e in self._events if e.id > cursor] if cursor < self._head else []

    async def _produce(self) -> None:
        started = False
        while True:
            try:
                if not started:
                    head = await run_in_threadpool(newest_id, self.runner)
                    self._floor = self._head = head
                    self._publish(await run_in_threadpool(snapshot, self.runner, head))
                    started, refreshed = True, time.monotonic()
                batch = await run_in_threadpool(wait_and_read, self.runner, self._head, self.wait)
                if batch:
                    for event in batch:
                        if len(self._events) == self._events.maxlen:
                            self._floor = self._events[0].id
                        self._events.append(event)
                    self._head = batch[-1].id
                if batch or time.monotonic() - refreshed >= self.refresh:
                    refreshed = time.monotonic()
                    snap = await run_in_threadpool(snapshot, self.runner, self._head)
                    if batch or snap != self._latest:
                        self._publish(snap)
            except asyncio.CancelledError:
                raise
            except Exception:  # e.g. the database went away: say so, try again
                log.exception("treadle web console: reading the event feed failed")
                await asyncio.sleep(1.0)

    def _publish(self, snap: Snapshot) -> None:
        self._latest, self._version = snap, self._version + 1
        wake, self._wake = self._wake, asyncio.Event()
        if wake is not None:
            wake.set()


async def events_after(broadcast: Broadcast, cursor: int) -> list[Event]:
    """The events after ``cursor``: from the buffer, or (when it does not reach back) the store."""
    buffered = broadcast.after(cursor)
    if buffered is not None:
        return buffered
    batch: list[Event] = await run_in_threadpool(
        lambda: broadcast.runner.events(since=cursor, limit=BATCH))
    return batch


def sse(event: str, data: str, *, id: Any = None) -> str:
    """One server-sent event; multi-line data becomes several ``data:`` lines."""
    head = f"id: {id}\n" if id is not None else ""
    body = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"{head}event: {event}\n{body}\n"


def changed_event(snap: Snapshot) -> str:
    return sse("changed", json.dumps({"seq": snap.seq, "items": snap.items}), id=snap.seq)


def event_json(event: Event) -> str:
    """An event as the ``/events`` stream sends it (one line of JSON)."""
    return json.dumps(attrs.asdict(event), ensure_ascii=False, default=str)


def cursor_of(request: Any) -> int | None:
    """Where an ``/events`` client resumes: ``Last-Event-ID`` (sent by a reconnecting
    browser), else ``?since=``; None to start at the newest event."""
    for raw in (request.headers.get("last-event-id"), request.query_params.get("since")):
        if raw is not None and raw.strip():
            value = int(raw)
            if value < 0:
                raise ValueError(raw)
            return value
    return None
