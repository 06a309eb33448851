"""Steering a pipeline from anywhere: cancel, pause, resume, and the committed event feed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import signals
from .serialization import from_json, normalize_id
from .status import Event
from .store.control import ALL, PIPELINE_EVENT, paused
from .store.records import CANCELLED, PAUSE, RESUME

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .store.base import StateStore


class SteerMixin:
    """The cancel, pause and event-feed methods of :class:`~treadle.Runner`."""

    pipeline: Pipeline
    store: StateStore

    def _prepare(self) -> None: ...

    def cancel(self, item_ids: Any, *, reason: str = "", actor: str = "api") -> list[str]:
        """Cancel items still in progress (pending, running or awaiting review).

        In one transaction: their waiting stages never start, their reviews are
        withdrawn, and stages running right now (in this or any other runner)
        have their results discarded; those runners set ``ctx.cancelled`` so the
        stage can stop early. The item ends ``cancelled``, a final state; with
        ``Pipeline(on_failure="rollback")`` the rollbacks of its completed stages
        run first. ``item_ids`` is one id or an iterable of ids. All or none: an
        unknown item raises ``ItemNotFoundError``, a finished one
        ``InvalidTransitionError``, and nothing changes. Returns the ids cancelled.
        """
        ids = [normalize_id(i) for i in _as_list(item_ids)]
        if not ids:
            return []
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, got {reason!r}")
        self._prepare()
        done = self.store.cancel(self.pipeline, ids, reason, actor)
        for item_id, state in done:
            signals.send(signals.item_cancelled, self.pipeline, item_id=item_id, reason=reason,
                         actor=actor, state=state)
            if state == CANCELLED:  # else once its rollbacks ran
                signals.send(signals.item_finished, self.pipeline, item_id=item_id, state=state)
        return [i for i, _ in done]

    def pause(self, stage: str | None = None, *, reason: str | None = None,
              actor: str = "api") -> bool:
        """Stop every runner on the store from starting ``stage`` (None: any stage).

        Stored, so runners in other processes honour it before their next
        claim; stages already running finish. ``run()`` returns once only
        paused work is left (its report counts it as ``paused``). Returns False
        if it was paused already.
        """
        if stage is not None:
            stage = self.pipeline.check_stage(stage)
        self._prepare()
        return self.store.pause(self.pipeline, stage, actor, reason)

    def resume(self, stage: str | None = None, *, actor: str = "api") -> bool:
        """Lift the pause of ``stage``; without ``stage``, every pause. Returns
        False if there was none to lift."""
        if stage is not None:
            stage = self.pipeline.check_stage(stage)
        self._prepare()
        return self.store.resume(self.pipeline, stage, actor)

    def paused(self) -> list[str | None]:
        """What is paused now: stage names, and None for the whole pipeline."""
        now = paused(self.store.control(self.pipeline, 0, (PAUSE, RESUME)))
        return [None if t == ALL else t for t in sorted(now)]

    def events(self, since: int = 0, limit: int = 1000, *, item_id: Any | None = None
               ) -> list[Event]:
        """Committed events after the cursor ``since``, in commit order.

        Every runner's events, read from the store: pass the ``id`` of the last
        event you have as ``since`` to get the next ones, each exactly once.
        ``item_id`` keeps one item's.
        """
        if isinstance(since, bool) or not isinstance(since, int) or since < 0:
            raise ValueError(f"since must be an event id (an int >= 0), got {since!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int >= 1, got {limit!r}")
        key = normalize_id(item_id) if item_id is not None else None
        return [to_event(r) for r in self.store.events(self.pipeline, since, limit, key)]

    def last_event_id(self) -> int:
        """The ``id`` of the newest event (0 when there is none): a cursor to follow
        only what comes next."""
        return self.store.last_event_id(self.pipeline)

    def wait_for_events(self, timeout: float) -> None:
        """Block until a commit may have added events (at most ``timeout`` s): on
        PostgreSQL a notification wakes it, elsewhere it polls."""
        self.store.wait_for_events(self.pipeline, timeout)


def to_event(row: dict[str, Any]) -> Event:
    """A history row, as the store reads it, as an :class:`Event`."""
    item = row["item_id"]
    return Event(id=row["seq"], at=row["at"], item_id=None if item == PIPELINE_EVENT else item,
                 stage=row["stage"], subtask=row["subtask"], state=row["state"],
                 attempt=row["attempt"], actor=row["actor"], error=row["error"],
                 details=from_json(row["details"]))


def _as_list(item_ids: Any) -> list[Any]:
    if isinstance(item_ids, (str, int)):
        return [item_ids]
    if isinstance(item_ids, Iterable):
        return list(item_ids)
    return [item_ids]


__all__ = ["SteerMixin", "to_event"]
