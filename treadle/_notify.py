"""Telling people that a review waits: ``@stage(notify=...)``.

A :class:`Notifications` dispatcher belongs to one runner. It sends on its own
daemon thread, so a notifier that hangs or raises never slows or breaks a
run. What is owed is derived from the store (:func:`owed`): review requests
(awaiting-review rows, and their escalations) that have no ``notified``
history row for the notifier yet. Each send is recorded as such a row (sent,
or failed with the error), after the send: a process killed between a
review's commit and its notification sends it on its next run, at least
once; a repeat carries the same :attr:`ReviewRequest.id`, so receivers can
drop it.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs

from . import signals
from ._crash import crash_point

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .store.base import StateStore

_log = logging.getLogger("treadle.notify")

#: The history state of a notification record (details: request, notifier, ok, error).
NOTIFIED = "notified"
#: Crash points around a send (not in ``CRASH_POINTS``: tests/test_notify.py kills there).
NOTIFY_POINTS = ("before-notify", "after-notify")


@attrs.frozen
class ReviewRequest:
    """What a notifier is told: a review waits (``kind="review"``) or was escalated
    (``kind="escalation"``) to ``assignees``.

    ``id`` is the same for every send of one request (a resend after a crash
    included): receivers drop repeats by it.
    """

    id: str
    kind: str
    pipeline: str
    item_id: str
    stage: str
    version: int
    message: str = ""
    data: Any = None
    options: list[str] | None = None
    form: list[dict[str, Any]] | None = None
    assignees: list[str] = attrs.field(factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The request as plain JSON data (what the webhook posts)."""
        return attrs.asdict(self)


#: A notifier: any callable taking a :class:`ReviewRequest`; what it raises is recorded.
Notifier = Callable[[ReviewRequest], Any]


def notifier_name(notifier: Any) -> str:
    """How the history names a notifier: its ``name``, else its qualified name."""
    name = getattr(notifier, "name", None)
    if isinstance(name, str) and name:
        return name
    return str(getattr(notifier, "__qualname__", None) or type(notifier).__qualname__)


def request_of(pipeline: Pipeline, item_id: str, stage: str, version: int,
               review: dict[str, Any], kind: str = "review") -> ReviewRequest:
    """The review request of one awaiting stage (its stored review record)."""
    rid = f"{pipeline.name}/{item_id}/{stage}/{version}"
    assignees = review.get("assignees") or []
    if kind == "escalation":
        rid += "/escalation"
        assignees = review.get("escalated_to") or assignees
    return ReviewRequest(rid, kind, pipeline.name, item_id, stage, version,
                         review.get("message", ""), review.get("data"), review.get("options"),
                         (review.get("form") or {}).get("fields"), list(assignees))


def owed(pipeline: Pipeline, store: StateStore) -> Iterator[tuple[ReviewRequest, Any]]:
    """Every (request, notifier) that has no notification record yet.

    One small query over the stored state: the awaiting-review rows of the
    stages with notifiers, and the ``notified`` history rows of those items.
    """
    for name, spec in pipeline.stages.items():
        if not spec.notify:
            continue
        for item_id in store.item_ids(pipeline, name, "awaiting_review", None):
            rec = next((r for r in store.stage_records(pipeline, item_id) if r.stage == name), None)
            if rec is None or rec.state != "awaiting_review" or not rec.review:
                continue
            review = json.loads(rec.review)
            done = set()
            for h in store.history(pipeline, item_id):
                if h["state"] == NOTIFIED and h["stage"] == name:
                    d = json.loads(h["details"] or "{}")
                    done.add((d.get("request"), d.get("notifier")))
            kinds = ["review", "escalation"] if review.get("escalated_to") else ["review"]
            for kind in kinds:
                request = request_of(pipeline, item_id, name, rec.attempt, review, kind)
                for n in spec.notify:
                    if (request.id, notifier_name(n)) not in done:
                        yield request, n


class Notifications:
    """One runner's notification sender: a daemon thread fed by a queue."""

    def __init__(self, pipeline: Pipeline, store: StateStore) -> None:
        self.pipeline = pipeline
        self.store = store
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._sent: set[tuple[str, str]] = set()  # (request id, notifier) handled here
        self._pending = 0
        self._cond = threading.Condition()
        self._connected = False
        self.active = any(s.notify for s in pipeline.stages.values())

    #: Seconds the thread stays without work before it ends (the next job starts another).
    IDLE = 2.0

    def start(self) -> None:
        """Listen for review requests and look for what is owed from earlier runs."""
        if not self.active:
            return
        if not self._connected:  # a bound method, held weakly: it goes with its runner
            signals.review_required.connect(self._on_review, sender=self.pipeline)
            self._connected = True
        self._put(("sweep", None))

    def _on_review(self, sender: Any, **data: Any) -> None:
        if self.pipeline.stages[data["stage"]].notify:
            self._put(("item", (data["item_id"], data["stage"], "review")))

    def escalated(self, item_id: str, stage: str) -> None:
        """A review timeout reassigned this review: tell the stage's notifiers."""
        if self.active and self.pipeline.stages[stage].notify:
            self._put(("item", (item_id, stage, "escalation")))

    def _put(self, job: tuple[str, Any]) -> None:
        with self._cond:
            self._pending += 1
            self._queue.put(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="treadle-notify",
                                                daemon=True)
                self._thread.start()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every queued send is done; True if so."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _loop(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=self.IDLE)
            except queue.Empty:
                with self._cond:
                    if self._queue.empty():
                        self._thread = None
                        break
                continue
            try:
                kind, arg = job
                jobs = owed(self.pipeline, self.store) if kind == "sweep" else self._fresh(*arg)
                for request, notifier in jobs:
                    self._send(request, notifier)
            except Exception:  # noqa: BLE001 - the store went away: the next run sends it
                _log.exception("treadle: could not look up review notifications; retried next run")
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()
        close = getattr(self.store, "close_thread_connection", None)
        if close is not None:  # a SQL store's connection of this (ending) thread
            close()

    def _fresh(self, item_id: str, stage: str, kind: str) -> list[tuple[ReviewRequest, Any]]:
        rec = next((r for r in self.store.stage_records(self.pipeline, item_id)
                    if r.stage == stage), None)
        if rec is None or rec.state != "awaiting_review" or not rec.review:
            return []  # decided meanwhile
        request = request_of(self.pipeline, item_id, stage, rec.attempt, json.loads(rec.review),
                             kind)
        return [(request, n) for n in self.pipeline.stages[stage].notify]

    def _send(self, request: ReviewRequest, notifier: Any) -> None:
        name = notifier_name(notifier)
        if (request.id, name) in self._sent:
            return
        crash_point("before-notify")
        error = None
        try:
            notifier(request)
        except BaseException as exc:  # noqa: BLE001 - a notifier never breaks anything
            error = f"{type(exc).__name__}: {exc}"
            _log.warning("treadle: notifier %s failed for %s: %s", name, request.id, error)
        crash_point("after-notify")
        self._sent.add((request.id, name))
        details = {"request": request.id, "kind": request.kind, "notifier": name,
                   "ok": error is None, "error": error}
        self.store.record_notification(self.pipeline, request.item_id, request.stage,
                                       request.version, details)


__all__ = ["NOTIFIED", "Notifications", "Notifier", "ReviewRequest", "notifier_name", "owed",
           "request_of"]
