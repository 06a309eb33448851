"""``MemoryStore``: the state store in a Python dict; for tests and throwaway runs.

It implements the same protocol and passes the same conformance suite as
the SQL store, but keeps nothing when the process ends. A transaction holds
the store's re-entrant lock and keeps an undo log: every primitive saves the
rows it is about to change (once per transaction), so a transaction that
raises half-way is rolled back and leaves the store exactly as it was.
The rows, their indexes and the primitives live in ``memtables.py``; this
module holds the store's lock, its transactions and its reads.
"""

from __future__ import annotations

import bisect
import itertools
import json
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs

from ..errors import ItemNotFoundError
from ..metrics import StageMetrics
from ..states import DONE_STATES
from .base import BaseStore
from .memtables import MemoryTx, Tables, _Undo
from .metrics import memory_stage_metrics
from .query import Filter, Match, first_per_item, page, passes
from .records import (
    CANCELLED,
    PENDING,
    ControlRow,
    HistoryRow,
    Outlook,
    ResultRow,
    Shape,
    StageRecord,
    SubRecord,
)
from .tx import Tx


class MemoryStore(BaseStore):
    """An in-process store (``open_store("memory://")``); nothing survives the process."""

    #: Its tables hold the items' JSON already: a cache would only add bookkeeping.
    ITEM_CACHE_BYTES = 0

    def __init__(self) -> None:
        self.url = "memory://"
        self._lock = threading.RLock()
        self._committed = threading.Condition(threading.Lock())  # wakes wait_for_events
        self.t = Tables()
        self._tx: MemoryTx | None = None
        self._registered: dict[str, tuple[str, int]] = {}  # runners registered here

    def __repr__(self) -> str:
        return "MemoryStore()"

    @contextmanager
    def transaction(self) -> Iterator[MemoryTx]:
        with self._lock:
            if self._tx is not None:  # nested: part of the enclosing transaction
                yield self._tx
                return
            tx = self._tx = MemoryTx(self.t, _Undo(len(self.t.history), len(self.t.control)))
            try:
                yield tx
            except BaseException:
                self.t.undo(tx.undo)
                self.t.reindex(tx.undo)
                raise
            finally:
                self._tx = None
            self.t.shrink()
            if len(self.t.history) > tx.undo.history_len:
                with self._committed:
                    self._committed.notify_all()

    def _reconcile(self, tx: Tx, shape: Shape) -> bool:
        self.t.shapes[shape.name] = tuple(
            dict.fromkeys(self.t.shapes.get(shape.name, ()) + shape.order)
        )
        if self.t.deps_seen.get(shape.name) == dict(shape.deps):
            return False
        assert isinstance(tx, MemoryTx)
        for item_id in self.t.items.get(shape.name, {}):
            tx.insert_stage_rows(shape.name, [(item_id, s, False) for s in shape.order])
            states = tx.stage_states(shape.name, [item_id])[item_id]
            for s in shape.order:
                row = self.t.stages[(shape.name, item_id, s)]
                if row.state == PENDING:
                    tx._row((shape.name, item_id, s))
                    row.ready = all(states.get(d, (PENDING, False))[0] in DONE_STATES
                                    for d in shape.deps[s])
                    if row.ready:
                        self.t.push(shape.name, row, (shape.name, item_id, s))
        self.t.deps_seen[shape.name] = dict(shape.deps)
        return True

    def submit(self, shape: Shape, items: Sequence[tuple[str, str]], actor: str,
               priority: int | None = None) -> list[str]:
        if shape.name not in self.t.shapes:
            self.prepare(shape)
        return super().submit(shape, items, actor, priority)

    # -- runners -----------------------------------------------------------
    def register_runner(self, owner: str, host: str, pid: int, lease: float) -> None:
        with self._lock:
            self.t.runners[owner] = (host, pid, time.time() + lease)
            self._registered[owner] = (host, pid)

    def heartbeat(self, owner: str, lease: float) -> None:
        with self._lock:
            known = self._registered.get(owner)
            if known is not None:  # registered again if it was taken for dead and forgotten
                self.t.runners[owner] = (*known, time.time() + lease)

    def unregister_runner(self, owner: str) -> None:
        with self._lock:
            self.t.runners.pop(owner, None)
            self._registered.pop(owner, None)

    # -- reads -------------------------------------------------------------
    def outlook(self, shape: Shape, only: Sequence[str] | None = None,
                stages: Sequence[str] | None = None) -> Outlook:
        """Ready and running rows, read from the ready heap and the running index
        (what ``claim`` and ``recover`` see), not from every row."""
        with self._lock:
            wanted = set(shape.order)
            claimable = wanted if stages is None else set(stages)
            items = set(only) if only is not None else None
            rows = self.t.stages
            ready = set()
            for row_id, key in self.t.ready.get(shape.name, ()):
                r = rows.get(key)
                if (r is not None and r.rank == row_id and r.state == PENDING and r.ready
                        and key[2] in claimable and (items is None or key[1] in items)):
                    ready.add(key)
            running = sum(1 for key in self.t.running.get(shape.name, ())
                          if key[2] in wanted and (items is None or key[1] in items))
            return Outlook(len(ready), running)

    def stage_records(self, shape: Shape, item_id: str) -> list[StageRecord]:
        with self._lock:
            if item_id not in self.t.items.get(shape.name, {}):
                return []
            return [
                StageRecord(item_id, s, r.state, r.ready, r.attempt, r.output, r.error,
                            r.review, r.updated_at, *(r.stamp or (None, None)))
                for s in shape.order
                if (r := self.t.stages.get((shape.name, item_id, s))) is not None
            ]

    def item_version(self, shape: Shape, item_id: str) -> str | None:
        """The pipeline version an item was recorded at (None: without one)."""
        with self._lock:
            item = self.t.items.get(shape.name, {}).get(item_id)
            return item.version if item is not None else None

    def item_data(self, shape: Shape, item_id: str) -> tuple[str, float]:
        with self._lock:
            item = self.t.items.get(shape.name, {}).get(item_id)
            if item is None:
                raise ItemNotFoundError(item_id, shape.name)
            return item.data, item.submitted_at

    def find_items(self, shape: Shape, flt: Filter, limit: int | None = None,
                   offset: int = 0) -> list[Match]:
        with self._lock:
            if flt.empty:
                items = sorted(self.t.items.get(shape.name, {}).items(), key=lambda kv: kv[1].id)
                return page([Match(i, None, it.state, 0, None, None, it.submitted_at)
                             for i, it in items], limit, offset)
            wanted = set(shape.order)
            rows = [
                (r.updated_at if flt.by_time else 0.0, r.id,
                 Match(k[1], k[2], r.state, r.attempt, r.error, r.review, r.updated_at))
                for k, r in self.t.stages.items()
                if k[0] == shape.name and k[2] in wanted
                and passes(flt, k[2], r.state, r.error, r.updated_at)
            ]
            return first_per_item(rows, limit, offset)

    def subtask_records(self, shape: Shape, item_id: str) -> list[SubRecord]:
        """Every subtask row of one item."""
        with self._lock:
            out: list[SubRecord] = []
            for stage in shape.order:
                subs = self.t.subtasks.get((shape.name, item_id, stage), {})
                out += [SubRecord(stage, n, r.state, r.attempt, r.output, r.error)
                        for n, r in sorted(subs.items(), key=lambda kv: kv[1].id)]
            return out

    def stored_item_states(self, shape: Shape, item_ids: Iterable[str] | None
                           ) -> dict[str, str]:
        with self._lock:
            items = self.t.items.get(shape.name, {})
            ids = items if item_ids is None else [i for i in item_ids if i in items]
            return {i: items[i].state for i in ids}

    def items_in_item_state(self, shape: Shape, state: str, limit: int | None,
                            offset: int = 0) -> list[str]:
        with self._lock:
            items = self.t.items.get(shape.name, {})
            ids = sorted((it.id, i) for i, it in items.items() if it.state == state)
        return page([i for _, i in ids], limit, offset)

    def settled_item_counts(self, shape: Shape) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for item in self.t.items.get(shape.name, {}).values():
                out[item.state] = out.get(item.state, 0) + 1
            return out

    def counts(self, shape: Shape) -> dict[str, dict[str, int]]:
        with self._lock:
            out: dict[str, dict[str, int]] = {s: {} for s in shape.order}
            items = self.t.items.get(shape.name, {})
            for (p, i, s), r in self.t.stages.items():
                if p == shape.name and s in out:
                    state = r.state
                    if state == PENDING and (item := items.get(i)) and item.state == CANCELLED:
                        state = CANCELLED  # as the SQL stores count it (store/counts.py)
                    out[s][state] = out[s].get(state, 0) + 1
            return out

    def history(self, shape: Shape, item_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"seq": seq, "at": at, "item_id": r.item_id, "stage": r.stage,
                 "subtask": r.subtask, "state": r.state, "attempt": r.attempt, "actor": r.actor,
                 "error": r.error, "traceback": r.traceback, "details": r.details}
                for seq, _, at, r in (self.t.history[n] for n in
                                      self.t.item_history.get((shape.name, item_id), ()))
            ]

    def events(self, shape: Shape, since: int, limit: int,
               item_id: str | None = None) -> list[dict[str, Any]]:
        """History rows after id ``since``, oldest first: the event feed."""
        with self._lock:
            history = self.t.history
            if item_id is not None:  # that item's rows only, through their index
                mine = self.t.item_history.get((shape.name, item_id), [])
                rows: Iterable[tuple[int, str, float, HistoryRow]] = (
                    history[n] for n in itertools.islice(
                        mine, bisect.bisect_right(mine, since, key=lambda n: history[n][0]), None))
            else:
                rows = itertools.islice(
                    history, bisect.bisect_right(history, since, key=lambda h: h[0]), None)
            out = []
            for seq, p, at, r in rows:
                if p == shape.name and (item_id is None or r.item_id == item_id):
                    out.append({"seq": seq, "at": at, "item_id": r.item_id, "stage": r.stage,
                                "subtask": r.subtask, "state": r.state, "attempt": r.attempt,
                                "actor": r.actor, "error": r.error, "details": r.details})
                    if len(out) >= limit:
                        break
            return out

    def last_event_id(self, shape: Shape) -> int:
        """The id of the pipeline's newest event (0 when none)."""
        with self._lock:
            return next((seq for seq, p, _, _ in reversed(self.t.history) if p == shape.name), 0)

    def control(self, shape: Shape, since: int = 0,
                kinds: Sequence[str] | None = None) -> list[ControlRow]:
        """Pauses, resumes and cancellations after id ``since``, oldest first."""
        with self._lock:
            return self.t.control_rows(shape.name, since, kinds)

    def wait_for_events(self, shape: Shape, timeout: float) -> None:
        """Sleep until this store commits (or ``timeout`` seconds pass)."""
        with self._committed:
            self._committed.wait(timeout)
    # -- what plan reads (docs/changes.md) ---------------------------------------
    def result_rows(self, shape: Shape) -> list[ResultRow]:
        """Every stage row of the pipeline (removed stages too), for ``plan``."""
        with self._lock:
            return [(k[1], k[2], r.state, r.stamp[0] if r.stamp else None)
                    for k, r in self.t.stages.items() if k[0] == shape.name]

    def definitions(self, shape: Shape) -> dict[tuple[str, str], str]:
        """(stage, fingerprint) -> definition JSON, as recorded by runners."""
        with self._lock:
            return dict(self.t.definitions.get(shape.name, {}))

    def item_versions(self, shape: Shape) -> list[tuple[str, str | None, str, str]]:
        """(item_id, version, data, recorded item state) of every item, oldest first."""
        with self._lock:
            items = self.t.items.get(shape.name, {})
            return [(i, it.version, it.data, it.state)
                    for i, it in sorted(items.items(), key=lambda kv: kv[1].id)]
    def stage_metrics(self, shape: Shape, *, window: float, sample: int) -> dict[str, StageMetrics]:
        """Per stage: durations, failure and retry rates, throughput, waiting reviews."""
        with self._lock:
            return memory_stage_metrics(self.t, shape, now=time.time(), window=window, sample=sample)

    def _all_stage_rows(self, shape: Shape) -> Iterable[tuple[str, str, str, bool]]:
        with self._lock:
            return [(k[1], k[2], r.state, r.ready) for k, r in self.t.stages.items()
                    if k[0] == shape.name and k[2] in shape.order]

    def dump(self) -> str:
        """Every row as JSON text; two equal dumps mean an unchanged store."""
        with self._lock:
            return json.dumps({
                "items": {p: {i: attrs.asdict(v) for i, v in d.items()} for p, d in self.t.items.items()},
                "stages": {"|".join(k): attrs.asdict(v) for k, v in self.t.stages.items()},
                "history": [(s, p, a, r._asdict()) for s, p, a, r in self.t.history],
                "subtasks": {"|".join(k): {n: attrs.asdict(v) for n, v in d.items()}
                             for k, d in self.t.subtasks.items()},
            }, sort_keys=True)

    def close(self) -> None:
        """Nothing to release."""
