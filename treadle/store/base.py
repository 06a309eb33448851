"""The ``StateStore`` protocol and ``BaseStore``, which runs the transition
operations (``flow``, ``fanout``, ``human``, ``rollback``) inside a store's
transactions.

A store keeps three kinds of rows per pipeline: items (id + JSON data),
stage runs (one per item and stage: state, ready flag, attempt, owner, output,
error, review) and an append-only history. The runner talks to it in *group
commits*: one transaction applies a batch of finished stages (each guarded on
its owner and attempt), marks the dependents that became ready, records which
items finished, and claims the next batch of ready work.

Threads may share one store: the SQL stores use one connection per thread,
the memory store one lock, and the item cache (``itemcache.py``) its own, so a
heartbeat or ``recover`` on one thread may run while another commits.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar, runtime_checkable

import tenacity

from ..errors import ItemNotFoundError
from ..metrics import StageMetrics
from ..states import StageState
from . import chain, changes, control, fanout, flow, human, limits, nested, rollback
from .itemcache import DEFAULT_LIMIT as DEFAULT_ITEM_CACHE
from .itemcache import ItemCache
from .logic import item_state
from .query import Filter, Match
from .records import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    Claim,
    CommitResult,
    ControlRow,
    FanOutPlan,
    FanOutStart,
    HistoryRow,
    Outlook,
    ResultRow,
    Shape,
    StageRecord,
    StatusRows,
    SubRecord,
    SubResult,
    Transition,
    dumps,
)
from .tx import Tx

_T = TypeVar("_T")

#: ``alive(pid)``: is a process of this host alive?
Alive = Callable[[int], bool]


@runtime_checkable
class StateStore(Protocol):
    """What a runner needs from a store. The memory and SQL stores implement
    it through :class:`BaseStore`; ``treadle.testing`` has the conformance suite."""

    url: str

    # -- pipeline shape and submission
    def prepare(self, shape: Shape) -> None: ...
    def submit(self, shape: Shape, items: Sequence[tuple[str, str]], actor: str,
               priority: int | None = None) -> list[str]: ...
    # -- runners and leases
    def register_runner(self, owner: str, host: str, pid: int, lease: float) -> None: ...
    def heartbeat(self, owner: str, lease: float) -> None: ...
    def unregister_runner(self, owner: str) -> None: ...
    def recover(self, shape: Shape, host: str, alive: Alive) -> list[tuple[str, str, int]]: ...
    def release(self, shape: Shape, owner: str, keys: Sequence[tuple[str, str, int]],
                unstarted: Sequence[tuple[str, str, int]] = ()) -> None: ...
    def release_orphans(self, shape: Shape, owner: str, keep: set[tuple[str, str, int]]) -> int: ...
    def is_disconnect(self, exc: BaseException) -> bool: ...
    # -- the hot path
    def commit(self, shape: Shape, owner: str, transitions: Sequence[Transition],
               claim_limit: int, only: Sequence[str] | None = None, *,
               fanouts: Sequence[FanOutStart] = (),
               subtasks: Sequence[SubResult] = (),
               restarts: Sequence[tuple[str, str, str]] = (),
               stages: Sequence[str] | None = None,
               inputs: chain.Inputs | None = None,
               sub_rates: fanout.Rates | None = None) -> CommitResult: ...
    def outlook(self, shape: Shape, only: Sequence[str] | None = None,
                stages: Sequence[str] | None = None) -> Outlook: ...
    # -- flow control (docs/flow-control.md)
    def prioritize(self, shape: Shape, item_ids: Sequence[str], priority: int,
                   actor: str) -> list[str]: ...
    def limit_status(self, shape: Shape) -> list[limits.LimitStatus]: ...
    def item_priorities(self, shape: Shape, item_ids: Iterable[str]) -> dict[str, int]: ...
    def items_at_priority(self, shape: Shape, at_least: int) -> list[str]: ...
    # -- pause, resume, cancel, and the event feed
    def control(self, shape: Shape, since: int = 0,
                kinds: Sequence[str] | None = None) -> list[ControlRow]: ...
    def pause(self, shape: Shape, stage: str | None, actor: str, reason: str | None = None
              ) -> bool: ...
    def resume(self, shape: Shape, stage: str | None, actor: str) -> bool: ...
    def cancel(self, shape: Shape, item_ids: Sequence[str], reason: str, actor: str
               ) -> list[tuple[str, str]]: ...
    def events(self, shape: Shape, since: int, limit: int,
               item_id: str | None = None) -> list[dict[str, Any]]: ...
    def wait_for_events(self, shape: Shape, timeout: float) -> None: ...
    def last_event_id(self, shape: Shape) -> int: ...
    # -- rollbacks
    def claim_rollbacks(self, shape: Shape, owner: str, limit: int,
                        only: Sequence[str] | None = None) -> list[tuple[str, list[str]]]: ...
    def record_rollback(self, shape: Shape, owner: str, item_id: str, stage: str, *,
                        error: str | None, traceback: str | None) -> bool: ...
    def finish_rollback(self, shape: Shape, owner: str, item_id: str) -> str | None: ...
    # -- reads
    def subtask_records(self, shape: Shape, item_id: str) -> list[SubRecord]: ...
    def item_state_counts(self, shape: Shape) -> dict[str, int]: ...
    def settled_item_counts(self, shape: Shape) -> dict[str, int]: ...
    def stored_item_states(self, shape: Shape, item_ids: Iterable[str] | None
                           ) -> dict[str, str]: ...
    def items_in_item_state(self, shape: Shape, state: str, limit: int | None,
                            offset: int = 0) -> list[str]: ...
    def stage_records(self, shape: Shape, item_id: str) -> list[StageRecord]: ...
    def status_rows(self, shape: Shape, item_ids: Sequence[str]) -> dict[str, StatusRows]: ...
    def item_ids(self, shape: Shape, stage: str | None, state: str | None,
                 limit: int | None) -> list[str]: ...
    def find_items(self, shape: Shape, flt: Filter, limit: int | None = None,
                   offset: int = 0) -> list[Match]: ...
    def counts(self, shape: Shape) -> dict[str, dict[str, int]]: ...
    def history(self, shape: Shape, item_id: str) -> list[dict[str, Any]]: ...
    def stage_metrics(self, shape: Shape, *, window: float, sample: int) -> dict[str, StageMetrics]: ...
    def item_data(self, shape: Shape, item_id: str) -> tuple[str, float]: ...
    # -- human operations
    def retry(self, shape: Shape, item_id: str | None, stage: str | None,
              actor: str) -> list[tuple[str, str]]: ...
    def decide(self, shape: Shape, item_id: str, stage: str, *, approve: bool,
               output: str | None, review: dict[str, Any], actor: str,
               details: dict[str, Any], expect: int | None = None) -> CommitResult: ...
    def rerun(self, shape: Shape, item_id: str, stage: str, actor: str) -> list[str]: ...
    def decide_many(self, shape: Shape, keys: Sequence[tuple[str, str, int | None]], *,
                    approve: bool, review: dict[str, Any], actor: str,
                    details: dict[str, Any]) -> tuple[CommitResult, list[tuple[str, str]]]: ...
    def retry_rows(self, shape: Shape, rows: Sequence[tuple[str, str]],
                   actor: str) -> list[tuple[str, str]]: ...
    def request_changes(self, shape: Shape, item_id: str, stage: str, *, feedback: Any,
                        actor: str, reviewer: str | None, expect: int | None = None) -> None: ...
    def overdue_reviews(self, shape: Shape, stage: str, timeout: float) -> list[str]: ...
    # -- definition changes (docs/changes.md)
    def result_rows(self, shape: Shape) -> list[ResultRow]: ...
    def definitions(self, shape: Shape) -> dict[tuple[str, str], str]: ...
    def item_versions(self, shape: Shape) -> list[tuple[str, str | None, str, str]]: ...
    def item_version(self, shape: Shape, item_id: str) -> str | None: ...
    def reset_stale(self, shape: Shape, resets: Sequence[tuple[str, str, dict[str, Any]]],
                    actor: str) -> list[tuple[str, str]]: ...
    def migrate_items(self, shape: Shape, from_version: str | None, to_version: str,
                      fn: Callable[[str], str], limit: int, actor: str) -> int: ...
    def escalate_review(self, shape: Shape, item_id: str, stage: str,
                        assignees: Sequence[str], actor: str) -> bool: ...
    def record_notification(self, shape: Shape, item_id: str, stage: str, version: int,
                            details: dict[str, Any]) -> None: ...
    # -- nested pipelines
    def settle_waiting(self, shape: Shape) -> int: ...
    def children(self, shape: Shape, item_id: str) -> list[tuple[str, str, str, str]]: ...
    def parents(self, pipeline: str, item_ids: Sequence[str]) -> list[tuple[str, str, str, str]]: ...
    def close(self) -> None: ...


_CACHE_LOCKS = threading.Lock()  # creates each store's item cache once


class BaseStore(abc.ABC):
    """The transition operations, each run in one of the store's transactions."""

    url: str = ""
    #: The byte bound of a new store's item cache (``item_cache=`` in the URL
    #: overrides it per store); see :mod:`treadle.store.itemcache`.
    ITEM_CACHE_BYTES = DEFAULT_ITEM_CACHE

    @property
    def item_cache(self) -> ItemCache:
        """Item JSON kept for the claims to come, at most ``item_cache.limit`` bytes."""
        cache: ItemCache | None = self.__dict__.get("_item_cache")
        if cache is None:
            with _CACHE_LOCKS:
                cache = self.__dict__.setdefault("_item_cache", ItemCache(self.ITEM_CACHE_BYTES))
        return cache

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[Tx]:
        """Context manager yielding a :class:`Tx` inside one write transaction."""

    @abc.abstractmethod
    def register_runner(self, owner: str, host: str, pid: int, lease: float) -> None:
        """Record a runner (or renew it) with a lease of ``lease`` seconds."""

    @abc.abstractmethod
    def heartbeat(self, owner: str, lease: float) -> None:
        """Extend a runner's lease; registers it again if its row was removed."""

    @abc.abstractmethod
    def unregister_runner(self, owner: str) -> None:
        """Forget a runner."""

    # -- submission and pipeline shape ---------------------------------------
    def prepare(self, shape: Shape) -> None:
        """Make sure every item has a row for every stage and readiness is right.

        Run once per runner start: it is what lets a pipeline gain stages
        between runs (a new stage runs for items already past its deps).
        """
        with self.transaction() as tx:
            renamed = flow.rename(tx, shape)
            if self._reconcile(tx, shape) or renamed:
                flow.resettle(tx, shape)
            changes.record_definitions(tx, shape)

    @abc.abstractmethod
    def _reconcile(self, tx: Tx, shape: Shape) -> bool:
        """Insert missing stage rows for known items and recompute ``ready``;
        False when the shape is the one already reconciled (nothing done)."""

    def submit(self, shape: Shape, items: Sequence[tuple[str, str]], actor: str,
               priority: int | None = None) -> list[str]:
        """Store new items (id, JSON) with pending stage rows; known ids are ignored.

        ``priority`` (None: each stage's default, else 0) orders their claims."""
        if not items:
            return []
        with self.transaction() as tx:
            new = tx.insert_items(shape.name, items, getattr(shape, "version", None))
            roots = {s for s in shape.order if not shape.deps[s]}
            # generators: a large submission is streamed into the statements
            tx.insert_stage_rows(shape.name, ((i, s, s in roots) for i in new for s in shape.order))
            if new and (priority or getattr(shape, "priorities", None)):
                limits.set_priorities(tx, shape, new, priority)
            version = getattr(shape, "version", None)
            details = None if version is None else dumps({"version": version}, what="version")
            tx.append_history(shape.name, (HistoryRow(i, None, "submitted", 0, actor, details=details)
                                           for i in new))
        return new

    def prioritize(self, shape: Shape, item_ids: Sequence[str], priority: int,
                   actor: str) -> list[str]:
        """Give these items' runs ``priority`` (their later stages too); an unknown
        id raises :class:`~treadle.ItemNotFoundError` and changes nothing."""
        with self.transaction() as tx:
            return limits.prioritize(tx, shape, item_ids, priority, actor)

    def limit_status(self, shape: Shape) -> list[limits.LimitStatus]:
        """Each shared limit: tokens, waiting runs, runs in use (``Runner.limits``)."""
        if not limits.limits_of(shape) and not limits.named_of(shape):
            return []
        with self.transaction() as tx:
            return limits.status(tx, shape)

    def items_at_priority(self, shape: Shape, at_least: int) -> list[str]:
        """Items of priority ``at_least`` or more, highest first, then oldest."""
        with self.transaction() as tx:
            return tx.items_at_priority(shape.name, at_least)

    def item_priorities(self, shape: Shape, item_ids: Iterable[str]) -> dict[str, int]:
        """The priority of each known item of ``item_ids``."""
        with self.transaction() as tx:
            return tx.item_priorities(shape.name, item_ids)

    # -- the hot path -------------------------------------------------------
    def commit(self, shape: Shape, owner: str, transitions: Sequence[Transition],
               claim_limit: int, only: Sequence[str] | None = None, *,
               fanouts: Sequence[FanOutStart] = (),
               subtasks: Sequence[SubResult] = (),
               restarts: Sequence[tuple[str, str, str]] = (),
               stages: Sequence[str] | None = None,
               inputs: chain.Inputs | None = None,
               sub_rates: fanout.Rates | None = None) -> CommitResult:
        """Apply finished stages, mark dependents ready, claim the next work: one transaction.

        ``only`` restricts claims to those item ids, ``stages`` to those stages
        (the runner leaves paused ones out). ``fanouts`` start the
        subtasks of stages that returned FanOut; ``subtasks`` are subtask
        results; ``restarts`` (item, stage, subtask) claim retried subtasks again.
        ``inputs`` (optional) are the outputs each finished run was given: a
        successor claimed in this commit (``chain.py``) gets its inputs from
        them instead of a read.
        ``sub_rates`` gives the subtasks whose key has a rate (item, stage, name)
        -> (key, rate): they start only with a token (in ``restarted``, also
        those of the fan-outs started here; ``CommitResult.sub_waits`` says when
        the next is due for the others).
        """
        with self.transaction() as tx:
            plans, wanted = (fanout.start_fanouts(tx, shape, owner, fanouts, sub_rates)
                             if fanouts else ([], []))
            sub_ok, sub_refused = fanout.apply_subtasks(tx, shape, owner, subtasks)
            restarted, again = (fanout.restart_subtasks(tx, shape, owner, restarts, sub_rates)
                                if restarts else ([], []))
            wanted += again
            accepted, refused = flow.apply(tx, shape, owner, transitions)
            if accepted and getattr(shape, "children", None):
                nested.spawn(tx, shape, owner, accepted)  # Spawn: children with the parent
            chained: list[tuple[str, str, int]] = []

            def successors(ready: list[tuple[str, str]]) -> list[tuple[str, str]]:
                claimed, left = chain.claim_successors(tx, shape, owner, accepted, ready,
                                                       claim_limit, only, stages)
                chained.extend(claimed)
                return left

            skipped, check = flow.advance(tx, shape, owner, accepted,
                                          successors if claim_limit > 0 else None)
            finished = flow.finish(tx, shape, check)
            waits: dict[str, float] = {}
            sub_waits: dict[tuple[str, str, str], float] = {}
            claims = (self._claim(tx, shape, owner, claim_limit - len(chained), only, stages,
                                  waits, chained, chain.chained_outputs(chained, shape, accepted,
                                                                        inputs),
                                  wanted, sub_waits, restarted)
                      if claim_limit > 0 or wanted else [])
        if finished:  # no stage of these is claimed again (but for a retry: read again then)
            self.item_cache.discard(shape.name, [i for i, _ in finished])
        return CommitResult(accepted, refused, skipped, finished, claims, plans, sub_ok, sub_refused,
                            restarted, waits, sub_waits)

    def _claim(self, tx: Tx, shape: Shape, owner: str, limit: int,
               only: Sequence[str] | None, stages: Sequence[str] | None = None,
               waits: dict[str, float] | None = None,
               chained: Sequence[tuple[str, str, int]] = (),
               known: Mapping[tuple[str, str], Mapping[str, str | None]] | None = None,
               wanted: Sequence[limits.SubtaskWant] = (),
               sub_waits: dict[tuple[str, str, str], float] | None = None,
               restarted: list[tuple[str, str, str, int]] | None = None) -> list[Claim]:
        """Claim up to ``limit`` ready rows after the ``chained`` ones (already claimed;
        ``known`` holds the inputs of those that need no read, by (item, stage)), and
        start the ``wanted`` subtasks their keys' buckets have tokens for."""
        rows: list[tuple[str, str, int]] = list(chained)
        names = shape.order if stages is None else stages
        shared = limits.limits_of(shape)
        if wanted or (limit > 0 and names and shared and any(s in shared for s in names)):
            got = limits.claim(tx, shape, owner, names, limit, only, wanted)
            rows += got.rows
            if waits is not None:
                waits.update(got.waits)
            if sub_waits is not None:
                sub_waits.update(got.sub_waits)
            if restarted is not None and got.granted:
                restarted += fanout.grant(tx, shape, owner, got.granted)
        elif limit > 0 and names:
            rows += tx.claim(shape.name, owner, names, limit, only)
        if not rows:
            return []
        tx.append_history(shape.name, [HistoryRow(i, s, RUNNING, a, owner) for i, s, a in rows])
        # Items never change once stored: their JSON is kept for the next stages (a
        # cache bounded in bytes, shared by every thread using this store).
        ids = {i for i, _, _ in rows}
        items = self.item_cache.get(shape.name, ids)
        if len(items) < len(ids):
            fetched = tx.items_json(shape.name, ids - items.keys())
            self.item_cache.put(shape.name, fetched, missed=len(fetched))
            items.update(fetched)
        known = known or {}
        need = {i for i, s, _ in rows if shape.deps[s] and (i, s) not in known}
        outputs = tx.completed_outputs(shape.name, need) if need else {}
        plans = fanout.resumable(tx, shape, rows)
        return [Claim(i, s, a, items[i], known[(i, s)] if (i, s) in known else outputs.get(i, {}),
                      plans.get((i, s)))
                for i, s, a in rows]

    @abc.abstractmethod
    def find_items(self, shape: Shape, flt: Filter, limit: int | None = None,
                   offset: int = 0) -> list[Match]:
        """One :class:`~treadle.store.query.Match` per item passing ``flt``: oldest change
        first when ``flt.state`` is given, else in submission order; the page
        ``[offset, offset + limit)`` of them."""

    def item_ids(self, shape: Shape, stage: str | None, state: str | None,
                 limit: int | None) -> list[str]:
        """Ids of the items having ``stage`` (or any stage) in ``state`` (see ``find_items``)."""
        return [m.item_id for m in self.find_items(shape, Filter(stage, state), limit)]

    def item_state_counts(self, shape: Shape) -> dict[str, int]:
        """Number of items in each item-level state (one pass over the stage rows)."""
        per_item: dict[str, dict[str, tuple[str, bool]]] = {}
        for item_id, stage, state, ready in self._all_stage_rows(shape):
            per_item.setdefault(item_id, {})[stage] = (state, ready)
        stored = self.stored_item_states(shape, None)
        counts: dict[str, int] = {}
        for item_id, states in per_item.items():
            key = (CANCELLED if stored.get(item_id) == CANCELLED
                   else item_state(shape.order, states).value)
            counts[key] = counts.get(key, 0) + 1
        return counts

    @abc.abstractmethod
    def stored_item_states(self, shape: Shape, item_ids: Iterable[str] | None
                           ) -> dict[str, str]:
        """The recorded state of these items (None: every item), as stored: the
        last settled state, ``cancelled``, or ``rolling_back[:owner]``."""

    def status_rows(self, shape: Shape, item_ids: Sequence[str]) -> dict[str, StatusRows]:
        """The stored rows of each known item of ``item_ids`` (unknown ids are left out).

        This default reads item by item; the SQL stores read a page of items in
        three statements (``items()`` shows up to a page of statuses at once)."""
        out: dict[str, StatusRows] = {}
        states = self.stored_item_states(shape, item_ids)
        for item_id in item_ids:
            if item_id not in states:
                continue
            _, submitted = self.item_data(shape, item_id)
            out[item_id] = StatusRows(item_id, submitted, self.item_version(shape, item_id),
                                      states[item_id], self.stage_records(shape, item_id),
                                      self.subtask_records(shape, item_id))
        return out

    @abc.abstractmethod
    def stage_records(self, shape: Shape, item_id: str) -> list[StageRecord]:
        """Every stage row of one item, in pipeline order (stages no longer in it left out)."""

    @abc.abstractmethod
    def subtask_records(self, shape: Shape, item_id: str) -> list[SubRecord]:
        """Every subtask row of one item."""

    @abc.abstractmethod
    def item_data(self, shape: Shape, item_id: str) -> tuple[str, float]:
        """(item JSON, submitted_at); :class:`~treadle.ItemNotFoundError` if unknown."""

    @abc.abstractmethod
    def item_version(self, shape: Shape, item_id: str) -> str | None:
        """The pipeline version an item was recorded at (None: without one)."""

    @abc.abstractmethod
    def items_in_item_state(self, shape: Shape, state: str, limit: int | None,
                            offset: int = 0) -> list[str]:
        """Items whose recorded item state is ``state`` (e.g. ``cancelled``), oldest
        first: the page ``[offset, offset + limit)``, read through the item states' index."""

    @abc.abstractmethod
    def _all_stage_rows(self, shape: Shape) -> Iterable[tuple[str, str, str, bool]]:
        """(item_id, stage, state, ready) of every stage row of the pipeline."""

    # -- leases ------------------------------------------------------------
    def recover(self, shape: Shape, host: str, alive: Alive) -> list[tuple[str, str, int]]:
        """Put running rows of dead or lapsed owners back to pending (see ``flow.recover``)."""
        with self.transaction() as tx:
            return flow.recover(tx, shape, host, alive)

    def is_disconnect(self, exc: BaseException) -> bool:
        """True if ``exc`` means the connection was lost and the call may be retried."""
        return False

    def release_orphans(self, shape: Shape, owner: str, keep: set[tuple[str, str, int]]) -> int:
        """Give back claims of ``owner`` it does not know about (a commit whose reply
        was lost with the connection); returns how many."""
        with self.transaction() as tx:
            orphans = [(i, s, a) for i, s, a, o in tx.running_rows(shape.name)
                       if o == owner and (i, s, a) not in keep]
            if orphans:
                flow.release(tx, shape, owner, orphans)
        return len(orphans)

    def release(self, shape: Shape, owner: str, keys: Sequence[tuple[str, str, int]],
                unstarted: Sequence[tuple[str, str, int]] = ()) -> None:
        """Give claims back as pending (shutdown); a claim no longer ours is left alone.

        Claims in ``unstarted`` never ran: they go back with their attempt
        number, so the next run does not count an attempt that never happened.
        """
        with self.transaction() as tx:
            flow.release(tx, shape, owner, keys, unstarted)

    # -- rollbacks -----------------------------------------------------------
    def claim_rollbacks(self, shape: Shape, owner: str, limit: int,
                        only: Sequence[str] | None = None) -> list[tuple[str, list[str]]]:
        """Claim items waiting for rollback (only those in ``only``, if given):
        (item_id, stages to roll back, in order)."""
        with self.transaction() as tx:
            return rollback.claim_rollbacks(tx, shape, owner, limit, only)

    def record_rollback(self, shape: Shape, owner: str, item_id: str, stage: str, *,
                        error: str | None, traceback: str | None) -> bool:
        """Record one rollback's outcome; False if the item is no longer this runner's."""
        with self.transaction() as tx:
            return rollback.record_rollback(tx, shape, owner, item_id, stage, error=error,
                                            traceback=traceback)

    def finish_rollback(self, shape: Shape, owner: str, item_id: str) -> str | None:
        """Settle a rolled-back item; returns its state (None if not this runner's)."""
        with self.transaction() as tx:
            return rollback.finish_rollback(tx, shape, owner, item_id)

    # -- pause, resume, cancel ------------------------------------------------
    def is_transient(self, exc: BaseException) -> bool:
        """True if the database aborted a transaction over a conflict with another
        (a deadlock): running it again is safe, it changed nothing."""
        return False

    def _run(self, op: Callable[[Tx], _T]) -> _T:
        """``op`` in one transaction; again (up to 5 times, after a short random wait)
        when the database aborted it for a deadlock with a concurrent commit."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(self.is_transient),
            stop=tenacity.stop_after_attempt(5), wait=tenacity.wait_random(0.01, 0.2),
            reraise=True)
        for attempt in retrying:
            with attempt, self.transaction() as tx:
                return op(tx)
        raise AssertionError("unreachable: tenacity reraises the last error")
    def pause(self, shape: Shape, stage: str | None, actor: str, reason: str | None = None
              ) -> bool:
        """Pause claims of ``stage`` (None: the whole pipeline) for every runner;
        False if it was paused already."""
        return self._run(lambda tx: control.pause(tx, shape, stage, actor, reason))

    def resume(self, shape: Shape, stage: str | None, actor: str) -> bool:
        """Lift the pause of ``stage`` (None: every pause); False if none was there."""
        return self._run(lambda tx: control.resume(tx, shape, stage, actor))

    def cancel(self, shape: Shape, item_ids: Sequence[str], reason: str, actor: str
               ) -> list[tuple[str, str]]:
        """Cancel items still in progress, all or none (see ``control.cancel``)."""
        def op(tx: Tx) -> list[tuple[str, str]]:
            settled = control.cancel(tx, shape, item_ids, reason, actor)
            if getattr(shape, "children", None):
                nested.cancel_children(tx, shape, [i for i, _ in settled], reason, actor)
            return settled

        return self._run(op)

    def wait_for_events(self, shape: Shape, timeout: float) -> None:
        """Sleep until a commit may have added events, at most ``timeout`` seconds.

        This default polls (it just sleeps, at most a fifth of a second); the
        PostgreSQL store is woken by its commits' notifications instead.
        """
        import time

        time.sleep(min(timeout, 0.2))

    # -- human operations ----------------------------------------------------
    def retry(self, shape: Shape, item_id: str | None, stage: str | None,
              actor: str) -> list[tuple[str, str]]:
        """Failed (and rejected) stages back to pending and ready; returns those moved.
        Refused while one of the items rolls back."""
        def op(tx: Tx) -> list[tuple[str, str]]:
            moved = human.retry(tx, shape, item_id, stage, actor)
            if moved and getattr(shape, "children", None):
                nested.retry_children(tx, shape, moved, actor)
            return moved

        return self._run(op)

    def decide(self, shape: Shape, item_id: str, stage: str, *, approve: bool,
               output: str | None, review: dict[str, Any], actor: str,
               details: dict[str, Any], expect: int | None = None) -> CommitResult:
        """Approve or reject one stage awaiting review (at review version ``expect``)."""
        return self._run(lambda tx: human.decide(
            tx, shape, item_id, stage, approve=approve, output=output, review=review, actor=actor,
            details=details, expect=expect))

    def decide_many(self, shape: Shape, keys: Sequence[tuple[str, str, int | None]], *,
                    approve: bool, review: dict[str, Any], actor: str,
                    details: dict[str, Any]) -> tuple[CommitResult, list[tuple[str, str]]]:
        """Approve or reject many (item, stage, review version) in one transaction; those
        no longer awaiting review at that version are skipped (and returned)."""
        return self._run(lambda tx: human.decide_many(
            tx, shape, keys, approve=approve, review=review, actor=actor, details=details))

    def retry_rows(self, shape: Shape, rows: Sequence[tuple[str, str]],
                   actor: str) -> list[tuple[str, str]]:
        """Failed (or rejected) (item, stage) rows back to pending in one transaction;
        returns those moved (rows in another state meanwhile are left as they are)."""
        return self._run(lambda tx: human.retry_rows(tx, shape, rows, actor))

    def request_changes(self, shape: Shape, item_id: str, stage: str, *, feedback: Any,
                        actor: str, reviewer: str | None, expect: int | None = None) -> None:
        """Send a stage awaiting review back to pending with the reviewer's feedback."""
        self._run(lambda tx: human.request_changes(
            tx, shape, item_id, stage, feedback=feedback, actor=actor, reviewer=reviewer,
            expect=expect))

    def rerun(self, shape: Shape, item_id: str, stage: str, actor: str) -> list[str]:
        """Send ``stage`` and everything downstream back to pending; returns those reset."""
        return self._run(lambda tx: human.rerun(tx, shape, item_id, stage, actor))

    def overdue_reviews(self, shape: Shape, stage: str, timeout: float) -> list[str]:
        """Items whose ``stage`` has awaited review for ``timeout`` seconds or more."""
        with self.transaction() as tx:
            return human.overdue_reviews(tx, shape, stage, timeout)

    # -- nested pipelines (docs/nested.md) -------------------------------------
    def settle_waiting(self, shape: Shape) -> int:
        """Settle waiting stages whose children have all settled; returns how many."""
        with self.transaction() as tx:
            return nested.settle_waiting(tx, shape)

    def children(self, shape: Shape, item_id: str) -> list[tuple[str, str, str, str]]:
        """(stage, child pipeline, child id, child item state) of one item's children."""
        with self.transaction() as tx:
            return nested.tree_rows(tx, shape, item_id)

    def parents(self, pipeline: str, item_ids: Sequence[str]) -> list[tuple[str, str, str, str]]:
        """(child id, parent pipeline, parent id, stage) of these items of ``pipeline``."""
        with self.transaction() as tx:
            return tx.parents_of(pipeline, item_ids)

    # -- definition changes (docs/changes.md) ----------------------------------
    def reset_stale(self, shape: Shape, resets: Sequence[tuple[str, str, dict[str, Any]]],
                    actor: str) -> list[tuple[str, str]]:
        """Rerun (item, stage) with everything downstream, each with the reason given;
        items with a stage running are left alone. Returns the (item, stage) reset."""
        with self.transaction() as tx:
            return changes.reset_stale(tx, shape, resets, actor)

    def migrate_items(self, shape: Shape, from_version: str | None, to_version: str,
                      fn: Callable[[str], str], limit: int, actor: str) -> int:
        """Migrate up to ``limit`` items recorded at ``from_version`` in one transaction
        (``fn``: data JSON in, data JSON out); returns how many."""
        with self.transaction() as tx:
            done = changes.migrate_items(tx, shape, from_version, to_version, fn, limit, actor)
        self.item_cache.forget(shape.name)  # items changed: forget their JSON
        return done
    def escalate_review(self, shape: Shape, item_id: str, stage: str,
                        assignees: Sequence[str], actor: str) -> bool:
        """Reassign a stage awaiting review to ``assignees``, once (False if it already was)."""
        with self.transaction() as tx:
            return human.escalate(tx, shape, item_id, stage, assignees, actor)

    def record_notification(self, shape: Shape, item_id: str, stage: str, version: int,
                            details: dict[str, Any]) -> None:
        """Record one notification of a review request (a ``notified`` history row)."""
        with self.transaction() as tx:
            human.record_notification(tx, shape, item_id, stage, version, details)


__all__ = [
    "FAILED", "PENDING", "RUNNING", "SKIPPED", "Alive", "BaseStore", "Claim", "CommitResult",
    "FanOutPlan", "FanOutStart", "HistoryRow", "ItemNotFoundError", "Outlook", "Shape",
    "StageRecord", "StageState", "StateStore", "SubRecord", "SubResult", "Transition", "Tx",
]
