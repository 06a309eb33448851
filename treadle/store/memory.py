"""``MemoryStore``: the state store in a Python dict; for tests and throwaway runs.

It implements the same protocol and passes the same conformance suite as
the SQL store, but keeps nothing when the process ends. A transaction holds
the store's re-entrant lock and keeps an undo log: every primitive saves the
rows it is about to change (once per transaction), so a transaction that
raises half-way is rolled back and leaves the store exactly as it was.
Running rows and rolling-back items are indexed when a transaction ends, so
lease recovery reads those and nothing else.
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs

from ..errors import ItemNotFoundError
from ..states import DONE_STATES
from .base import BaseStore
from .records import (
    PENDING,
    ROLLING_BACK,
    RUNNING,
    HistoryRow,
    Outlook,
    Shape,
    StageRecord,
    SubRecord,
    SubResult,
    Transition,
)
from .tx import Tx

StageKey = tuple[str, str, str]  # (pipeline, item_id, stage)


@attrs.define
class _Row:
    id: int
    state: str
    ready: bool
    attempt: int = 0
    owner: str | None = None
    not_before: float = 0.0
    output: str | None = None
    error: str | None = None
    review: str | None = None
    updated_at: float = 0.0

    def copy(self) -> _Row:
        return _Row(self.id, self.state, self.ready, self.attempt, self.owner, self.not_before,
                    self.output, self.error, self.review, self.updated_at)

    def restore(self, snap: _RowSnap) -> _Row:
        """This row with the fields of a snapshot (see ``_snap``) put back."""
        (_, self.state, self.ready, self.attempt, self.owner, self.not_before, self.output,
         self.error, self.review, self.updated_at) = snap
        return self


#: A stage row and its fields before a transaction changed it (a tuple: cheap to make).
_RowSnap = tuple[_Row, str, bool, int, "str | None", float, "str | None", "str | None",
                 "str | None", float]


def _snap(row: _Row) -> _RowSnap:
    return (row, row.state, row.ready, row.attempt, row.owner, row.not_before, row.output,
            row.error, row.review, row.updated_at)


@attrs.define
class _Sub:
    id: int
    state: str
    attempt: int
    owner: str | None
    output: str | None = None
    error: str | None = None
    updated_at: float = 0.0

    def copy(self) -> _Sub:
        return _Sub(self.id, self.state, self.attempt, self.owner, self.output, self.error,
                    self.updated_at)


@attrs.define
class _Item:
    id: int
    data: str
    state: str
    submitted_at: float

    def copy(self) -> _Item:
        return _Item(self.id, self.data, self.state, self.submitted_at)


_ABSENT: Any = object()


class _Undo:
    """Before-images of what one transaction touched, to restore if it fails."""

    def __init__(self, history_len: int) -> None:
        self.history_len = history_len
        self.stages: dict[StageKey, _RowSnap | None] = {}
        self.items: dict[tuple[str, str], _Item | None] = {}
        self.subtasks: dict[StageKey, dict[str, _Sub] | None] = {}
        self.runners: dict[str, tuple[str, int, float] | None] = {}


class _MemoryTx(Tx):
    def __init__(self, store: MemoryStore, undo: _Undo) -> None:
        self.s = store
        self.undo = undo
        self.now = time.time()

    # -- the undo log: call before changing a row ------------------------------
    def _row(self, key: StageKey) -> _Row | None:
        """The stage row at ``key``, saved in the undo log: about to change."""
        row = self.s._stages.get(key)
        if key not in self.undo.stages:
            self.undo.stages[key] = _snap(row) if row is not None else None
        return row

    def _item(self, pipeline: str, item_id: str) -> _Item | None:
        item = self.s._items.get(pipeline, {}).get(item_id)
        if (pipeline, item_id) not in self.undo.items:
            self.undo.items[(pipeline, item_id)] = item.copy() if item is not None else None
        return item

    def _subs(self, key: StageKey) -> dict[str, _Sub]:
        subs = self.s._subtasks.get(key)
        if key not in self.undo.subtasks:
            self.undo.subtasks[key] = (None if subs is None else
                                       {n: sub.copy() for n, sub in subs.items()})
        if subs is None:
            subs = self.s._subtasks[key] = {}
        return subs

    # -- primitives ------------------------------------------------------------
    def insert_items(self, pipeline: str, rows: Iterable[tuple[str, str]]) -> list[str]:
        items = self.s._items.setdefault(pipeline, {})
        new = []
        for item_id, data in rows:
            if item_id not in items:
                self._item(pipeline, item_id)
                items[item_id] = _Item(next(self.s._ids), data, PENDING, self.now)
                new.append(item_id)
        return new

    def insert_stage_rows(self, pipeline: str, rows: Iterable[tuple[str, str, bool]]) -> None:
        stages = self.s._stages
        saved = self.undo.stages
        for item_id, stage, ready in rows:
            key = (pipeline, item_id, stage)
            if key not in stages:
                if key not in saved:
                    saved[key] = None  # new: removed again if the transaction fails
                row = _Row(next(self.s._ids), PENDING, ready, updated_at=self.now)
                stages[key] = row
                if ready:
                    self.s._push(pipeline, row, key)

    def stage_states(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, dict[str, tuple[str, bool]]]:
        out: dict[str, dict[str, tuple[str, bool]]] = {}
        by_item = self.s._by_item
        for item_id in item_ids:
            out[item_id] = {
                stage: (row.state, row.ready)
                for stage, row in by_item(pipeline, item_id)
            }
        return out

    def apply(self, pipeline: str, owner: str, transitions: Sequence[Transition]) -> list[bool]:
        flags = []
        stages, saved = self.s._stages, self.undo.stages
        running = self.s._running.setdefault(pipeline, set())
        for t in transitions:
            key = (pipeline, t.item_id, t.stage)
            row = stages.get(key)
            ok = (row is not None and row.state == RUNNING and row.owner == owner
                  and row.attempt == t.attempt)
            if ok:
                assert row is not None
                if key not in saved:
                    saved[key] = (row, row.state, row.ready, row.attempt, row.owner,
                                  row.not_before, row.output, row.error, row.review,
                                  row.updated_at)  # _snap(row), inlined: the hot path
                running.discard(key)
                row.state, row.owner, row.updated_at = t.state, None, self.now
                row.ready = t.state == PENDING
                row.not_before = self.now + t.delay
                row.error = t.error
                if row.ready:
                    self.s._push(pipeline, row, key)
                if t.output is not None or t.state in DONE_STATES:
                    row.output = t.output
                if t.review is not None:
                    row.review = t.review
            flags.append(ok)
        return flags

    def rename_stage(self, pipeline: str, old: str, new: str) -> list[str]:
        moved = []
        for (p, item_id, stage) in list(self.s._stages):
            if p != pipeline or stage != old:
                continue
            target = self.s._stages.get((p, item_id, new))
            if target is not None and (target.state != PENDING or target.attempt):
                continue  # the new stage has its own history: keep both
            self._row((p, item_id, new))
            row = self._row((p, item_id, old))
            assert row is not None
            del self.s._stages[(p, item_id, old)]
            self.s._stages[(p, item_id, new)] = row
            if row.state == RUNNING:
                running = self.s._running.setdefault(p, set())
                running.discard((p, item_id, old))
                running.add((p, item_id, new))
            if row.ready and row.state == PENDING:
                self.s._push(pipeline, row, (p, item_id, new))
            if (p, item_id, old) in self.s._subtasks:
                self._subs((p, item_id, new))
                subs = self._subs((p, item_id, old))
                del self.s._subtasks[(p, item_id, old)]
                self.s._subtasks[(p, item_id, new)] = subs
            moved.append(item_id)
        return moved

    def unclaim(self, pipeline: str, owner: str, keys: Sequence[tuple[str, str, int]]) -> list[bool]:
        flags = []
        for item_id, stage, attempt in keys:
            key = (pipeline, item_id, stage)
            row = self.s._stages.get(key)
            ok = (row is not None and row.state == RUNNING and row.owner == owner
                  and row.attempt == attempt)
            if ok:
                row = self._row(key)
                assert row is not None
                row.state, row.owner, row.ready, row.updated_at = PENDING, None, True, self.now
                row.attempt -= 1
                self.s._running.setdefault(pipeline, set()).discard(key)
                self.s._push(pipeline, row, key)
            flags.append(ok)
        return flags

    def set_ready(self, pipeline: str, rows: Sequence[tuple[str, str]]) -> None:
        stages, saved = self.s._stages, self.undo.stages
        heap = self.s._ready.setdefault(pipeline, [])
        for item_id, stage in rows:
            key = (pipeline, item_id, stage)
            row = stages.get(key)
            if row is not None and row.state == PENDING:
                if key not in saved:
                    saved[key] = _snap(row)
                row.ready = True
                heapq.heappush(heap, (row.id, key))

    def set_state(self, pipeline: str, rows: Sequence[tuple[str, str]], state: str,
                  from_states: Sequence[str], *, ready: bool, error: str | None = None,
                  clear_output: bool = False) -> list[tuple[str, str]]:
        moved = []
        for item_id, stage in rows:
            key = (pipeline, item_id, stage)
            row = self.s._stages.get(key)
            if row is None or row.state not in from_states:
                continue
            self._row(key)
            row.state, row.ready, row.owner, row.updated_at = state, ready, None, self.now
            row.error = error
            if clear_output:
                row.output = row.review = None
            if ready and state == PENDING:
                self.s._push(pipeline, row, key)
            moved.append((item_id, stage))
        return moved

    def set_item_states(self, pipeline: str, rows: Sequence[tuple[str, str]]) -> None:
        items = self.s._items.get(pipeline, {})
        rolling = self.s._rolling.setdefault(pipeline, {})
        for item_id, state in rows:
            if item_id in items:
                item = self._item(pipeline, item_id)
                assert item is not None
                item.state = state
                if state.startswith(ROLLING_BACK):
                    rolling[item_id] = state
                elif item_id in rolling:
                    del rolling[item_id]

    def append_history(self, pipeline: str, rows: Iterable[HistoryRow]) -> None:
        history, ids, now = self.s._history, self.s._ids, self.now
        for r in rows:
            history.append((next(ids), pipeline, now, r))

    def claim(self, pipeline: str, owner: str, stages: Sequence[str], limit: int,
              only: Sequence[str] | None = None) -> list[tuple[str, str, int]]:
        heap = self.s._ready.setdefault(pipeline, [])
        saved = self.undo.stages
        running = self.s._running.setdefault(pipeline, set())
        wanted = set(stages)
        items = set(only) if only is not None else None
        out: list[tuple[str, str, int]] = []
        later = []
        try:
            while heap and len(out) < limit:
                row_id, key = heapq.heappop(heap)
                row = self.s._stages.get(key)
                if row is None or row.id != row_id or row.state != PENDING or not row.ready:
                    continue
                if key[2] not in wanted or row.not_before > self.now or (
                        items is not None and key[1] not in items):
                    later.append((row_id, key))
                    continue
                if key not in saved:
                    saved[key] = (row, row.state, row.ready, row.attempt, row.owner,
                                  row.not_before, row.output, row.error, row.review,
                                  row.updated_at)  # _snap(row), inlined: the hot path
                row.state, row.owner, row.updated_at = RUNNING, owner, self.now
                row.attempt += 1
                running.add(key)
                out.append((key[1], key[2], row.attempt))
        finally:
            for entry in later:
                heapq.heappush(heap, entry)
        if len(running) > self.s._running_peak.get(pipeline, 0):
            self.s._running_peak[pipeline] = len(running)
        return out

    def items_json(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, str]:
        items = self.s._items[pipeline]
        return {i: items[i].data for i in item_ids}

    def completed_outputs(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, dict[str, str | None]]:
        return {
            item_id: {stage: row.output for stage, row in self.s._by_item(pipeline, item_id)
                      if row.state == "completed"}
            for item_id in item_ids
        }

    def rows(self, pipeline: str, item_id: str) -> dict[str, StageRecord]:
        if item_id not in self.s._items.get(pipeline, {}):
            return {}
        return {
            s: StageRecord(item_id, s, r.state, r.ready, r.attempt, r.output, r.error, r.review,
                           r.updated_at)
            for s, r in self.s._by_item(pipeline, item_id)
        }

    def cas(self, pipeline: str, item_id: str, stage: str, expect: str, state: str, *,
            output: str | None, review: str | None, attempt: int | None = None) -> bool:
        key = (pipeline, item_id, stage)
        row = self.s._stages.get(key)
        if row is None or row.state != expect or (attempt is not None and row.attempt != attempt):
            return False
        self._row(key)
        row.state, row.output, row.review = state, output, review
        row.ready, row.owner, row.updated_at = False, None, self.now
        return True

    def overdue(self, pipeline: str, stage: str, before: float) -> list[str]:
        rows = [
            (r.updated_at, r.id, k[1]) for k, r in self.s._stages.items()
            if k[0] == pipeline and k[2] == stage and r.state == "awaiting_review"
            and r.updated_at <= before
        ]
        return [i for _, _, i in sorted(rows)]

    def items_in_state(self, pipeline: str, state: str, limit: int | None,
                       prefix: bool = False) -> list[str]:
        items = self.s._items.get(pipeline, {})
        if state.startswith(ROLLING_BACK):  # few, and indexed
            ids = [i for i, st in sorted(self.s._rolling.get(pipeline, {}).items(),
                                         key=lambda kv: items[kv[0]].id)
                   if (st.startswith(state) if prefix else st == state)]
        else:
            ids = [i for i, it in sorted(items.items(), key=lambda kv: kv[1].id)
                   if (it.state.startswith(state) if prefix else it.state == state)]
        return ids[:limit] if limit is not None else ids

    def item_state_of(self, pipeline: str, item_id: str) -> str | None:
        item = self.s._items.get(pipeline, {}).get(item_id)
        return item.state if item is not None else None

    def cas_item_state(self, pipeline: str, item_id: str, expect: str, state: str) -> bool:
        item = self.s._items.get(pipeline, {}).get(item_id)
        if item is None or item.state != expect:
            return False
        self._item(pipeline, item_id)
        item.state = state
        rolling = self.s._rolling.setdefault(pipeline, {})
        if state.startswith(ROLLING_BACK):
            rolling[item_id] = state
        else:
            rolling.pop(item_id, None)
        return True

    def set_error(self, pipeline: str, item_id: str, stage: str, expect: str, error: str) -> bool:
        key = (pipeline, item_id, stage)
        row = self.s._stages.get(key)
        if row is None or row.state != expect:
            return False
        self._row(key)
        row.error, row.updated_at = error, self.now
        return True

    def owner_of(self, pipeline: str, item_id: str, stage: str) -> str | None:
        row = self.s._stages.get((pipeline, item_id, stage))
        return row.owner if row is not None else None

    def subtask_rows(self, pipeline: str, item_id: str, stage: str) -> dict[str, SubRecord]:
        subs = self.s._subtasks.get((pipeline, item_id, stage), {})
        return {n: SubRecord(stage, n, r.state, r.attempt, r.output, r.error)
                for n, r in sorted(subs.items(), key=lambda kv: kv[1].id)}

    def upsert_subtasks(self, pipeline: str, item_id: str, stage: str,
                        rows: Sequence[tuple[str, str, int, str | None]]) -> None:
        subs = self._subs((pipeline, item_id, stage))
        for name, state, attempt, owner in rows:
            old = subs.get(name)
            subs[name] = _Sub(old.id if old else next(self.s._ids), state, attempt, owner,
                              old.output if old else None, old.error if old else None, self.now)

    def delete_subtasks(self, pipeline: str, item_id: str, stage: str, names: Sequence[str]) -> None:
        if not names or (pipeline, item_id, stage) not in self.s._subtasks:
            return
        subs = self._subs((pipeline, item_id, stage))
        for name in names:
            subs.pop(name, None)

    def apply_subtasks(self, pipeline: str, owner: str, results: Sequence[SubResult]) -> list[bool]:
        flags = []
        for r in results:
            sub = self.s._subtasks.get((pipeline, r.item_id, r.stage), {}).get(r.name)
            ok = (sub is not None and sub.state == RUNNING and sub.owner == owner
                  and sub.attempt == r.attempt)
            if ok:
                sub = self._subs((pipeline, r.item_id, r.stage))[r.name]
                sub.state, sub.owner, sub.output, sub.error = r.state, None, r.output, r.error
                sub.updated_at = self.now
            flags.append(ok)
        return flags

    def reset_subtasks(self, pipeline: str, keys: Sequence[tuple[str, str]]) -> None:
        for item_id, stage in keys:
            key = (pipeline, item_id, stage)
            if not any(sub.state == RUNNING for sub in self.s._subtasks.get(key, {}).values()):
                continue
            for sub in self._subs(key).values():
                if sub.state == RUNNING:
                    sub.state, sub.owner = PENDING, None

    def runners(self) -> list[tuple[str, str, int, float]]:
        return [(o, h, p, e) for o, (h, p, e) in self.s._runners.items()]

    def delete_runners(self, owners: Sequence[str]) -> None:
        for owner in owners:
            if owner not in self.undo.runners:
                self.undo.runners[owner] = self.s._runners.get(owner)
            self.s._runners.pop(owner, None)

    def running_rows(self, pipeline: str) -> list[tuple[str, str, int, str | None]]:
        stages = self.s._stages
        return [(k[1], k[2], r.attempt, r.owner)
                for k in sorted(self.s._running.get(pipeline, ()), key=lambda k: stages[k].id)
                if (r := stages[k]).state == RUNNING]

    def rolling_back(self, pipeline: str) -> dict[str, str]:
        return dict(self.s._rolling.get(pipeline, {}))

    def find(self, pipeline: str, stages: Sequence[str], item_id: str | None,
             stage: str | None, states: Sequence[str]) -> list[tuple[str, str]]:
        wanted = set(stages) if stage is None else ({stage} & set(stages))
        if item_id is not None:
            rows = [((pipeline, item_id, s), r) for s, r in self.s._by_item(pipeline, item_id)]
        else:
            rows = [(k, r) for k, r in self.s._stages.items() if k[0] == pipeline]
        found = [(r.id, k[1], k[2]) for k, r in rows if k[2] in wanted and r.state in states]
        found.sort()
        return [(i, s) for _, i, s in found]

    def require_item(self, pipeline: str, item_id: str) -> None:
        if item_id not in self.s._items.get(pipeline, {}):
            raise ItemNotFoundError(item_id, pipeline)


class MemoryStore(BaseStore):
    """An in-process store (``open_store("memory://")``); nothing survives the process."""

    def __init__(self) -> None:
        self.url = "memory://"
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._items: dict[str, dict[str, _Item]] = {}
        self._stages: dict[tuple[str, str, str], _Row] = {}
        self._ready: dict[str, list[tuple[int, tuple[str, str, str]]]] = {}
        self._history: list[tuple[int, str, float, HistoryRow]] = []
        self._runners: dict[str, tuple[str, int, float]] = {}
        self._shapes: dict[str, tuple[str, ...]] = {}
        self._deps_seen: dict[str, dict[str, tuple[str, ...]]] = {}
        self._subtasks: dict[tuple[str, str, str], dict[str, _Sub]] = {}
        # indexes, brought up to date when a transaction ends (from its undo log)
        self._running: dict[str, set[StageKey]] = {}
        self._running_peak: dict[str, int] = {}
        self._rolling: dict[str, dict[str, str]] = {}
        self._tx: _MemoryTx | None = None
        self._registered: dict[str, tuple[str, int]] = {}  # runners registered here

    def __repr__(self) -> str:
        return "MemoryStore()"

    @contextmanager
    def transaction(self) -> Iterator[_MemoryTx]:
        with self._lock:
            if self._tx is not None:  # nested: part of the enclosing transaction
                yield self._tx
                return
            tx = self._tx = _MemoryTx(self, _Undo(len(self._history)))
            try:
                yield tx
            except BaseException:
                self._undo(tx.undo)
                self._reindex(tx.undo)
                raise
            finally:
                self._tx = None
            self._shrink()

    def _undo(self, undo: _Undo) -> None:
        """Put back every row a failed transaction touched."""
        del self._history[undo.history_len:]
        for key, snap in undo.stages.items():
            if snap is None:
                self._stages.pop(key, None)
            else:
                row = self._stages[key] = snap[0].restore(snap)
                if row.state == PENDING and row.ready:
                    self._push(key[0], row, key)  # its heap entry may have been taken
        for (pipeline, item_id), item in undo.items.items():
            items = self._items.setdefault(pipeline, {})
            if item is None:
                items.pop(item_id, None)
            else:
                items[item_id] = item
        for key, subs in undo.subtasks.items():
            if subs is None:
                self._subtasks.pop(key, None)
            else:
                self._subtasks[key] = subs
        for owner, info in undo.runners.items():
            if info is not None:
                self._runners[owner] = info

    def _reindex(self, undo: _Undo) -> None:
        """Bring the running-row and rolling-back-item indexes (kept up to date by
        the primitives) back in line with the rows a failed transaction restored."""
        for key in undo.stages:
            row = self._stages.get(key)
            running = self._running.setdefault(key[0], set())
            if row is not None and row.state == RUNNING:
                running.add(key)
            else:
                running.discard(key)
        for pipeline, item_id in undo.items:
            item = self._items.get(pipeline, {}).get(item_id)
            rolling = self._rolling.setdefault(pipeline, {})
            if item is not None and item.state.startswith(ROLLING_BACK):
                rolling[item_id] = item.state
            else:
                rolling.pop(item_id, None)

    def _shrink(self) -> None:
        """A set never shrinks its table: iterating one that held 50,000 keys costs
        as much when it is empty. Copy a running index once it has mostly emptied."""
        for pipeline, running in self._running.items():
            if len(running) * 8 < self._running_peak.get(pipeline, 0):
                self._running[pipeline] = set(running)
                self._running_peak[pipeline] = len(running)

    def _push(self, pipeline: str, row: _Row, key: tuple[str, str, str]) -> None:
        heapq.heappush(self._ready.setdefault(pipeline, []), (row.id, key))

    def _by_item(self, pipeline: str, item_id: str) -> Iterator[tuple[str, _Row]]:
        for stage in self._shapes.get(pipeline, ()):
            row = self._stages.get((pipeline, item_id, stage))
            if row is not None:
                yield stage, row

    def _reconcile(self, tx: Tx, shape: Shape) -> bool:
        self._shapes[shape.name] = tuple(
            dict.fromkeys(self._shapes.get(shape.name, ()) + shape.order)
        )
        if self._deps_seen.get(shape.name) == dict(shape.deps):
            return False
        assert isinstance(tx, _MemoryTx)
        for item_id in self._items.get(shape.name, {}):
            tx.insert_stage_rows(shape.name, [(item_id, s, False) for s in shape.order])
            states = tx.stage_states(shape.name, [item_id])[item_id]
            for s in shape.order:
                row = self._stages[(shape.name, item_id, s)]
                if row.state == PENDING:
                    tx._row((shape.name, item_id, s))
                    row.ready = all(states.get(d, (PENDING, False))[0] in DONE_STATES
                                    for d in shape.deps[s])
                    if row.ready:
                        self._push(shape.name, row, (shape.name, item_id, s))
        self._deps_seen[shape.name] = dict(shape.deps)
        return True

    def submit(self, shape: Shape, items: Sequence[tuple[str, str]], actor: str) -> list[str]:
        if shape.name not in self._shapes:
            self.prepare(shape)
        return super().submit(shape, items, actor)

    # -- runners -----------------------------------------------------------
    def register_runner(self, owner: str, host: str, pid: int, lease: float) -> None:
        with self._lock:
            self._runners[owner] = (host, pid, time.time() + lease)
            self._registered[owner] = (host, pid)

    def heartbeat(self, owner: str, lease: float) -> None:
        with self._lock:
            known = self._registered.get(owner)
            if known is not None:  # registered again if it was taken for dead and forgotten
                self._runners[owner] = (*known, time.time() + lease)

    def unregister_runner(self, owner: str) -> None:
        with self._lock:
            self._runners.pop(owner, None)
            self._registered.pop(owner, None)

    # -- reads -------------------------------------------------------------
    def outlook(self, shape: Shape, only: Sequence[str] | None = None) -> Outlook:
        """Ready and running rows, read from the ready heap and the running index
        (what ``claim`` and ``recover`` see), not from every row."""
        with self._lock:
            wanted = set(shape.order)
            items = set(only) if only is not None else None
            stages = self._stages
            ready = set()
            for row_id, key in self._ready.get(shape.name, ()):
                r = stages.get(key)
                if (r is not None and r.id == row_id and r.state == PENDING and r.ready
                        and key[2] in wanted and (items is None or key[1] in items)):
                    ready.add(key)
            running = sum(1 for key in self._running.get(shape.name, ())
                          if key[2] in wanted and (items is None or key[1] in items))
            return Outlook(len(ready), running)

    def stage_records(self, shape: Shape, item_id: str) -> list[StageRecord]:
        with self._lock:
            if item_id not in self._items.get(shape.name, {}):
                return []
            return [
                StageRecord(item_id, s, r.state, r.ready, r.attempt, r.output, r.error,
                            r.review, r.updated_at)
                for s in shape.order
                if (r := self._stages.get((shape.name, item_id, s))) is not None
            ]

    def item_data(self, shape: Shape, item_id: str) -> tuple[str, float]:
        with self._lock:
            item = self._items.get(shape.name, {}).get(item_id)
            if item is None:
                raise ItemNotFoundError(item_id, shape.name)
            return item.data, item.submitted_at

    def item_ids(self, shape: Shape, stage: str | None, state: str | None,
                 limit: int | None) -> list[str]:
        with self._lock:
            items = self._items.get(shape.name, {})
            if stage is None and state is None:
                ids = sorted(items, key=lambda i: items[i].id)
            else:
                rows = [
                    (r.updated_at, r.id, k[1]) for k, r in self._stages.items()
                    if k[0] == shape.name and k[2] in shape.order
                    and (stage is None or k[2] == stage) and (state is None or r.state == state)
                ]
                ids = list(dict.fromkeys(i for _, _, i in sorted(rows)))
            return ids[:limit] if limit is not None else ids

    def subtask_records(self, shape: Shape, item_id: str) -> list[SubRecord]:
        """Every subtask row of one item."""
        with self._lock:
            out: list[SubRecord] = []
            for stage in shape.order:
                subs = self._subtasks.get((shape.name, item_id, stage), {})
                out += [SubRecord(stage, n, r.state, r.attempt, r.output, r.error)
                        for n, r in sorted(subs.items(), key=lambda kv: kv[1].id)]
            return out

    def settled_item_counts(self, shape: Shape) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for item in self._items.get(shape.name, {}).values():
                out[item.state] = out.get(item.state, 0) + 1
            return out

    def counts(self, shape: Shape) -> dict[str, dict[str, int]]:
        with self._lock:
            out: dict[str, dict[str, int]] = {s: {} for s in shape.order}
            for (p, _, s), r in self._stages.items():
                if p == shape.name and s in out:
                    out[s][r.state] = out[s].get(r.state, 0) + 1
            return out

    def history(self, shape: Shape, item_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"seq": seq, "at": at, "item_id": r.item_id, "stage": r.stage,
                 "subtask": r.subtask, "state": r.state, "attempt": r.attempt, "actor": r.actor,
                 "error": r.error, "traceback": r.traceback, "details": r.details}
                for seq, p, at, r in self._history if p == shape.name and r.item_id == item_id
            ]

    def _all_stage_rows(self, shape: Shape) -> Iterable[tuple[str, str, str, bool]]:
        with self._lock:
            return [(k[1], k[2], r.state, r.ready) for k, r in self._stages.items()
                    if k[0] == shape.name and k[2] in shape.order]

    def dump(self) -> str:
        """Every row as JSON text; two equal dumps mean an unchanged store."""
        with self._lock:
            return json.dumps({
                "items": {p: {i: attrs.asdict(v) for i, v in d.items()} for p, d in self._items.items()},
                "stages": {"|".join(k): attrs.asdict(v) for k, v in self._stages.items()},
                "history": [(s, p, a, r._asdict()) for s, p, a, r in self._history],
                "subtasks": {"|".join(k): {n: attrs.asdict(v) for n, v in d.items()}
                             for k, d in self._subtasks.items()},
            }, sort_keys=True)

    def close(self) -> None:
        """Nothing to release."""
