"""``Runner``: submit items, run them, inspect and steer them."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from concurrent.futures import Executor
from datetime import datetime
from typing import Any

from . import _bulk, signals
from ._bulk import make_filter
from ._changes import ChangesMixin
from ._flow import FlowMixin
from ._notify import Notifications
from ._review import ReviewMixin
from ._steer import SteerMixin
from .engine import Scheduler
from .errors import InvalidItemError, ItemNotFoundError
from .limits import check_priority
from .metrics import DEFAULT_SAMPLE, DEFAULT_WINDOW, StageMetrics
from .pipeline import Pipeline
from .serialization import from_json, normalize_id
from .states import ItemState, StageState, SubtaskState
from .status import (
    BulkResult,
    ChildStatus,
    HistoryEntry,
    ItemStatus,
    ReviewInfo,
    RunReport,
    StageStatus,
    SubtaskStatus,
)
from .store.base import StateStore
from .store.logic import item_state
from .store.records import StatusRows


class Runner(ReviewMixin, SteerMixin, ChangesMixin, FlowMixin):
    """Runs a :class:`~treadle.Pipeline` against a store.

    ``workers`` threads run stage functions (or pass any
    ``concurrent.futures.Executor`` as ``executor``); the thread calling
    :meth:`run` is the scheduler. ``lease`` is how long (seconds) this
    runner's claims stay valid without a heartbeat; ``grace`` is how long a
    Ctrl-C / SIGTERM waits for running stages before leaving them for the
    next run. ``async def`` stages, subtasks, gates, conditions and rollbacks
    run on the runner's event loop instead of a worker thread, at most
    ``async_limit`` coroutines at once (independent of ``workers``).
    """

    def __init__(self, pipeline: Pipeline, store: StateStore, *, workers: int = 4,
                 executor: Executor | None = None, lease: float = 30.0,
                 grace: float = 10.0, async_limit: int = 1000) -> None:
        if not isinstance(pipeline, Pipeline):
            raise TypeError(f"pipeline must be a treadle.Pipeline, got {pipeline!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        if isinstance(async_limit, bool) or not isinstance(async_limit, int) or async_limit < 1:
            raise ValueError(f"async_limit must be an int >= 1, got {async_limit!r}")
        if not isinstance(lease, (int, float)) or lease <= 0:
            raise ValueError(f"lease must be a number of seconds > 0, got {lease!r}")
        self.pipeline = pipeline
        self.store = store
        self.workers = workers
        self.executor = executor
        self.lease = float(lease)
        self.grace = float(grace)
        self.async_limit = async_limit
        #: The identity of this runner's claims (``host:pid:random``); a new one
        #: for each run, so two runs never share (or release) each other's claims.
        self.owner = self._new_owner()
        self._prepared = False
        self.notifications = Notifications(pipeline, store)

    def __repr__(self) -> str:
        return f"Runner({self.pipeline.name!r}, {self.store!r}, workers={self.workers})"

    @staticmethod
    def _new_owner() -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

    def _prepare(self) -> None:
        if not self._prepared:
            self.store.prepare(self.pipeline)
            self._prepared = True
            self._on_start()

    # -- feeding -----------------------------------------------------------
    def submit(self, *items: Any, actor: str = "api", priority: int | None = None) -> list[str]:
        """Store items (attrs/dataclass instances or dicts with an ``id``).

        Items whose id is already known are ignored (ids are identity).
        Returns the ids that were new. Every item is checked before any is
        stored, so a bad item leaves the store unchanged. ``priority`` (an
        int, higher first; default: each stage's ``priority``, else 0) orders
        their claims (docs/flow-control.md).
        """
        if priority is not None:
            check_priority(priority)
        if len(items) == 1 and isinstance(items[0], (list, tuple)) and not hasattr(items[0], "id"):
            items = tuple(items[0])
        codec = self.pipeline.codec
        return self._store_rows([(codec.item_id(item), codec.dump(item)) for item in items],
                                actor, priority)

    def _store_rows(self, rows: list[tuple[str, str]], actor: str,
                    priority: int | None) -> list[str]:
        self._prepare()
        new = self.store.submit(self.pipeline, rows, actor, priority)
        for item_id in new:
            signals.send(signals.item_submitted, self.pipeline, item_id=item_id)
        return new

    #: A source is stored in batches of at most this many items or JSON bytes.
    SOURCE_BATCH = (500, 8 * 2**20)

    def submit_source(self) -> list[str]:
        """Submit the items of the pipeline's ``source`` not yet known.

        They are stored as the source yields them, one transaction per batch of
        500 items or 8 MB of JSON, so a large source is never held whole in
        memory. An item that cannot be stored raises there: the batches before
        it are stored, and the next run submits the rest.
        """
        if self.pipeline.source is None:
            return []
        codec, (most, most_bytes) = self.pipeline.codec, self.SOURCE_BATCH
        new: list[str] = []
        rows: list[tuple[str, str]] = []
        size = 0
        for item in self.pipeline.source():
            rows.append((codec.item_id(item), codec.dump(item)))
            size += len(rows[-1][1])
            if len(rows) >= most or size >= most_bytes:
                new += self._store_rows(rows, "source", None)
                rows, size = [], 0
        if rows:
            new += self._store_rows(rows, "source", None)
        return new

    # -- running -----------------------------------------------------------
    def run(self) -> RunReport:
        """Submit the source's new items, then advance everything possible.

        Returns when every item is finished (completed, skipped, rejected,
        failed for good) or waits for a human. Ctrl-C or SIGTERM stops
        claiming new work; running stages get ``grace`` seconds; anything left
        runs again next time.
        """
        self.submit_source()
        return self.advance()

    def advance(self, item_id: Any | None = None) -> RunReport:
        """Like :meth:`run` without submitting the source; optionally only one item.

        A pipeline with children (``@stage(spawns=...)``) runs them too, in
        rounds (docs/nested.md); for such a pipeline ``item_id`` only checks the
        item exists: the whole tree runs.
        """
        if self.pipeline.children:
            from .nested import advance_tree

            if item_id is not None:
                self._known(item_id)
            return advance_tree(self)
        self._prepare()
        self.notifications.start()  # owed ones first; then each new request, off this thread
        self.apply_review_timeouts()
        only = None
        if item_id is not None:
            only = [self._known(item_id)]
        self.owner = self._new_owner()
        sched = Scheduler(self.pipeline, self.store, owner=self.owner, workers=self.workers,
                          executor=self.executor, lease=self.lease, grace=self.grace, only=only,
                          async_limit=self.async_limit)
        c = sched.run()
        held = 0
        if sched.control.paused:  # ready work a pause holds back
            held = (self.store.outlook(self.pipeline, only).ready
                    - self.store.outlook(self.pipeline, only, sched.control.stages or ()).ready)
        return RunReport(
            executed=c.executed, completed=c.completed, failed=c.failed, skipped=c.skipped,
            awaiting_review=c.awaiting_review, refused=c.refused,
            items=self._item_counts(), interrupted=c.interrupted,
            failures=self._failures(), skipped_downstream=c.skipped_downstream,
            cancelled=c.cancelled, paused=held, throttled={**sched.throttle.waited, **sched.keyq.waited},
        )

    def wait_notifications(self, timeout: float = 10.0) -> bool:
        """Wait up to ``timeout`` seconds for the review notifications still being sent
        (``run()`` never waits for them); True when none is left. A process that ends
        before they are sent sends them on its next run."""
        return self.notifications.wait(timeout)

    # -- inspecting ----------------------------------------------------------
    def _known(self, item_id: Any) -> str:
        key = normalize_id(item_id)
        self.store.item_data(self.pipeline, key)  # raises ItemNotFoundError
        return key

    def status(self, item_id: Any) -> ItemStatus:
        """Every stage of one item: state, attempts, output, last error, review."""
        key = normalize_id(item_id)
        rows = self.store.status_rows(self.pipeline, [key]).get(key)
        if rows is None:
            raise ItemNotFoundError(key, self.pipeline.name)
        return self._status(rows)

    def _statuses(self, keys: Sequence[str]) -> list[ItemStatus]:
        """The statuses of a page of items, their rows read together."""
        found = self.store.status_rows(self.pipeline, keys)
        return [self._status(found[k]) for k in keys if k in found]

    def _status(self, rows: StatusRows) -> ItemStatus:
        key = rows.item_id
        records = {r.stage: r for r in rows.stages}
        subtasks: dict[str, dict[str, SubtaskStatus]] = {}
        for sub in rows.subtasks:
            subtasks.setdefault(sub.stage, {})[sub.name] = SubtaskStatus(
                sub.name, SubtaskState(sub.state), sub.attempt, sub.error, from_json(sub.output))
        gated = [n for n, s in self.pipeline.stages.items() if s.gate is not None]
        awaiting = [n for n, r in records.items() if r.state == StageState.AWAITING_REVIEW]
        logs: dict[str, list[dict[str, Any]]] = {}
        previous: dict[str, dict[str, Any]] = {}
        if gated or awaiting:
            from .engine.gate import gate_history

            entries = self.store.history(self.pipeline, key)
            logs = {n: list(gate_history(entries, n).attempts) for n in gated}
            previous = _earlier_decisions(entries, awaiting)
        stages: dict[str, StageStatus] = {}
        for name in self.pipeline.order:
            r = records.get(name)
            if r is None:
                stages[name] = StageStatus(name, StageState.PENDING)
                continue
            review = None
            if r.review is not None:
                rv = from_json(r.review)
                review = ReviewInfo(rv.get("data"), rv.get("message", ""), rv.get("decision"),
                                    rv.get("reviewer"), rv.get("note"), version=r.attempt,
                                    previous=previous.get(name),
                                    options=rv.get("options"), multiple=rv.get("multiple", False),
                                    default=rv.get("default"), choice=rv.get("choice"),
                                    form=(rv.get("form") or {}).get("fields"),
                                    assignees=rv.get("assignees") or [],
                                    escalated_to=rv.get("escalated_to"))
            stages[name] = StageStatus(
                stage=name, state=StageState(r.state), attempts=r.attempt,
                output=from_json(r.output), error=r.error, review=review,
                subtasks=subtasks.get(name, {}), updated_at=r.updated_at,
                attempt_log=logs.get(name, []), fingerprint=r.fingerprint, version=r.version,
            )
        state = item_state(self.pipeline.order,
                           {n: (r.state, r.ready) for n, r in records.items()})
        if rows.stored_state == ItemState.CANCELLED:
            state = ItemState.CANCELLED
        parent = children = None
        if self.pipeline.parents:
            from .nested import parent_of

            parent = parent_of(self.pipeline, self.store, key)
        if self.pipeline.children:
            children = self.children(key)
        return ItemStatus(item_id=key, state=state, stages=stages, submitted_at=rows.submitted_at,
                          version=rows.version, parent=parent, children=children or [])

    def children(self, item_id: Any) -> list[ChildStatus]:
        """The child items ``item_id`` spawned (``Spawn``), with their item states."""
        key = normalize_id(item_id)
        return [ChildStatus(stage, pipeline, child,
                            ItemState.RUNNING if state.startswith("rolling_back") else ItemState(state))
                for stage, pipeline, child, state in self.store.children(self.pipeline, key)]

    def items(self, stage: str | None = None, state: str | None = None,
              error: str | None = None, since: datetime | float | None = None,
              limit: int | None = 100, *, offset: int = 0) -> list[ItemStatus]:
        """Items as :class:`ItemStatus`, at most ``limit`` (None: all), from ``offset`` on.

        With ``stage`` and ``state``: the items whose that stage is in that
        state, oldest change first. With ``state`` alone: items having any
        stage in that state; ``state="cancelled"`` alone: the cancelled items.
        ``error``: a stage's last error contains this
        text (case-insensitive); ``since``: that stage changed at or after this
        time (a ``datetime``, naive meaning local time, or epoch seconds). The
        filters given must all hold for one stage row. Without ``state``, items
        come in submission order. The filtering runs in the store, through its
        indexes; page with ``offset`` (the next page starts at ``offset + limit``).
        """
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be an int >= 1 or None, got {limit!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be an int >= 0, got {offset!r}")
        if state == ItemState.CANCELLED and stage is None and error is None and since is None:
            # an item-level state (its stages keep theirs): the cancelled items, oldest first,
            # through the index of item states
            return self._statuses(self.store.items_in_item_state(
                self.pipeline, ItemState.CANCELLED.value, limit, offset))
        flt = make_filter(self.pipeline, stage, state, error, since)
        return self._statuses([m.item_id for m in self.store.find_items(self.pipeline, flt, limit,
                                                                        offset)])

    def counts(self) -> dict[str, dict[str, int]]:
        """Per stage, the number of items in each state (states with none omitted)."""
        return self.store.counts(self.pipeline)

    def stage_metrics(self, *, window: float = DEFAULT_WINDOW,
                      sample: int = DEFAULT_SAMPLE) -> dict[str, StageMetrics]:
        """Per stage (in pipeline order): items done, p50 / p95 run duration, failure
        and retry rates, throughput over the last ``window`` seconds, waiting reviews.

        Computed in the store from the newest ``sample`` history rows, so it
        costs the same on a store of any size (see :mod:`treadle.metrics`).
        """
        if not isinstance(window, (int, float)) or window <= 0:
            raise ValueError(f"window must be a number of seconds > 0, got {window!r}")
        if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
            raise ValueError(f"sample must be an int >= 1, got {sample!r}")
        return self.store.stage_metrics(self.pipeline, window=float(window), sample=sample)

    def history(self, item_id: Any) -> list[HistoryEntry]:
        """Every recorded transition of an item, oldest first."""
        key = self._known(item_id)
        return [
            HistoryEntry(seq=h["seq"], at=h["at"], item_id=h["item_id"], stage=h["stage"],
                         subtask=h["subtask"], state=h["state"], attempt=h["attempt"],
                         actor=h["actor"], error=h["error"], traceback=h["traceback"],
                         details=from_json(h["details"]))
            for h in self.store.history(self.pipeline, key)
        ]

    def item(self, item_id: Any) -> Any:
        """The stored item, restored as the pipeline's item type."""
        key = normalize_id(item_id)
        data, _ = self.store.item_data(self.pipeline, key)
        try:
            return self.pipeline.codec.load(data)
        except InvalidItemError:
            from .plan import restore_error

            error = restore_error(self.pipeline, from_json(data))
            version = self.store.item_version(self.pipeline, key)
            raise InvalidItemError(
                f"Item {key!r} (recorded at version {version!r}) cannot be restored as "
                f"{getattr(self.pipeline.item_type, '__name__', '?')} of pipeline version "
                f"{self.pipeline.version!r}: {error}. Add @pipeline.migrate(from_version="
                f"{version!r}) to upgrade such items (docs/changes.md).") from None

    # -- steering ------------------------------------------------------------
    def retry(self, item_id: Any | None = None, *, stage: str | None = None,
              actor: str = "api") -> list[tuple[str, str]]:
        """Put failed (or rejected) stages back to pending; the next run redoes them.

        Without ``item_id``, every item's; with ``stage``, only that stage.
        Returns the (item_id, stage) pairs moved.
        """
        key = normalize_id(item_id) if item_id is not None else None
        if stage is not None:
            self.pipeline.check_stage(stage)
        self._prepare()
        return self.store.retry(self.pipeline, key, stage, actor)

    def retry_all(self, stage: str | None = None, *, error: str | None = None,
                  actor: str = "api") -> BulkResult:
        """Every failed (and rejected) stage back to pending, or those of ``stage``, or
        those whose last error contains ``error`` (case-insensitive); one transaction
        per batch of 500. Items rolled back, or changed by someone else meanwhile,
        are skipped (``BulkResult.skipped``)."""
        flt = make_filter(self.pipeline, stage, error=error)
        self._prepare()
        keys = _bulk.select_failed(self.store, self.pipeline, flt.stage, flt.error)
        return _bulk.retry(self.store, self.pipeline, keys, actor=actor)

    # -- summaries -------------------------------------------------------------
    def _item_counts(self) -> dict[str, int]:
        # Every item this run touched has settled, so the stored item states
        # are exact here, and counting them does not read every stage row.
        return {k: v for k, v in self.store.settled_item_counts(self.pipeline).items() if v}

    def item_counts(self, *, exact: bool = False) -> dict[str, int]:
        """Items per item state. By default from each item's last settled state
        (fast; items a runner is working on show their previous state);
        ``exact=True`` derives every item's state from its stages (reads every row)."""
        if exact:
            return self.store.item_state_counts(self.pipeline)
        return self._item_counts()

    def _failures(self) -> list[tuple[str, str, str | None]]:
        out = []
        for status in self.items(state=StageState.FAILED.value, limit=100):
            for name, st in status.stages.items():
                if st.state == StageState.FAILED:
                    out.append((status.item_id, name, st.error))
        return out


def _earlier_decisions(entries: list[dict[str, Any]], stages: list[str]) -> dict[str, dict[str, Any]]:
    """Stage -> the review decision cleared when the stage was last reset as stale."""
    out: dict[str, dict[str, Any]] = {}
    for h in entries:
        if h["stage"] not in stages or not h["details"]:
            continue
        details = from_json(h["details"])
        if isinstance(details, dict) and details.get("reason") == "stale":
            cleared = details.get("cleared_review")
            if isinstance(cleared, dict) and cleared.get("decision") is not None:
                out[h["stage"]] = {**cleared, "why": details.get("why")}
    return out


__all__ = ["Runner"]
