"""The rows of the memory store, their indexes, and the :class:`Tx` primitives over them.

Every primitive saves, once per transaction, what it is about to change in an
undo log (a snapshot tuple of a stage row, a copy of an item or of a stage's
subtasks, the history length), so ``Tables.undo`` puts a failed transaction
back exactly. The ready heap, the running rows and the rolling-back items are
indexed as the primitives change them, so claims, ``outlook`` and lease
recovery never read every row.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence

import attrs

from ..errors import ItemNotFoundError
from ..states import DONE_STATES
from .records import (
    PENDING,
    ROLLING_BACK,
    RUNNING,
    ControlRow,
    HistoryRow,
    StageRecord,
    SubRecord,
    SubResult,
    Transition,
)
from .tx import Tx

StageKey = tuple[str, str, str]  # (pipeline, item_id, stage)
Plan = tuple[int, "str | None", "int | None"]  # a fan-out's (attempt, plan JSON, resume_at)
Stamp = tuple[str | None, str | None] | None  # (fingerprint, pipeline version)


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
    stamp: Stamp = None  # (fingerprint, pipeline version) of the result; None: unknown
    priority: int = 0  # claimed highest first (undone through ``_Undo.priorities``)

    @property
    def rank(self) -> int:
        """Its place in the ready heap: highest priority first, then oldest."""
        return self.id - (self.priority << 48)

    def copy(self) -> _Row:
        return _Row(self.id, self.state, self.ready, self.attempt, self.owner, self.not_before,
                    self.output, self.error, self.review, self.updated_at, self.stamp,
                    self.priority)

    def restore(self, snap: _RowSnap) -> _Row:
        """This row with the fields of a snapshot (see ``_snap``) put back."""
        (_, self.state, self.ready, self.attempt, self.owner, self.not_before, self.output,
         self.error, self.review, self.updated_at, self.stamp) = snap
        return self


#: A stage row and its fields before a transaction changed it (a tuple: cheap to make).
_RowSnap = tuple[_Row, str, bool, int, "str | None", float, "str | None", "str | None",
                 "str | None", float, "Stamp"]


def _snap(row: _Row) -> _RowSnap:
    return (row, row.state, row.ready, row.attempt, row.owner, row.not_before, row.output,
            row.error, row.review, row.updated_at, row.stamp)


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
    version: str | None = None
    priority: int = 0

    def copy(self) -> _Item:
        return _Item(self.id, self.data, self.state, self.submitted_at, self.version,
                     self.priority)


class _Undo:
    """Before-images of what one transaction touched, to restore if it fails."""

    def __init__(self, history_len: int, control_len: int = 0) -> None:
        self.history_len = history_len
        self.control_len = control_len
        self.stages: dict[StageKey, _RowSnap | None] = {}
        self.items: dict[tuple[str, str], _Item | None] = {}
        self.subtasks: dict[StageKey, dict[str, _Sub] | None] = {}
        self.runners: dict[str, tuple[str, int, float] | None] = {}
        self.priorities: list[tuple[_Row, int]] = []  # (row, priority before), oldest first
        self.limits: dict[tuple[str, str], tuple[float, float] | None] = {}
        self.links: list[tuple[str, str, str, str, str]] = []  # inserted: removed by an undo
        self.plans: dict[StageKey, Plan | None] = {}


class MemoryTx(Tx):
    """The :class:`Tx` primitives over :class:`Tables`, each saving what it changes in the undo log."""

    def __init__(self, tables: Tables, undo: _Undo) -> None:
        self.s = tables
        self.undo = undo
        self.now = time.time()

    # -- the undo log: call before changing a row ------------------------------
    def _row(self, key: StageKey) -> _Row | None:
        """The stage row at ``key``, saved in the undo log: about to change."""
        row = self.s.stages.get(key)
        if key not in self.undo.stages:
            self.undo.stages[key] = _snap(row) if row is not None else None
        return row

    def _item(self, pipeline: str, item_id: str) -> _Item | None:
        item = self.s.items.get(pipeline, {}).get(item_id)
        if (pipeline, item_id) not in self.undo.items:
            self.undo.items[(pipeline, item_id)] = item.copy() if item is not None else None
        return item

    def _subs(self, key: StageKey) -> dict[str, _Sub]:
        subs = self.s.subtasks.get(key)
        if key not in self.undo.subtasks:
            self.undo.subtasks[key] = (None if subs is None else
                                       {n: sub.copy() for n, sub in subs.items()})
        if subs is None:
            subs = self.s.subtasks[key] = {}
        return subs

    # -- primitives ------------------------------------------------------------
    def insert_items(self, pipeline: str, rows: Iterable[tuple[str, str]],
                     version: str | None = None) -> list[str]:
        items = self.s.items.setdefault(pipeline, {})
        new = []
        for item_id, data in rows:
            if item_id not in items:
                self._item(pipeline, item_id)
                items[item_id] = _Item(next(self.s.ids), data, PENDING, self.now, version)
                new.append(item_id)
        return new

    def insert_stage_rows(self, pipeline: str, rows: Iterable[tuple[str, str, bool]]) -> None:
        stages = self.s.stages
        saved = self.undo.stages
        for item_id, stage, ready in rows:
            key = (pipeline, item_id, stage)
            if key not in stages:
                if key not in saved:
                    saved[key] = None  # new: removed again if the transaction fails
                row = _Row(next(self.s.ids), PENDING, ready, updated_at=self.now)
                stages[key] = row
                if ready:
                    self.s.push(pipeline, row, key)

    def stage_states(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, dict[str, tuple[str, bool]]]:
        out: dict[str, dict[str, tuple[str, bool]]] = {}
        by_item = self.s.by_item
        for item_id in item_ids:
            out[item_id] = {
                stage: (row.state, row.ready)
                for stage, row in by_item(pipeline, item_id)
            }
        return out

    def apply(self, pipeline: str, owner: str, transitions: Sequence[Transition],
              stamps: Mapping[str, tuple[str, str | None]] | None = None) -> list[bool]:
        flags = []
        stages, saved = self.s.stages, self.undo.stages
        running = self.s.running.setdefault(pipeline, set())
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
                                  row.updated_at, row.stamp)  # _snap(row), inlined: the hot path
                running.discard(key)
                row.state, row.owner, row.updated_at = t.state, None, self.now
                row.ready = t.state == PENDING
                row.not_before = self.now + t.delay
                row.error = t.error
                if row.ready:
                    self.s.push(pipeline, row, key)
                if t.output is not None or t.state in DONE_STATES:
                    row.output = t.output
                if t.review is not None:
                    row.review = t.review
                if stamps is not None:
                    row.stamp = stamps.get(t.stage, row.stamp)
            flags.append(ok)
        return flags

    def record_definitions(self, pipeline: str, rows: Sequence[tuple[str, str, str]]) -> None:
        known = self.s.definitions.setdefault(pipeline, {})
        for stage, fp, definition in rows:
            known.setdefault((stage, fp), definition)  # idempotent: no undo needed

    def items_at_version(self, pipeline: str, version: str | None,
                         limit: int) -> list[tuple[str, str]]:
        items = self.s.items.get(pipeline, {})
        found = sorted((it.id, i, it.data) for i, it in items.items() if it.version == version)
        return [(i, data) for _, i, data in found[:limit]]

    def migrate_item(self, pipeline: str, item_id: str, expect: str | None, version: str,
                     data: str) -> bool:
        item = self._item(pipeline, item_id)
        if item is None or item.version != expect:
            return False
        item.data, item.version = data, version
        return True

    def rename_stage(self, pipeline: str, old: str, new: str) -> list[str]:
        moved = []
        for (p, item_id, stage) in list(self.s.stages):
            if p != pipeline or stage != old:
                continue
            target = self.s.stages.get((p, item_id, new))
            if target is not None and (target.state != PENDING or target.attempt):
                continue  # the new stage has its own history: keep both
            self._row((p, item_id, new))
            row = self._row((p, item_id, old))
            assert row is not None
            del self.s.stages[(p, item_id, old)]
            self.s.stages[(p, item_id, new)] = row
            if row.state == RUNNING:
                running = self.s.running.setdefault(p, set())
                running.discard((p, item_id, old))
                running.add((p, item_id, new))
            if row.ready and row.state == PENDING:
                self.s.push(pipeline, row, (p, item_id, new))
            if (p, item_id, old) in self.s.subtasks:
                self._subs((p, item_id, new))
                subs = self._subs((p, item_id, old))
                del self.s.subtasks[(p, item_id, old)]
                self.s.subtasks[(p, item_id, new)] = subs
            moved.append(item_id)
        return moved

    def unclaim(self, pipeline: str, owner: str, keys: Sequence[tuple[str, str, int]]) -> list[bool]:
        flags = []
        for item_id, stage, attempt in keys:
            key = (pipeline, item_id, stage)
            row = self.s.stages.get(key)
            ok = (row is not None and row.state == RUNNING and row.owner == owner
                  and row.attempt == attempt)
            if ok:
                row = self._row(key)
                assert row is not None
                row.state, row.owner, row.ready, row.updated_at = PENDING, None, True, self.now
                row.attempt -= 1
                self.s.running.setdefault(pipeline, set()).discard(key)
                self.s.push(pipeline, row, key)
            flags.append(ok)
        return flags

    def set_ready(self, pipeline: str, rows: Sequence[tuple[str, str]]) -> None:
        stages, saved = self.s.stages, self.undo.stages
        heap = self.s.ready.setdefault(pipeline, [])
        for item_id, stage in rows:
            key = (pipeline, item_id, stage)
            row = stages.get(key)
            if row is not None and row.state == PENDING:
                if key not in saved:
                    saved[key] = _snap(row)
                row.ready = True
                heapq.heappush(heap, (row.rank, key))

    def set_state(self, pipeline: str, rows: Sequence[tuple[str, str]], state: str,
                  from_states: Sequence[str], *, ready: bool, error: str | None = None,
                  clear_output: bool = False) -> list[tuple[str, str]]:
        moved = []
        for item_id, stage in rows:
            key = (pipeline, item_id, stage)
            row = self.s.stages.get(key)
            if row is None or row.state not in from_states:
                continue
            self._row(key)
            if row.state == RUNNING:  # a cancel takes a claim back: keep the index true
                self.s.running.setdefault(pipeline, set()).discard(key)
            row.state, row.ready, row.owner, row.updated_at = state, ready, None, self.now
            row.error = error
            if clear_output:
                row.output = row.review = None
            if ready and state == PENDING:
                self.s.push(pipeline, row, key)
            moved.append((item_id, stage))
        return moved

    def set_item_states(self, pipeline: str, rows: Sequence[tuple[str, str]]) -> None:
        items = self.s.items.get(pipeline, {})
        rolling = self.s.rolling.setdefault(pipeline, {})
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
        history, ids, now, by_item = self.s.history, self.s.ids, self.now, self.s.item_history
        for r in rows:
            key = (pipeline, r.item_id)
            positions = by_item.get(key)
            if positions is None:
                positions = by_item[key] = []
            positions.append(len(history))
            history.append((next(ids), pipeline, now, r))

    def claim(self, pipeline: str, owner: str, stages: Sequence[str], limit: int,
              only: Sequence[str] | None = None) -> list[tuple[str, str, int]]:
        heap = self.s.ready.setdefault(pipeline, [])
        saved = self.undo.stages
        running = self.s.running.setdefault(pipeline, set())
        wanted = set(stages)
        items = set(only) if only is not None else None
        out: list[tuple[str, str, int]] = []
        later = []
        try:
            while heap and len(out) < limit:
                row_id, key = heapq.heappop(heap)
                row = self.s.stages.get(key)
                if (row is None or row.id - (row.priority << 48) != row_id or row.state != PENDING
                        or not row.ready):
                    continue
                if key[2] not in wanted or row.not_before > self.now or (
                        items is not None and key[1] not in items):
                    later.append((row_id, key))
                    continue
                if key not in saved:
                    saved[key] = (row, row.state, row.ready, row.attempt, row.owner,
                                  row.not_before, row.output, row.error, row.review,
                                  row.updated_at, row.stamp)  # _snap(row), inlined: the hot path
                row.state, row.owner, row.updated_at = RUNNING, owner, self.now
                row.attempt += 1
                running.add(key)
                out.append((key[1], key[2], row.attempt))
        finally:
            for entry in later:
                heapq.heappush(heap, entry)
        if len(running) > self.s.running_peak.get(pipeline, 0):
            self.s.running_peak[pipeline] = len(running)
        return out

    def claim_rows(self, pipeline: str, owner: str, rows: Sequence[tuple[str, str]],
                   min_priority: int | None) -> list[tuple[str, str, int]]:
        stages, saved = self.s.stages, self.undo.stages
        running = self.s.running.setdefault(pipeline, set())
        out: list[tuple[str, str, int]] = []
        for item_id, stage in rows:
            key = (pipeline, item_id, stage)
            row = stages.get(key)
            if (row is None or row.state != PENDING or row.not_before > self.now
                    or (min_priority is not None and row.priority < min_priority)):
                continue
            if key not in saved:
                saved[key] = _snap(row)
            row.state, row.ready, row.owner, row.updated_at = RUNNING, True, owner, self.now
            row.attempt += 1
            running.add(key)
            out.append((item_id, stage, row.attempt))
        if len(running) > self.s.running_peak.get(pipeline, 0):
            self.s.running_peak[pipeline] = len(running)
        return out

    def top_ready_priority(self, pipeline: str) -> int | None:
        heap = self.s.ready.get(pipeline)
        while heap:  # drop what the claims left behind (taken or changed rows), as claim does
            rank, key = heap[0]
            row = self.s.stages.get(key)
            if (row is not None and row.id - (row.priority << 48) == rank and row.state == PENDING
                    and row.ready):
                return row.priority
            heapq.heappop(heap)
        return None

    def items_json(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, str]:
        items = self.s.items[pipeline]
        return {i: items[i].data for i in item_ids}

    def completed_outputs(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, dict[str, str | None]]:
        return {
            item_id: {stage: row.output for stage, row in self.s.by_item(pipeline, item_id)
                      if row.state == "completed"}
            for item_id in item_ids
        }

    def rows(self, pipeline: str, item_id: str) -> dict[str, StageRecord]:
        if item_id not in self.s.items.get(pipeline, {}):
            return {}
        return {
            s: StageRecord(item_id, s, r.state, r.ready, r.attempt, r.output, r.error, r.review,
                           r.updated_at)
            for s, r in self.s.by_item(pipeline, item_id)
        }

    def cas(self, pipeline: str, item_id: str, stage: str, expect: str, state: str, *,
            output: str | None, review: str | None, attempt: int | None = None) -> bool:
        key = (pipeline, item_id, stage)
        row = self.s.stages.get(key)
        if row is None or row.state != expect or (attempt is not None and row.attempt != attempt):
            return False
        self._row(key)
        row.state, row.output, row.review = state, output, review
        row.ready, row.owner, row.updated_at = False, None, self.now
        return True

    def overdue(self, pipeline: str, stage: str, before: float) -> list[str]:
        rows = [
            (r.updated_at, r.id, k[1]) for k, r in self.s.stages.items()
            if k[0] == pipeline and k[2] == stage and r.state == "awaiting_review"
            and r.updated_at <= before
        ]
        return [i for _, _, i in sorted(rows)]

    def items_in_state(self, pipeline: str, state: str, limit: int | None,
                       prefix: bool = False) -> list[str]:
        items = self.s.items.get(pipeline, {})
        if state.startswith(ROLLING_BACK):  # few, and indexed
            ids = [i for i, st in sorted(self.s.rolling.get(pipeline, {}).items(),
                                         key=lambda kv: items[kv[0]].id)
                   if (st.startswith(state) if prefix else st == state)]
        else:
            ids = [i for i, it in sorted(items.items(), key=lambda kv: kv[1].id)
                   if (it.state.startswith(state) if prefix else it.state == state)]
        return ids[:limit] if limit is not None else ids

    def item_state_of(self, pipeline: str, item_id: str) -> str | None:
        item = self.s.items.get(pipeline, {}).get(item_id)
        return item.state if item is not None else None

    def cas_item_state(self, pipeline: str, item_id: str, expect: str, state: str) -> bool:
        item = self.s.items.get(pipeline, {}).get(item_id)
        if item is None or item.state != expect:
            return False
        self._item(pipeline, item_id)
        item.state = state
        rolling = self.s.rolling.setdefault(pipeline, {})
        if state.startswith(ROLLING_BACK):
            rolling[item_id] = state
        else:
            rolling.pop(item_id, None)
        return True

    def set_error(self, pipeline: str, item_id: str, stage: str, expect: str, error: str) -> bool:
        key = (pipeline, item_id, stage)
        row = self.s.stages.get(key)
        if row is None or row.state != expect:
            return False
        self._row(key)
        row.error, row.updated_at = error, self.now
        return True

    def owner_of(self, pipeline: str, item_id: str, stage: str) -> str | None:
        row = self.s.stages.get((pipeline, item_id, stage))
        return row.owner if row is not None else None

    def subtask_rows(self, pipeline: str, item_id: str, stage: str) -> dict[str, SubRecord]:
        subs = self.s.subtasks.get((pipeline, item_id, stage), {})
        return {n: SubRecord(stage, n, r.state, r.attempt, r.output, r.error)
                for n, r in sorted(subs.items(), key=lambda kv: kv[1].id)}

    def upsert_subtasks(self, pipeline: str, item_id: str, stage: str,
                        rows: Sequence[tuple[str, str, int, str | None]]) -> None:
        subs = self._subs((pipeline, item_id, stage))
        for name, state, attempt, owner in rows:
            old = subs.get(name)
            subs[name] = _Sub(old.id if old else next(self.s.ids), state, attempt, owner,
                              old.output if old else None, old.error if old else None, self.now)

    def delete_subtasks(self, pipeline: str, item_id: str, stage: str, names: Sequence[str]) -> None:
        if not names or (pipeline, item_id, stage) not in self.s.subtasks:
            return
        subs = self._subs((pipeline, item_id, stage))
        for name in names:
            subs.pop(name, None)

    def apply_subtasks(self, pipeline: str, owner: str, results: Sequence[SubResult]) -> list[bool]:
        flags = []
        for r in results:
            sub = self.s.subtasks.get((pipeline, r.item_id, r.stage), {}).get(r.name)
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
            if not any(sub.state == RUNNING for sub in self.s.subtasks.get(key, {}).values()):
                continue
            for sub in self._subs(key).values():
                if sub.state == RUNNING:
                    sub.state, sub.owner = PENDING, None

    def _set_plan(self, key: StageKey, plan: Plan | None) -> None:
        if key not in self.undo.plans:
            self.undo.plans[key] = self.s.plans.get(key)
        if plan is None:
            self.s.plans.pop(key, None)
        else:
            self.s.plans[key] = plan

    def save_plans(self, pipeline: str, rows: Sequence[tuple[str, str, int, str | None]]) -> None:
        for item_id, stage, attempt, plan in rows:
            self._set_plan((pipeline, item_id, stage), (attempt, plan, None))

    def resume_plans(self, pipeline: str, rows: Sequence[tuple[str, str, int]]) -> None:
        for item_id, stage, attempt in rows:
            key = (pipeline, item_id, stage)
            found = self.s.plans.get(key)
            if found is not None and (found[0] == attempt or found[2] == attempt - 1):
                self._set_plan(key, (found[0], found[1], attempt))

    def plans_to_resume(self, pipeline: str, rows: Sequence[tuple[str, str, int]]
                        ) -> dict[tuple[str, str], str]:
        out = {}
        for item_id, stage, attempt in rows:
            found = self.s.plans.get((pipeline, item_id, stage))
            if found is not None and found[1] is not None and found[2] == attempt - 1:
                out[(item_id, stage)] = found[1]
        return out

    def drop_plans(self, pipeline: str, rows: Sequence[tuple[str, str]]) -> None:
        for item_id, stage in rows:
            if (pipeline, item_id, stage) in self.s.plans:
                self._set_plan((pipeline, item_id, stage), None)

    def runners(self) -> list[tuple[str, str, int, float]]:
        return [(o, h, p, e) for o, (h, p, e) in self.s.runners.items()]

    def insert_links(self, rows: Sequence[tuple[str, str, str, str, str]]) -> None:
        for link in rows:
            if link not in self.s.links:
                self.s.links[link] = None
                self.undo.links.append(link)

    def links_of(self, pipeline: str, item_id: str, stage: str | None = None
                 ) -> list[tuple[str, str, str]]:
        return [(s, cp, c) for p, i, s, cp, c in self.s.links
                if p == pipeline and i == item_id and (stage is None or s == stage)]

    def parents_of(self, child_pipeline: str, child_ids: Iterable[str]
                   ) -> list[tuple[str, str, str, str]]:
        ids = set(child_ids)
        return [(c, p, i, s) for p, i, s, cp, c in self.s.links
                if cp == child_pipeline and c in ids]

    def delete_runners(self, owners: Sequence[str]) -> None:
        for owner in owners:
            if owner not in self.undo.runners:
                self.undo.runners[owner] = self.s.runners.get(owner)
            self.s.runners.pop(owner, None)

    def running_rows(self, pipeline: str) -> list[tuple[str, str, int, str | None]]:
        stages = self.s.stages
        return [(k[1], k[2], r.attempt, r.owner)
                for k in sorted(self.s.running.get(pipeline, ()), key=lambda k: stages[k].id)
                if (r := stages[k]).state == RUNNING]

    def rolling_back(self, pipeline: str) -> dict[str, str]:
        return dict(self.s.rolling.get(pipeline, {}))

    def find(self, pipeline: str, stages: Sequence[str], item_id: str | None,
             stage: str | None, states: Sequence[str]) -> list[tuple[str, str]]:
        wanted = set(stages) if stage is None else ({stage} & set(stages))
        if item_id is not None:
            rows = [((pipeline, item_id, s), r) for s, r in self.s.by_item(pipeline, item_id)]
        else:
            rows = [(k, r) for k, r in self.s.stages.items() if k[0] == pipeline]
        found = [(r.id, k[1], k[2]) for k, r in rows if k[2] in wanted and r.state in states]
        found.sort()
        return [(i, s) for _, i, s in found]

    def require_item(self, pipeline: str, item_id: str) -> None:
        if item_id not in self.s.items.get(pipeline, {}):
            raise ItemNotFoundError(item_id, pipeline)

    def append_control(self, pipeline: str, kind: str, targets: Sequence[str], actor: str,
                       reason: str | None) -> None:
        for target in targets:
            self.s.control.append(
                (pipeline, ControlRow(next(self.s.ids), kind, target, self.now, actor, reason)))

    def control_rows(self, pipeline: str, since: int, kinds: Sequence[str] | None = None
                     ) -> list[ControlRow]:
        return self.s.control_rows(pipeline, since, kinds)

    def item_states(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, str]:
        items = self.s.items.get(pipeline, {})
        return {i: items[i].state for i in item_ids if i in items}

    # -- flow control (docs/flow-control.md) -------------------------------------
    def set_priority(self, pipeline: str, item_ids: Sequence[str], priority: int,
                     stages: Sequence[str] | None = None) -> None:
        wanted = None if stages is None else set(stages)
        for item_id in item_ids:
            if stages is None:
                item = self._item(pipeline, item_id)
                if item is not None:
                    item.priority = priority
            for stage, row in list(self.s.by_item(pipeline, item_id)):
                if (wanted is not None and stage not in wanted) or row.priority == priority:
                    continue
                self.undo.priorities.append((row, row.priority))
                row.priority = priority
                if row.state == PENDING and row.ready:
                    self.s.push(pipeline, row, (pipeline, item_id, stage))

    def take_limits(self, pipeline: str, keys: Sequence[str], *, lock: bool = True
                    ) -> dict[str, tuple[float, float] | None]:
        return {k: self.s.limits.get((pipeline, k)) for k in keys}

    def save_limits(self, pipeline: str, rows: Sequence[tuple[str, float, float]]) -> None:
        for key, tokens, at in rows:
            if (pipeline, key) not in self.undo.limits:
                self.undo.limits[(pipeline, key)] = self.s.limits.get((pipeline, key))
            self.s.limits[(pipeline, key)] = (tokens, at)

    def running_counts(self, pipeline: str, stages: Sequence[str]) -> dict[str, int]:
        counts = dict.fromkeys(stages, 0)
        for key in self.s.running.get(pipeline, ()):
            if key[2] in counts and self.s.stages[key].state == RUNNING:
                counts[key[2]] += 1
        return counts

    def ready_counts(self, pipeline: str, stages: Sequence[str]) -> dict[str, int]:
        counts = dict.fromkeys(stages, 0)
        for (p, _, stage), row in self.s.stages.items():
            if p == pipeline and stage in counts and row.state == PENDING and row.ready:
                counts[stage] += 1
        return counts

    def items_at_priority(self, pipeline: str, at_least: int) -> list[str]:
        items = self.s.items.get(pipeline, {})
        found = sorted((-it.priority, it.id, i) for i, it in items.items() if it.priority >= at_least)
        return [i for _, _, i in found]

    def item_priorities(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, int]:
        items = self.s.items.get(pipeline, {})
        return {i: items[i].priority for i in item_ids if i in items}


class Tables:
    """The rows of a memory store and their indexes (the ready heap, running rows,
    rolling-back items), with the undo of a failed transaction."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.items: dict[str, dict[str, _Item]] = {}
        self.stages: dict[StageKey, _Row] = {}
        self.ready: dict[str, list[tuple[int, StageKey]]] = {}  # heap of (row id, key)
        self.history: list[tuple[int, str, float, HistoryRow]] = []
        #: (pipeline, item_id) -> positions of its rows in ``history``, oldest first
        self.item_history: dict[tuple[str, str], list[int]] = {}
        self.control: list[tuple[str, ControlRow]] = []
        self.runners: dict[str, tuple[str, int, float]] = {}
        #: child links (pipeline, item_id, stage, child_pipeline, child_id), in order
        self.links: dict[tuple[str, str, str, str, str], None] = {}
        self.shapes: dict[str, tuple[str, ...]] = {}
        self.deps_seen: dict[str, dict[str, tuple[str, ...]]] = {}
        #: pipeline -> (stage, fingerprint) -> definition JSON
        self.definitions: dict[str, dict[tuple[str, str], str]] = {}
        self.subtasks: dict[StageKey, dict[str, _Sub]] = {}
        self.plans: dict[StageKey, Plan] = {}  # each fan-out's latest plan (store/fanout.py)
        # indexes, kept up to date by the primitives (and by ``reindex`` after an undo)
        self.running: dict[str, set[StageKey]] = {}
        self.running_peak: dict[str, int] = {}
        self.rolling: dict[str, dict[str, str]] = {}
        #: (pipeline, limit key) -> (tokens, updated_at) of a rate's bucket
        self.limits: dict[tuple[str, str], tuple[float, float]] = {}

    def undo(self, undo: _Undo) -> None:
        """Put back every row a failed transaction touched."""
        for _, pipeline, _, r in reversed(self.history[undo.history_len:]):
            self.item_history[(pipeline, r.item_id)].pop()  # appended last: at the end
        del self.history[undo.history_len:]
        del self.control[undo.control_len:]
        for key, snap in undo.stages.items():
            if snap is None:
                self.stages.pop(key, None)
            else:
                row = self.stages[key] = snap[0].restore(snap)
                if row.state == PENDING and row.ready:
                    self.push(key[0], row, key)  # its heap entry may have been taken
        for (pipeline, item_id), item in undo.items.items():
            items = self.items.setdefault(pipeline, {})
            if item is None:
                items.pop(item_id, None)
            else:
                items[item_id] = item
        for key, subs in undo.subtasks.items():
            if subs is None:
                self.subtasks.pop(key, None)
            else:
                self.subtasks[key] = subs
        for key, plan in undo.plans.items():
            if plan is None:
                self.plans.pop(key, None)
            else:
                self.plans[key] = plan
        for owner, info in undo.runners.items():
            if info is not None:
                self.runners[owner] = info
        for link in undo.links:
            self.links.pop(link, None)
        for row, priority in reversed(undo.priorities):
            row.priority = priority  # a stale heap entry of the undone priority is skipped
            if row.state == PENDING and row.ready:
                where = next((k for k, r in self.stages.items() if r is row), None)
                if where is not None:
                    self.push(where[0], row, where)
        for bucket_key, bucket in undo.limits.items():
            if bucket is None:
                self.limits.pop(bucket_key, None)
            else:
                self.limits[bucket_key] = bucket

    def reindex(self, undo: _Undo) -> None:
        """Bring the running-row and rolling-back-item indexes (kept up to date by
        the primitives) back in line with the rows a failed transaction restored."""
        for key in undo.stages:
            row = self.stages.get(key)
            running = self.running.setdefault(key[0], set())
            if row is not None and row.state == RUNNING:
                running.add(key)
            else:
                running.discard(key)
        for pipeline, item_id in undo.items:
            item = self.items.get(pipeline, {}).get(item_id)
            rolling = self.rolling.setdefault(pipeline, {})
            if item is not None and item.state.startswith(ROLLING_BACK):
                rolling[item_id] = item.state
            else:
                rolling.pop(item_id, None)

    def shrink(self) -> None:
        """A set never shrinks its table: iterating one that held 50,000 keys costs
        as much when it is empty. Copy a running index once it has mostly emptied."""
        for pipeline, running in self.running.items():
            if len(running) * 8 < self.running_peak.get(pipeline, 0):
                self.running[pipeline] = set(running)
                self.running_peak[pipeline] = len(running)

    def control_rows(self, pipeline: str, since: int, kinds: Sequence[str] | None = None
                     ) -> list[ControlRow]:
        return [r for p, r in self.control
                if p == pipeline and r.id > since and (not kinds or r.kind in kinds)]

    def push(self, pipeline: str, row: _Row, key: tuple[str, str, str]) -> None:
        heapq.heappush(self.ready.setdefault(pipeline, []), (row.rank, key))

    def by_item(self, pipeline: str, item_id: str) -> Iterator[tuple[str, _Row]]:
        for stage in self.shapes.get(pipeline, ()):
            row = self.stages.get((pipeline, item_id, stage))
            if row is not None:
                yield stage, row
