"""The ``StateStore`` protocol, the records it exchanges, and the shared
transition algorithm that the memory and SQL stores both run.

A store keeps three kinds of rows per pipeline: items (id + JSON data),
stage runs (one per item and stage: state, ready flag, attempt, owner, output,
error, review) and an append-only history. The runner talks to it in *group
commits*: one transaction applies a batch of finished stages (each guarded on
its owner and attempt), marks the dependents that became ready, records which
items finished, and claims the next batch of ready work.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import attrs

from ..errors import ItemNotFoundError
from ..states import DONE_STATES, FINISHED_ITEM_STATES, StageState
from .fanout import FanOutOps, FanOutPlan, FanOutStart, SubRecord, SubResult
from .human import HumanOps
from .rollback import ROLLING_BACK, RollbackOps, wants_rollback
from .logic import deps_done, item_state

PENDING = StageState.PENDING.value
RUNNING = StageState.RUNNING.value
SKIPPED = StageState.SKIPPED.value
FAILED = StageState.FAILED.value


class Shape(Protocol):
    """What a store needs to know of a pipeline (a ``Pipeline`` is one)."""

    name: str
    order: tuple[str, ...]
    deps: Mapping[str, tuple[str, ...]]
    dependents: Mapping[str, tuple[str, ...]]
    descendants: Mapping[str, frozenset[str]]
    rollback_stages: frozenset[str]
    on_failure: str


@attrs.frozen
class Transition:
    """The result of one claimed (item, stage) run, to be committed.

    ``state`` is completed, failed, skipped or awaiting_review. ``output`` and
    ``review`` are JSON texts. The store applies it only if the row is still
    ``running`` under ``owner`` at ``attempt``; otherwise it is refused.
    """

    item_id: str
    stage: str
    attempt: int
    state: str
    output: str | None = None
    error: str | None = None
    traceback: str | None = None
    review: str | None = None
    propagate: bool = False
    details: str | None = None
    delay: float = 0.0
    logged_as: str | None = None  # history state when it differs (a retry: "failed")
    verdict: str | None = None    # a gate judged this output: accepted / rejected / uncertain
    escalated: bool = False       # a gated stage went to human review after its attempts


@attrs.frozen
class Claim:
    """A claimed (item, stage) with what is needed to run it."""

    item_id: str
    stage: str
    attempt: int
    item: str
    outputs: Mapping[str, str | None]


class HistoryRow(NamedTuple):
    """One transition to append to the history (a tuple: many are made per commit)."""

    item_id: str
    stage: str | None
    state: str
    attempt: int
    actor: str
    error: str | None = None
    traceback: str | None = None
    details: str | None = None
    subtask: str | None = None


@attrs.frozen
class CommitResult:
    """What one group commit did."""

    accepted: list[Transition]
    refused: list[Transition]
    skipped: list[tuple[str, str]]
    finished: list[tuple[str, str]]
    claims: list[Claim]
    fanouts: list[FanOutPlan] = attrs.field(factory=list)
    sub_accepted: list[SubResult] = attrs.field(factory=list)
    sub_refused: list[SubResult] = attrs.field(factory=list)
    restarted: list[tuple[str, str, str, int]] = attrs.field(factory=list)


@attrs.frozen
class Outlook:
    """Whether a runner should keep waiting: work ready (perhaps not yet due), work others hold."""

    ready: int
    running: int


@attrs.frozen
class StageRecord:
    """A stored stage run, as read back for status."""

    item_id: str
    stage: str
    state: str
    ready: bool
    attempt: int
    output: str | None
    error: str | None
    review: str | None
    updated_at: float


@runtime_checkable
class StateStore(Protocol):
    """What a runner needs from a store. The memory and SQL stores implement
    it through :class:`BaseStore`; ``treadle.testing`` has the conformance suite."""

    url: str

    def prepare(self, shape: Shape) -> None: ...
    def submit(self, shape: Shape, items: Sequence[tuple[str, str]], actor: str) -> list[str]: ...
    def register_runner(self, owner: str, host: str, pid: int, lease: float) -> None: ...
    def heartbeat(self, owner: str, lease: float) -> None: ...
    def unregister_runner(self, owner: str) -> None: ...
    def recover(self, shape: Shape, host: str, alive: Any) -> list[tuple[str, str, int]]: ...
    def release(self, shape: Shape, owner: str, keys: Sequence[tuple[str, str, int]],
                unstarted: Sequence[tuple[str, str, int]] = ()) -> None: ...
    def release_orphans(self, shape: Shape, owner: str, keep: set[tuple[str, str, int]]) -> int: ...
    def is_disconnect(self, exc: BaseException) -> bool: ...
    def commit(self, shape: Shape, owner: str, transitions: Sequence[Transition],
               claim_limit: int, only: Sequence[str] | None = None, *,
               fanouts: Sequence[FanOutStart] = (),
               subtasks: Sequence[SubResult] = (),
               restarts: Sequence[tuple[str, str, str]] = ()) -> CommitResult: ...
    def subtask_records(self, shape: Shape, item_id: str) -> list[SubRecord]: ...
    def outlook(self, shape: Shape, only: Sequence[str] | None = None) -> Outlook: ...
    def item_state_counts(self, shape: Shape) -> dict[str, int]: ...
    def settled_item_counts(self, shape: Shape) -> dict[str, int]: ...
    def stage_records(self, shape: Shape, item_id: str) -> list[StageRecord]: ...
    def item_ids(self, shape: Shape, stage: str | None, state: str | None,
                 limit: int | None) -> list[str]: ...
    def counts(self, shape: Shape) -> dict[str, dict[str, int]]: ...
    def history(self, shape: Shape, item_id: str) -> list[dict[str, Any]]: ...
    def item_data(self, shape: Shape, item_id: str) -> tuple[str, float]: ...
    def retry(self, shape: Shape, item_id: str | None, stage: str | None,
              actor: str) -> list[tuple[str, str]]: ...
    def decide(self, shape: Shape, item_id: str, stage: str, *, approve: bool,
               output: str | None, review: dict[str, Any], actor: str,
               details: dict[str, Any]) -> CommitResult: ...
    def rerun(self, shape: Shape, item_id: str, stage: str, actor: str) -> list[str]: ...
    def request_changes(self, shape: Shape, item_id: str, stage: str, *, feedback: Any,
                        actor: str, reviewer: str | None) -> None: ...
    def overdue_reviews(self, shape: Shape, stage: str, timeout: float) -> list[str]: ...
    def close(self) -> None: ...


class Tx(abc.ABC):
    """Primitive row operations inside one write transaction."""

    now: float

    @abc.abstractmethod
    def insert_items(self, pipeline: str, rows: Sequence[tuple[str, str]]) -> list[str]:
        """Insert items not yet known; return the ids actually inserted."""

    @abc.abstractmethod
    def insert_stage_rows(self, pipeline: str, rows: Sequence[tuple[str, str, bool]]) -> None:
        """Insert (item_id, stage, ready) rows as pending where missing."""

    @abc.abstractmethod
    def stage_states(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, dict[str, tuple[str, bool]]]:
        """item_id -> stage -> (state, ready)."""

    def lock_stage_rows(self, pipeline: str, item_id: str) -> None:
        """Lock one item's stage rows until commit (claims skip them meanwhile).

        Needed only where writers run concurrently (PostgreSQL).
        """

    def lock_items(self, pipeline: str, item_ids: Iterable[str]) -> None:
        """Serialise, until commit, other writers that read these items' states.

        Stores whose write transactions already exclude each other (SQLite,
        memory) need nothing; PostgreSQL locks the item rows.
        """

    @abc.abstractmethod
    def apply(self, pipeline: str, owner: str, transitions: Sequence[Transition]) -> list[bool]:
        """Guarded update of running rows; one accepted flag per transition."""

    @abc.abstractmethod
    def rename_stage(self, pipeline: str, old: str, new: str) -> list[str]:
        """Rename ``old`` stage rows (and their subtasks) to ``new``, replacing
        ``new`` rows that never started; returns the items moved."""

    @abc.abstractmethod
    def unclaim(self, pipeline: str, owner: str, keys: Sequence[tuple[str, str, int]]) -> list[bool]:
        """Undo claims that never ran: back to pending and ready, attempt - 1 (guarded)."""

    @abc.abstractmethod
    def set_ready(self, pipeline: str, rows: Sequence[tuple[str, str]]) -> None:
        """Mark pending (item_id, stage) rows ready."""

    @abc.abstractmethod
    def set_state(self, pipeline: str, rows: Sequence[tuple[str, str]], state: str,
                  from_states: Sequence[str], *, ready: bool, error: str | None = None,
                  clear_output: bool = False) -> list[tuple[str, str]]:
        """Move rows currently in ``from_states`` to ``state``; return those moved."""

    @abc.abstractmethod
    def set_item_states(self, pipeline: str, rows: Sequence[tuple[str, str]]) -> None:
        """Record item-level states (item_id, state)."""

    @abc.abstractmethod
    def append_history(self, pipeline: str, rows: Sequence[HistoryRow]) -> None:
        """Append history rows stamped with ``now``."""

    @abc.abstractmethod
    def claim(self, pipeline: str, owner: str, stages: Sequence[str], limit: int,
              only: Sequence[str] | None = None) -> list[tuple[str, str, int]]:
        """Claim up to ``limit`` ready, due, pending rows (oldest first), optionally
        only of the items in ``only``: returns (item_id, stage, attempt)."""

    @abc.abstractmethod
    def items_json(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, str]:
        """Item JSON by id."""

    @abc.abstractmethod
    def completed_outputs(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, dict[str, str | None]]:
        """Completed stage outputs (JSON) by item and stage."""

    @abc.abstractmethod
    def rows(self, pipeline: str, item_id: str) -> dict[str, StageRecord]:
        """Every stage row of one item, by stage name."""

    @abc.abstractmethod
    def cas(self, pipeline: str, item_id: str, stage: str, expect: str, state: str, *,
            output: str | None, review: str | None) -> bool:
        """Move one row from ``expect`` to ``state`` with that output and review JSON
        (ready cleared, owner cleared); False if it was not in ``expect``."""

    @abc.abstractmethod
    def overdue(self, pipeline: str, stage: str, before: float) -> list[str]:
        """Items whose ``stage`` has awaited review since before ``before``, oldest first."""

    @abc.abstractmethod
    def items_in_state(self, pipeline: str, state: str, limit: int | None,
                       prefix: bool = False) -> list[str]:
        """Items whose recorded item state is ``state`` (or starts with it), oldest first."""

    @abc.abstractmethod
    def item_state_of(self, pipeline: str, item_id: str) -> str | None:
        """The recorded item state of one item."""

    @abc.abstractmethod
    def cas_item_state(self, pipeline: str, item_id: str, expect: str, state: str) -> bool:
        """Set an item's recorded state if it is ``expect``."""

    @abc.abstractmethod
    def set_error(self, pipeline: str, item_id: str, stage: str, expect: str, error: str) -> bool:
        """Set a stage row's error if its state is ``expect``."""

    @abc.abstractmethod
    def owner_of(self, pipeline: str, item_id: str, stage: str) -> str | None:
        """The owner of a stage row's claim (None when unclaimed)."""

    @abc.abstractmethod
    def subtask_rows(self, pipeline: str, item_id: str, stage: str) -> dict[str, SubRecord]:
        """The subtask rows of one (item, stage), by name, in creation order."""

    @abc.abstractmethod
    def upsert_subtasks(self, pipeline: str, item_id: str, stage: str,
                        rows: Sequence[tuple[str, str, int, str | None]]) -> None:
        """Insert or overwrite (name, state, attempt, owner) subtask rows."""

    @abc.abstractmethod
    def delete_subtasks(self, pipeline: str, item_id: str, stage: str, names: Sequence[str]) -> None:
        """Remove subtask rows (the history keeps their past)."""

    @abc.abstractmethod
    def apply_subtasks(self, pipeline: str, owner: str, results: Sequence[SubResult]) -> list[bool]:
        """Guarded update of running subtask rows; one accepted flag per result."""

    @abc.abstractmethod
    def reset_subtasks(self, pipeline: str, keys: Sequence[tuple[str, str]]) -> None:
        """Running subtasks of these (item, stage) back to pending, unowned."""

    @abc.abstractmethod
    def runners(self) -> list[tuple[str, str, int, float]]:
        """(owner, host, pid, expires_at) of registered runners."""

    @abc.abstractmethod
    def running_rows(self, pipeline: str) -> list[tuple[str, str, int, str | None]]:
        """(item_id, stage, attempt, owner) of running rows."""


class BaseStore(HumanOps, FanOutOps, RollbackOps, abc.ABC):
    """The transition algorithm, written once over :class:`Tx` primitives."""

    url: str = ""
    ITEM_CACHE = 50_000  # item JSON kept for the claims to come (items are immutable)

    @property
    def _item_cache(self) -> dict[str, dict[str, str]]:
        cache = self.__dict__.get("_items_json_cache")
        if cache is None:
            cache = self.__dict__["_items_json_cache"] = {}
        return cache

    @abc.abstractmethod
    def transaction(self) -> Any:
        """Context manager yielding a :class:`Tx` inside one write transaction."""

    # -- submission and pipeline shape ---------------------------------------
    def prepare(self, shape: Shape) -> None:
        """Make sure every item has a row for every stage and readiness is right.

        Run once per runner start: it is what lets a pipeline gain stages
        between runs (a new stage runs for items already past its deps).
        """
        with self.transaction() as tx:
            renamed = self._rename(tx, shape)
            if self._reconcile(tx, shape) or renamed:
                self._resettle(tx, shape)

    def _rename(self, tx: Tx, shape: Shape) -> bool:
        """Carry the records of renamed stages over to their new names (declared
        in ``Pipeline(renames=...)``); returns True if any row moved."""
        moved = False
        for old, new in getattr(shape, "renames", {}).items():
            items = tx.rename_stage(shape.name, old, new)
            tx.append_history(shape.name, [
                HistoryRow(i, new, "renamed", 0, "definition",
                           details=json.dumps({"renamed_from": old})) for i in items])
            moved = moved or bool(items)
        return moved

    @abc.abstractmethod
    def _reconcile(self, tx: Tx, shape: Shape) -> bool:
        """Insert missing stage rows for known items and recompute ``ready``;
        False when the shape is the one already reconciled (nothing done)."""

    def _resettle(self, tx: Tx, shape: Shape) -> None:
        """Recompute every item's recorded state after the pipeline changed shape."""
        ids = [i for i in tx.items_in_state(shape.name, "", None, prefix=True)
               if not (tx.item_state_of(shape.name, i) or "").startswith(ROLLING_BACK)]
        states = tx.stage_states(shape.name, ids)
        tx.set_item_states(shape.name, [(i, item_state(shape.order, states.get(i, {})).value)
                                        for i in ids])

    def submit(self, shape: Shape, items: Sequence[tuple[str, str]], actor: str) -> list[str]:
        """Store new items (id, JSON) with pending stage rows; known ids are ignored."""
        if not items:
            return []
        with self.transaction() as tx:
            new = tx.insert_items(shape.name, items)
            roots = {s for s in shape.order if not shape.deps[s]}
            # generators: a large submission is streamed into the statements
            tx.insert_stage_rows(shape.name, ((i, s, s in roots) for i in new for s in shape.order))
            tx.append_history(shape.name, (HistoryRow(i, None, "submitted", 0, actor) for i in new))
        return new

    # -- the hot path -------------------------------------------------------
    def commit(self, shape: Shape, owner: str, transitions: Sequence[Transition],
               claim_limit: int, only: Sequence[str] | None = None, *,
               fanouts: Sequence[FanOutStart] = (),
               subtasks: Sequence[SubResult] = (),
               restarts: Sequence[tuple[str, str, str]] = ()) -> CommitResult:
        """Apply finished stages, mark dependents ready, claim the next work: one transaction.

        ``only`` restricts claims to those item ids. ``fanouts`` start the
        subtasks of stages that returned FanOut; ``subtasks`` are subtask
        results; ``restarts`` (item, stage, subtask) claim retried subtasks again.
        """
        with self.transaction() as tx:
            plans = self._start_fanouts(tx, shape, owner, fanouts) if fanouts else []
            sub_ok, sub_refused = self._apply_subtasks(tx, shape, owner, subtasks)
            restarted = self._restart_subtasks(tx, shape, owner, restarts) if restarts else []
            accepted, refused = self._apply(tx, shape, owner, transitions)
            skipped, check = self._advance(tx, shape, owner, accepted)
            finished = self._finish(tx, shape, check)
            claims = self._claim(tx, shape, owner, claim_limit, only) if claim_limit > 0 else []
        return CommitResult(accepted, refused, skipped, finished, claims, plans, sub_ok, sub_refused,
                            restarted)

    def _apply(self, tx: Tx, shape: Shape, owner: str, transitions: Sequence[Transition]
               ) -> tuple[list[Transition], list[Transition]]:
        if not transitions:
            return [], []
        flags = tx.apply(shape.name, owner, transitions)
        accepted = [t for t, ok in zip(transitions, flags) if ok]
        refused = [t for t, ok in zip(transitions, flags) if not ok]
        tx.append_history(shape.name, [
            HistoryRow(t.item_id, t.stage, t.logged_as or t.state, t.attempt, owner, t.error,
                       t.traceback, t.details)
            for t in accepted
        ])
        return accepted, refused

    def _advance(self, tx: Tx, shape: Shape, owner: str, accepted: Sequence[Transition]
                 ) -> tuple[list[tuple[str, str]], set[str]]:
        """Mark newly ready dependents; skip downstream of propagating skips.

        Returns the skipped (item, stage) rows and the items that may have
        finished (those where nothing became ready).
        """
        ready: list[tuple[str, str]] = []
        need_states: set[str] = set()
        check: set[str] = set()
        to_skip: list[tuple[str, str]] = []
        for t in accepted:
            if t.state == SKIPPED and t.propagate:
                to_skip.extend((t.item_id, d) for d in shape.descendants[t.stage])
                check.add(t.item_id)
            elif t.state in DONE_STATES:
                dependents = shape.dependents[t.stage]
                if not dependents:
                    check.add(t.item_id)
                for d in dependents:
                    if len(shape.deps[d]) == 1:
                        ready.append((t.item_id, d))
                    else:
                        need_states.add(t.item_id)
            else:
                check.add(t.item_id)
        if need_states or check:
            tx.lock_items(shape.name, need_states | check)
        skipped: list[tuple[str, str]] = []
        if to_skip:
            skipped = tx.set_state(shape.name, to_skip, SKIPPED, (PENDING,), ready=False,
                                   error=None)
            tx.append_history(shape.name, [
                HistoryRow(i, s, SKIPPED, 0, owner, details='{"reason":"upstream skipped"}')
                for i, s in skipped
            ])
        if need_states:
            states = tx.stage_states(shape.name, need_states)
            for t in accepted:
                if t.item_id not in need_states or t.state not in DONE_STATES:
                    continue
                st = states.get(t.item_id, {})
                for d in shape.dependents[t.stage]:
                    if len(shape.deps[d]) > 1:
                        row = st.get(d)
                        if row and row[0] == PENDING and deps_done(shape.deps[d], st):
                            ready.append((t.item_id, d))
                        else:
                            check.add(t.item_id)
        if ready:
            tx.set_ready(shape.name, ready)
        return skipped, check

    def _finish(self, tx: Tx, shape: Shape, check: set[str]) -> list[tuple[str, str]]:
        if not check:
            return []
        states = tx.stage_states(shape.name, check)
        settled, finished = [], []
        for item_id in sorted(check):
            state = item_state(shape.order, states.get(item_id, {})).value
            if wants_rollback(shape, state):
                settled.append((item_id, ROLLING_BACK))  # finished once rolled back
                continue
            settled.append((item_id, state))
            if state in FINISHED_ITEM_STATES:
                finished.append((item_id, state))
        tx.set_item_states(shape.name, settled)
        return finished

    def item_state_counts(self, shape: Shape) -> dict[str, int]:
        """Number of items in each item-level state (one pass over the stage rows)."""
        per_item: dict[str, dict[str, tuple[str, bool]]] = {}
        for item_id, stage, state, ready in self._all_stage_rows(shape):
            per_item.setdefault(item_id, {})[stage] = (state, ready)
        counts: dict[str, int] = {}
        for states in per_item.values():
            key = item_state(shape.order, states).value
            counts[key] = counts.get(key, 0) + 1
        return counts

    @abc.abstractmethod
    def _all_stage_rows(self, shape: Shape) -> Iterable[tuple[str, str, str, bool]]:
        """(item_id, stage, state, ready) of every stage row of the pipeline."""

    def _claim(self, tx: Tx, shape: Shape, owner: str, limit: int,
               only: Sequence[str] | None) -> list[Claim]:
        rows = tx.claim(shape.name, owner, shape.order, limit, only)
        if not rows:
            return []
        tx.append_history(shape.name, [HistoryRow(i, s, RUNNING, a, owner) for i, s, a in rows])
        # Items never change once stored: keep their JSON for the next stages.
        cache = self._item_cache.setdefault(shape.name, {})
        if len(cache) > self.ITEM_CACHE:
            cache.clear()  # before looking: every item of this batch is fetched below
        missing = {i for i, _, _ in rows if i not in cache}
        if missing:
            cache.update(tx.items_json(shape.name, missing))
        need = {i for i, s, _ in rows if shape.deps[s]}
        outputs = tx.completed_outputs(shape.name, need) if need else {}
        return [Claim(i, s, a, cache[i], outputs.get(i, {})) for i, s, a in rows]

    # -- leases ------------------------------------------------------------
    def recover(self, shape: Shape, host: str, alive: Any) -> list[tuple[str, str, int]]:
        """Put running rows of dead or lapsed owners back to pending.

        An owner is dead when its lease expired, it is not registered, or it
        ran on ``host`` and ``alive(pid)`` says its process is gone.
        """
        with self.transaction() as tx:
            runners = {o: (h, p, exp) for o, h, p, exp in tx.runners()}

            def dead(owner: str | None) -> bool:
                info = runners.get(owner or "")
                return info is None or info[2] < tx.now or (info[0] == host and not alive(info[1]))

            claimed = tx.items_in_state(shape.name, f"{ROLLING_BACK}:", None, prefix=True)
            owners = {(tx.item_state_of(shape.name, i) or "")[len(ROLLING_BACK) + 1:] for i in claimed}
            self._recover_rollbacks(tx, shape, sorted(o for o in owners if dead(o)))
            by_owner: dict[str, list[Transition]] = {}
            for item_id, stage, attempt, owner in tx.running_rows(shape.name):
                if dead(owner):
                    by_owner.setdefault(owner or "", []).append(Transition(
                        item_id, stage, attempt, PENDING,
                        error="claim recovered: its runner died or its lease lapsed"))
            stale: list[tuple[str, str, int]] = []
            for owner, back in by_owner.items():
                # guarded on owner and attempt: a claim re-taken meanwhile is left alone
                flags = tx.apply(shape.name, owner, back)
                stale += [(t.item_id, t.stage, t.attempt) for t, ok in zip(back, flags) if ok]
            if stale:
                tx.append_history(shape.name, [
                    HistoryRow(i, s, PENDING, a, "recovery",
                               error="claim recovered: its runner died or its lease lapsed")
                    for i, s, a in stale
                ])
                tx.reset_subtasks(shape.name, [(i, s) for i, s, _ in stale])
                tx.set_item_states(shape.name, [(i, PENDING) for i in {r[0] for r in stale}])
        return stale

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
            self.release(shape, owner, orphans)
        return len(orphans)

    def release(self, shape: Shape, owner: str, keys: Sequence[tuple[str, str, int]],
                unstarted: Sequence[tuple[str, str, int]] = ()) -> None:
        """Give claims back as pending (shutdown); a claim no longer ours is left alone.

        Claims in ``unstarted`` never ran: they go back with their attempt
        number, so the next run does not count an attempt that never happened.
        """
        back = [Transition(i, s, a, PENDING, error="released at shutdown before it finished")
                for i, s, a in keys]
        with self.transaction() as tx:
            accepted, _ = self._apply(tx, shape, owner, back)
            tx.reset_subtasks(shape.name, [(t.item_id, t.stage) for t in accepted])
            flags = tx.unclaim(shape.name, owner, unstarted)
            tx.append_history(shape.name, [
                HistoryRow(i, s, PENDING, a - 1, owner,
                           details='{"reason":"released before it started"}')
                for (i, s, a), ok in zip(unstarted, flags) if ok])

    # -- human operations ----------------------------------------------------
    def retry(self, shape: Shape, item_id: str | None, stage: str | None,
              actor: str) -> list[tuple[str, str]]:
        """Failed (and rejected) stages back to pending and ready; returns those moved."""
        with self.transaction() as tx:
            rows = self._find(tx, shape, item_id, stage, (FAILED, StageState.REJECTED.value))
            if item_id is not None and not rows:
                self._require_item(tx, shape, item_id)
            # Ready only if its dependencies are done (a stage may have gained some).
            states = tx.stage_states(shape.name, {i for i, _ in rows})
            ready = [(i, s) for i, s in rows if deps_done(shape.deps[s], states.get(i, {}))]
            waiting = [(i, s) for i, s in rows if (i, s) not in set(ready)]
            moved = tx.set_state(shape.name, ready, PENDING,
                                 (FAILED, StageState.REJECTED.value), ready=True, error=None)
            moved += tx.set_state(shape.name, waiting, PENDING,
                                  (FAILED, StageState.REJECTED.value), ready=False, error=None)
            tx.append_history(shape.name, [HistoryRow(i, s, PENDING, 0, actor,
                                                      details='{"reason":"retry"}')
                                           for i, s in moved])
            tx.set_item_states(shape.name, [(i, PENDING) for i in {i for i, _ in moved}])
        return moved

    @abc.abstractmethod
    def _find(self, tx: Tx, shape: Shape, item_id: str | None, stage: str | None,
              states: Sequence[str]) -> list[tuple[str, str]]:
        """(item_id, stage) rows of this pipeline in ``states``, optionally filtered."""

    @abc.abstractmethod
    def _require_item(self, tx: Tx, shape: Shape, item_id: str) -> None:
        """Raise ItemNotFoundError if the item is unknown."""


__all__ = [
    "BaseStore", "Claim", "CommitResult", "HistoryRow", "ItemNotFoundError", "Outlook",
    "Shape", "StageRecord", "StateStore", "Transition", "Tx",
]
