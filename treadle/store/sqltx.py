"""``SqlTx``: the :class:`Tx` primitives as prepared SQL, one connection's transaction.

Written once for SQLite and PostgreSQL; what differs (placeholders, the row
count of the last statement, batched statements, row locks) comes from the
store as a :class:`Dialect`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from ..errors import ItemNotFoundError
from . import counts
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


class Dialect(Protocol):
    """What :class:`SqlTx` needs of its store (``SqlStore`` and its subclasses)."""

    _skip_locked: str  # appended to the claim's sub-select (PostgreSQL: FOR UPDATE SKIP LOCKED)
    _lock_rows: bool  # lock item rows before reading sibling states (concurrent writers)
    _insert_returning: Any  # (cur, sql, rows) -> inserted ids, or None
    _apply_batch: Any  # (tx, pipeline, owner, transitions) -> accepted flags, or None
    _apply_sub_batch: Any  # (tx, pipeline, owner, results) -> accepted flags, or None
    _set_state_batch: Any  # (tx, pipeline, rows, state, from_states, ...) -> rows moved, or None
    _cas_batch: Any  # (tx, pipeline, expect, state, rows) -> moved flags, or None
    _set_ready_batch: Any  # (tx, pipeline, rows) -> None, or None
    _claim_rows_batch: Any  # (tx, pipeline, owner, rows, min_priority) -> claimed, or None

    @property
    def _sql(self) -> Callable[[str], str]: ...
    def _now(self, cur: Any) -> float: ...
    def _before_history(self, tx: Any, pipelines: Sequence[str]) -> None: ...
    def _changes(self, cur: Any) -> int: ...
    def _executemany(self, cur: Any, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...
    def _insert_many(self, cur: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


_CHUNK = 400  # ids per IN (...) list: far below every database's parameter limit


def chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def marks(n: int) -> str:
    """``?,?,...``: ``n`` placeholders."""
    return ",".join("?" * n)


class SqlTx(Tx):
    """Tx primitives as SQL over one connection's open transaction."""

    def __init__(self, store: Dialect, cur: Any) -> None:
        self.store = store
        self.cur = cur
        self.sql = store._sql
        self.now = store._now(cur)
        # History rows are written at the end of the transaction, together (see ``flush``).
        self.history: list[tuple[Any, ...]] = []
        self.control: list[tuple[Any, ...]] = []
        self.pipelines: set[str] = set()
        self.tally = counts.Tally()  # stage counter changes, written at flush

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self.cur.execute(self.sql(sql), params)
        return self.cur

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        if isinstance(rows, (list, tuple)) and not rows:
            return
        self.store._executemany(self.cur, self.sql(sql), rows)

    def _inserts(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """``INSERT ... VALUES (?,...)`` of ``rows``, in their order (the store's fastest way)."""
        if rows:
            self.store._insert_many(self.cur, self.sql(sql), rows)

    def insert_items(self, pipeline: str, rows: Sequence[tuple[str, str]],
                     version: str | None = None) -> list[str]:
        if self.store._insert_returning is not None:
            first: dict[str, tuple[Any, ...]] = {}
            for item_id, data in rows:  # the first of repeated ids wins
                first.setdefault(item_id, (pipeline, item_id, data, PENDING, self.now, self.now,
                                           version))
            inserted: list[str] = self.store._insert_returning(
                self.cur, "INSERT INTO treadle_item (pipeline, item_id, data, state, submitted_at, "
                "updated_at, version) VALUES %s ON CONFLICT (pipeline, item_id) DO NOTHING "
                "RETURNING item_id", list(first.values()))
            return inserted
        known: set[str] = set()
        ids = list(dict.fromkeys(i for i, _ in rows))
        for chunk in chunks(ids):
            known.update(r[0] for r in self._exec(
                f"SELECT item_id FROM treadle_item WHERE pipeline=? AND item_id IN ({marks(len(chunk))})",
                (pipeline, *chunk)))
        new, seen = [], set(known)
        fresh = []
        for item_id, data in rows:
            if item_id not in seen:
                seen.add(item_id)
                new.append(item_id)
                fresh.append((pipeline, item_id, data, PENDING, self.now, self.now, version))
        self._many("INSERT INTO treadle_item (pipeline, item_id, data, state, submitted_at, updated_at, "
                   "version) VALUES (?,?,?,?,?,?,?)", fresh)
        return new

    def insert_stage_rows(self, pipeline: str, rows: Iterable[tuple[str, str, bool]]) -> None:
        # the rows of items inserted by this transaction (submit, spawn): all new
        added: dict[str, int] = {}

        def values() -> Iterator[tuple[Any, ...]]:
            for i, s, r in rows:
                added[s] = added.get(s, 0) + 1
                yield (pipeline, i, s, 1 if r else 0, self.now)

        self._inserts(
            "INSERT INTO treadle_stage (pipeline, item_id, stage, state, ready, attempt, "
            "not_before, updated_at) VALUES (?,?,?,'pending',?,0,0,?) "
            "ON CONFLICT (pipeline, item_id, stage) DO NOTHING", list(values()))
        for stage, n in added.items():
            self.tally.add(pipeline, stage, PENDING, n)

    def lock_stage_rows(self, pipeline: str, item_id: str) -> None:
        if self.store._lock_rows:
            self._exec("SELECT 1 FROM treadle_stage WHERE pipeline=? AND item_id=? ORDER BY id FOR UPDATE",
                       (pipeline, item_id)).fetchall()

    def lock_items(self, pipeline: str, item_ids: Iterable[str]) -> None:
        if not self.store._lock_rows:
            return  # SQLite: BEGIN IMMEDIATE already serialises writers
        ids = sorted(item_ids)
        for chunk in chunks(ids):
            self._exec(f"SELECT 1 FROM treadle_item WHERE pipeline=? AND item_id IN ({marks(len(chunk))}) "
                       # "C": byte order, the order of Python's sorted() above and of
                       # every other locker, whatever the database's collation
                       'ORDER BY item_id COLLATE "C" FOR UPDATE', (pipeline, *chunk)).fetchall()

    def stage_states(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, dict[str, tuple[str, bool]]]:
        out: dict[str, dict[str, tuple[str, bool]]] = {}
        ids = list(item_ids)
        for chunk in chunks(ids):
            for item_id, stage, state, ready in self._exec(
                "SELECT item_id, stage, state, ready FROM treadle_stage "
                f"WHERE pipeline=? AND item_id IN ({marks(len(chunk))})", (pipeline, *chunk)):
                out.setdefault(item_id, {})[stage] = (state, bool(ready))
        return out

    def apply(self, pipeline: str, owner: str, transitions: Sequence[Transition],
              stamps: Mapping[str, tuple[str, str | None]] | None = None) -> list[bool]:
        flags = self._apply(pipeline, owner, transitions, stamps)
        move = self.tally.move
        for t, ok in zip(transitions, flags):
            if ok:
                move(pipeline, t.stage, RUNNING, t.state)
        return flags

    def _apply(self, pipeline: str, owner: str, transitions: Sequence[Transition],
               stamps: Mapping[str, tuple[str, str | None]] | None) -> list[bool]:
        if self.store._apply_batch is not None and len(transitions) > 1:
            batch: list[bool] = self.store._apply_batch(self, pipeline, owner, transitions, stamps)
            return batch
        sql = self.sql(
            "UPDATE treadle_stage SET state=?, output=CASE WHEN ? THEN ? ELSE output END, "
            "error=?, review=COALESCE(?, review), owner=NULL, ready=?, not_before=?, updated_at=?, "
            "fingerprint=COALESCE(?, fingerprint), version=COALESCE(?, version) "
            "WHERE pipeline=? AND item_id=? AND stage=? AND owner=? AND attempt=? AND state='running'"
        )
        changes = self.store._changes
        cur = self.cur
        flags = []
        none: tuple[str | None, str | None] = (None, None)
        table: Mapping[str, tuple[str | None, str | None]] = stamps if stamps is not None else {}
        stamp_of = table.get
        for t in transitions:
            set_output = t.output is not None or t.state in ("completed", "skipped")
            ready = 1 if t.state == PENDING else 0
            fp, version = stamp_of(t.stage, none)
            cur.execute(sql, (t.state, set_output, t.output, t.error, t.review, ready,
                              self.now + t.delay, self.now, fp, version,
                              pipeline, t.item_id, t.stage, owner, t.attempt))
            flags.append(changes(cur) == 1)
        return flags

    def record_definitions(self, pipeline: str, rows: Sequence[tuple[str, str, str]]) -> None:
        self._many("INSERT INTO treadle_definition (pipeline, stage, fingerprint, definition, seen_at) "
                   "VALUES (?,?,?,?,?) ON CONFLICT (pipeline, stage, fingerprint) DO NOTHING",
                   [(pipeline, s, fp, d, self.now) for s, fp, d in rows])

    def items_at_version(self, pipeline: str, version: str | None,
                         limit: int) -> list[tuple[str, str]]:
        cond = "version IS NULL" if version is None else "version=?"
        return [(r[0], r[1]) for r in self._exec(
            f"SELECT item_id, data FROM treadle_item WHERE pipeline=? AND {cond} ORDER BY id "
            f"LIMIT {int(limit)}", (pipeline, *(() if version is None else (version,))))]

    def migrate_item(self, pipeline: str, item_id: str, expect: str | None, version: str,
                     data: str) -> bool:
        cond = "version IS NULL" if expect is None else "version=?"
        self._exec(f"UPDATE treadle_item SET data=?, version=? WHERE pipeline=? AND item_id=? "
                   f"AND {cond}", (data, version, pipeline, item_id,
                                   *(() if expect is None else (expect,))))
        return bool(self.store._changes(self.cur) == 1)

    def rename_stage(self, pipeline: str, old: str, new: str) -> list[str]:
        items = [r[0] for r in self._exec(
            "SELECT o.item_id FROM treadle_stage o WHERE o.pipeline=? AND o.stage=? AND NOT EXISTS "
            "(SELECT 1 FROM treadle_stage n WHERE n.pipeline=o.pipeline AND n.item_id=o.item_id "
            "AND n.stage=? AND (n.state<>'pending' OR n.attempt>0))", (pipeline, old, new))]
        for item_id in items:
            self._exec("DELETE FROM treadle_stage WHERE pipeline=? AND item_id=? AND stage=?",
                       (pipeline, item_id, new))
            self._exec("UPDATE treadle_stage SET stage=? WHERE pipeline=? AND item_id=? AND stage=?",
                       (new, pipeline, item_id, old))
            self._exec("DELETE FROM treadle_subtask WHERE pipeline=? AND item_id=? AND stage=?",
                       (pipeline, item_id, new))
            self._exec("UPDATE treadle_subtask SET stage=? WHERE pipeline=? AND item_id=? AND stage=?",
                       (new, pipeline, item_id, old))
        if items:
            self.tally.recount.add(pipeline)  # rows moved between stages: rebuilt at flush
        return items

    def unclaim(self, pipeline: str, owner: str, keys: Sequence[tuple[str, str, int]]) -> list[bool]:
        sql = self.sql("UPDATE treadle_stage SET state='pending', ready=1, owner=NULL, attempt=attempt-1, "
                       "updated_at=? WHERE pipeline=? AND item_id=? AND stage=? AND owner=? "
                       "AND attempt=? AND state='running'")
        flags = []
        for item_id, stage, attempt in keys:
            self.cur.execute(sql, (self.now, pipeline, item_id, stage, owner, attempt))
            flags.append(self.store._changes(self.cur) == 1)
            if flags[-1]:
                self.tally.move(pipeline, stage, RUNNING, PENDING)
        return flags

    def set_ready(self, pipeline: str, rows: Sequence[tuple[str, str]]) -> None:
        if self.store._set_ready_batch is not None and len(rows) > 1:
            self.store._set_ready_batch(self, pipeline, rows)
            return
        self._many(
            "UPDATE treadle_stage SET ready=1 WHERE pipeline=? AND item_id=? AND stage=? AND state='pending'",
            [(pipeline, i, s) for i, s in rows],
        )

    def set_state(self, pipeline: str, rows: Sequence[tuple[str, str]], state: str,
                  from_states: Sequence[str], *, ready: bool, error: str | None = None,
                  clear_output: bool = False) -> list[tuple[str, str]]:
        if len(from_states) == 1:
            return self._set_state(pipeline, rows, state, from_states[0], ready=ready,
                                   error=error, clear_output=clear_output)
        # Several states to move from: each row from the state it is in now (read
        # first, locked where writers run concurrently), so the counters know it.
        now = self._states_now(pipeline, rows, from_states)
        moved: set[tuple[str, str]] = set()
        for old in from_states:
            group = [r for r in dict.fromkeys(rows) if now.get(r) == old]
            if group:
                moved.update(self._set_state(pipeline, group, state, old, ready=ready,
                                             error=error, clear_output=clear_output))
        return [r for r in dict.fromkeys(rows) if r in moved]

    def _states_now(self, pipeline: str, rows: Sequence[tuple[str, str]],
                    states: Sequence[str]) -> dict[tuple[str, str], str]:
        """The state of each of ``rows`` that is in ``states`` (locked on PostgreSQL)."""
        wanted = set(rows)
        stages = sorted({s for _, s in wanted})
        lock = ' ORDER BY item_id COLLATE "C", id FOR UPDATE' if self.store._lock_rows else ""
        out: dict[tuple[str, str], str] = {}
        for chunk in chunks(sorted({i for i, _ in wanted})):
            for item_id, stage, state in self._exec(
                    "SELECT item_id, stage, state FROM treadle_stage WHERE pipeline=? "
                    f"AND item_id IN ({marks(len(chunk))}) AND stage IN ({marks(len(stages))}) "
                    f"AND state IN ({marks(len(states))}){lock}",
                    (pipeline, *chunk, *stages, *states)).fetchall():
                if (item_id, stage) in wanted:
                    out[(item_id, stage)] = state
        return out

    def _set_state(self, pipeline: str, rows: Sequence[tuple[str, str]], state: str,
                   old: str, *, ready: bool, error: str | None,
                   clear_output: bool) -> list[tuple[str, str]]:
        """Move the rows of ``rows`` that are in ``old`` to ``state``; returns those moved."""
        if self.store._set_state_batch is not None and len(rows) > 1:
            moved: list[tuple[str, str]] = self.store._set_state_batch(
                self, pipeline, rows, state, (old,), ready=ready, error=error,
                clear_output=clear_output)
        else:
            sql = self.sql(
                "UPDATE treadle_stage SET state=?, ready=?, owner=NULL, error=?, updated_at=?"
                + (", output=NULL, review=NULL" if clear_output else "")
                + " WHERE pipeline=? AND item_id=? AND stage=? AND state=?")
            moved = []
            for item_id, stage in rows:
                self.cur.execute(sql, (state, 1 if ready else 0, error, self.now, pipeline,
                                       item_id, stage, old))
                if self.store._changes(self.cur) == 1:
                    moved.append((item_id, stage))
        for _, stage in moved:
            self.tally.move(pipeline, stage, old, state)
        return moved

    def set_item_states(self, pipeline: str, rows: Sequence[tuple[str, str]]) -> None:
        self._many("UPDATE treadle_item SET state=?, updated_at=? WHERE pipeline=? AND item_id=?",
                   [(st, self.now, pipeline, i) for i, st in rows])

    def append_history(self, pipeline: str, rows: Iterable[HistoryRow]) -> None:
        before = len(self.history)
        self.history.extend(
            (pipeline, r.item_id, r.stage, r.subtask, r.state, r.attempt, r.actor, self.now,
             r.error, r.traceback, r.details) for r in rows)
        if len(self.history) > before:
            self.pipelines.add(pipeline)

    def flush(self) -> None:
        """Write the control and history rows of this transaction: the last statements
        before COMMIT.

        The history is also the event feed, read by its ids: the store's
        ``_before_history`` hook makes those ids follow commit order (PostgreSQL
        takes a lock held until COMMIT; SQLite already has one writer at a time).
        """
        if not self.history and not self.control and not self.tally:
            return
        self.store._before_history(self, sorted(self.pipelines | self.tally.pipelines()))
        counts.flush(self)  # the stage counters, under the same locks
        if self.control:  # read by id too (engine/control.py): the same ordering applies
            control, self.control = self.control, []
            self._inserts("INSERT INTO treadle_control (pipeline, kind, target, at, actor, reason) "
                          "VALUES (?,?,?,?,?,?)", control)
        rows, self.history = self.history, []
        self._inserts(
            "INSERT INTO treadle_history (pipeline, item_id, stage, subtask, state, attempt, actor, at, "
            "error, traceback, details) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)

    def claim(self, pipeline: str, owner: str, stages: Sequence[str], limit: int,
              only: Sequence[str] | None = None) -> list[tuple[str, str, int]]:
        items = f" AND item_id IN ({marks(len(only))})" if only is not None else ""
        rows = list(self._exec(
            "UPDATE treadle_stage SET state='running', owner=?, attempt=attempt+1, updated_at=? "
            "WHERE id IN (SELECT id FROM treadle_stage WHERE pipeline=? AND state='pending' AND ready=1 "
            f"AND not_before<=? AND stage IN ({marks(len(stages))}){items} "
            "ORDER BY priority DESC, id LIMIT ?"
            f"{self.store._skip_locked}) RETURNING priority, id, item_id, stage, attempt",
            (owner, self.now, pipeline, self.now, *stages, *(only or ()), limit),
        ))
        rows.sort(key=lambda r: (-r[0], r[1]))  # RETURNING has no order: the claim's, again
        move = self.tally.move
        for r in rows:
            move(pipeline, r[3], PENDING, RUNNING)
        return [(i, s, a) for _, _, i, s, a in rows]

    def claim_rows(self, pipeline: str, owner: str, rows: Sequence[tuple[str, str]],
                   min_priority: int | None) -> list[tuple[str, str, int]]:
        claimed = self._claim_rows(pipeline, owner, rows, min_priority)
        move = self.tally.move
        for _, stage, _ in claimed:
            move(pipeline, stage, PENDING, RUNNING)
        return claimed

    def _claim_rows(self, pipeline: str, owner: str, rows: Sequence[tuple[str, str]],
                    min_priority: int | None) -> list[tuple[str, str, int]]:
        if self.store._claim_rows_batch is not None and len(rows) > 1:
            batch: list[tuple[str, str, int]] = self.store._claim_rows_batch(
                self, pipeline, owner, rows, min_priority)
            return batch
        sql = self.sql(
            "UPDATE treadle_stage SET state='running', ready=1, owner=?, attempt=attempt+1, "
            "updated_at=? WHERE pipeline=? AND item_id=? AND stage=? AND state='pending' "
            "AND not_before<=? AND priority>=? RETURNING attempt")
        cur, now = self.cur, self.now
        floor = -(2 ** 62) if min_priority is None else min_priority
        out: list[tuple[str, str, int]] = []
        for item_id, stage in rows:
            cur.execute(sql, (owner, now, pipeline, item_id, stage, now, floor))
            out.extend((item_id, stage, attempt) for (attempt,) in cur)
        return out

    def top_ready_priority(self, pipeline: str) -> int | None:
        # the claim's index (READY_INDEX) in its order: one entry read
        for (priority,) in self._exec(
                "SELECT priority FROM treadle_stage WHERE pipeline=? AND state='pending' "
                "AND ready=1 ORDER BY priority DESC, id LIMIT 1", (pipeline,)):
            return int(priority)
        return None

    # -- flow control (docs/flow-control.md) -----------------------------------
    def set_priority(self, pipeline: str, item_ids: Sequence[str], priority: int,
                     stages: Sequence[str] | None = None) -> None:
        if stages is None:
            self._many("UPDATE treadle_item SET priority=? WHERE pipeline=? AND item_id=?",
                       [(priority, pipeline, i) for i in item_ids])
        cond = "" if stages is None else f" AND stage IN ({marks(len(stages))})"
        self._many(f"UPDATE treadle_stage SET priority=? WHERE pipeline=? AND item_id=?{cond}",
                   [(priority, pipeline, i, *(stages or ())) for i in item_ids])

    def take_limits(self, pipeline: str, keys: Sequence[str], *, lock: bool = True
                    ) -> dict[str, tuple[float, float] | None]:
        keys = sorted(keys)
        locking = " FOR UPDATE" if lock and self.store._lock_rows else ""
        sql = (f"SELECT key, tokens, updated_at FROM treadle_limit WHERE pipeline=? "
               f"AND key IN ({marks(len(keys))}) ORDER BY key{locking}")
        found = {r[0]: (float(r[1]), float(r[2])) for r in self._exec(sql, (pipeline, *keys))}
        missing = [k for k in keys if k not in found]
        if not missing or not lock:
            return {k: (None if v[1] < 0 else v) for k, v in found.items()}
        # updated_at -1: not yet used (the bucket starts full)
        self._many("INSERT INTO treadle_limit (pipeline, key, tokens, updated_at) VALUES (?,?,0,-1) "
                   "ON CONFLICT (pipeline, key) DO NOTHING", [(pipeline, k) for k in missing])
        rows = {r[0]: (float(r[1]), float(r[2])) for r in self._exec(sql, (pipeline, *keys))}
        return {k: (None if v[1] < 0 else v) for k, v in rows.items()}

    def save_limits(self, pipeline: str, rows: Sequence[tuple[str, float, float]]) -> None:
        self._many("UPDATE treadle_limit SET tokens=?, updated_at=? WHERE pipeline=? AND key=?",
                   [(t, at, pipeline, k) for k, t, at in rows])

    def running_counts(self, pipeline: str, stages: Sequence[str]) -> dict[str, int]:
        counts = dict.fromkeys(stages, 0)
        # the literal state='running' is the predicate of the partial index treadle_stage_running
        for stage, n in self._exec(
                "SELECT stage, count(*) FROM treadle_stage WHERE pipeline=? AND state='running' "
                f"AND stage IN ({marks(len(stages))}) GROUP BY stage", (pipeline, *stages)):
            counts[stage] = int(n)
        return counts

    def ready_counts(self, pipeline: str, stages: Sequence[str]) -> dict[str, int]:
        counts = dict.fromkeys(stages, 0)
        for stage, n in self._exec(
                "SELECT stage, count(*) FROM treadle_stage WHERE pipeline=? AND state='pending' "
                f"AND ready=1 AND stage IN ({marks(len(stages))}) GROUP BY stage",
                (pipeline, *stages)):
            counts[stage] = int(n)
        return counts

    def items_at_priority(self, pipeline: str, at_least: int) -> list[str]:
        return [r[0] for r in self._exec(
            "SELECT item_id FROM treadle_item WHERE pipeline=? AND priority>=? "
            "ORDER BY priority DESC, id", (pipeline, at_least))]

    def item_priorities(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for chunk in chunks(list(item_ids)):
            out.update((r[0], int(r[1])) for r in self._exec(
                "SELECT item_id, priority FROM treadle_item WHERE pipeline=? "
                f"AND item_id IN ({marks(len(chunk))})", (pipeline, *chunk)))
        return out

    def items_json(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, str]:
        ids = list(item_ids)
        data: dict[str, str] = {}
        for chunk in chunks(ids):
            data.update(self._exec(
                "SELECT item_id, data FROM treadle_item WHERE pipeline=? "
                f"AND item_id IN ({marks(len(chunk))})",
                (pipeline, *chunk)))
        return data

    def completed_outputs(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, dict[str, str | None]]:
        ids = list(item_ids)
        outputs: dict[str, dict[str, str | None]] = {i: {} for i in ids}
        for chunk in chunks(ids):
            # Filter the state here, not in SQL: a state condition tempts the
            # planner into the (pipeline, stage, state) index and a long scan.
            for item_id, stage, state, output in self._exec(
                "SELECT item_id, stage, state, output FROM treadle_stage WHERE pipeline=? "
                f"AND item_id IN ({marks(len(chunk))})", (pipeline, *chunk)):
                if state == "completed":
                    outputs[item_id][stage] = output
        return outputs

    def rows(self, pipeline: str, item_id: str) -> dict[str, StageRecord]:
        return {
            r[0]: StageRecord(item_id, r[0], r[1], bool(r[2]), r[3], r[4], r[5], r[6], r[7])
            for r in self._exec(
                "SELECT stage, state, ready, attempt, output, error, review, updated_at "
                "FROM treadle_stage WHERE pipeline=? AND item_id=?", (pipeline, item_id))
        }

    def cas(self, pipeline: str, item_id: str, stage: str, expect: str, state: str, *,
            output: str | None, review: str | None, attempt: int | None = None) -> bool:
        guard = " AND attempt=?" if attempt is not None else ""
        self._exec(
            "UPDATE treadle_stage SET state=?, output=?, review=?, ready=0, owner=NULL, updated_at=? "
            f"WHERE pipeline=? AND item_id=? AND stage=? AND state=?{guard}",
            (state, output, review, self.now, pipeline, item_id, stage, expect,
             *(() if attempt is None else (attempt,))))
        if self.store._changes(self.cur) != 1:
            return False
        self.tally.move(pipeline, stage, expect, state)
        return True

    def locked_rows(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, dict[str, StageRecord]]:
        # One statement per page. Where writers run concurrently (PostgreSQL), lock
        # in the order of the item-by-item default (sorted ids; "C" collation = code
        # point order, as Python sorts); SQLite's BEGIN IMMEDIATE already excludes them.
        lock = ' ORDER BY item_id COLLATE "C", id FOR UPDATE' if self.store._lock_rows else ""
        out: dict[str, dict[str, StageRecord]] = {}
        for chunk in chunks(sorted(set(item_ids))):
            for r in self._exec(
                    "SELECT item_id, stage, state, ready, attempt, output, error, review, updated_at "
                    f"FROM treadle_stage WHERE pipeline=? AND item_id IN ({marks(len(chunk))}){lock}",
                    (pipeline, *chunk)).fetchall():
                out.setdefault(r[0], {})[r[1]] = StageRecord(
                    r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7], r[8])
        return out

    def cas_many(self, pipeline: str, expect: str, state: str,
                 rows: Sequence[tuple[str, str, int, str | None, str | None]]) -> list[bool]:
        if self.store._cas_batch is None or len(rows) < 2:
            return super().cas_many(pipeline, expect, state, rows)
        flags: list[bool] = self.store._cas_batch(self, pipeline, expect, state, rows)
        for (_, stage, _, _, _), ok in zip(rows, flags):
            if ok:
                self.tally.move(pipeline, stage, expect, state)
        return flags

    def overdue(self, pipeline: str, stage: str, before: float) -> list[str]:
        return [r[0] for r in self._exec(
            "SELECT item_id FROM treadle_stage WHERE pipeline=? AND stage=? AND state='awaiting_review' "
            "AND updated_at<=? ORDER BY updated_at, id", (pipeline, stage, before))]

    def items_in_state(self, pipeline: str, state: str, limit: int | None,
                       prefix: bool = False) -> list[str]:
        cond, value = ("state LIKE ?", state.replace("%", "") + "%") if prefix else ("state=?", state)
        lim = f" LIMIT {int(limit)}" if limit is not None else ""
        return [r[0] for r in self._exec(
            f"SELECT item_id FROM treadle_item WHERE pipeline=? AND {cond} ORDER BY id{lim}",
            (pipeline, value))]

    def item_state_of(self, pipeline: str, item_id: str) -> str | None:
        rows = list(self._exec("SELECT state FROM treadle_item WHERE pipeline=? AND item_id=?",
                               (pipeline, item_id)))
        return rows[0][0] if rows else None

    def cas_item_state(self, pipeline: str, item_id: str, expect: str, state: str) -> bool:
        self._exec("UPDATE treadle_item SET state=?, updated_at=? WHERE pipeline=? AND item_id=? AND state=?",
                   (state, self.now, pipeline, item_id, expect))
        return self.store._changes(self.cur) == 1

    def set_error(self, pipeline: str, item_id: str, stage: str, expect: str, error: str) -> bool:
        self._exec("UPDATE treadle_stage SET error=?, updated_at=? WHERE pipeline=? AND item_id=? "
                   "AND stage=? AND state=?", (error, self.now, pipeline, item_id, stage, expect))
        return self.store._changes(self.cur) == 1

    def owner_of(self, pipeline: str, item_id: str, stage: str) -> str | None:
        rows = list(self._exec("SELECT owner FROM treadle_stage WHERE pipeline=? AND item_id=? AND stage=?",
                               (pipeline, item_id, stage)))
        return rows[0][0] if rows else None

    def subtask_rows(self, pipeline: str, item_id: str, stage: str) -> dict[str, SubRecord]:
        return {r[0]: SubRecord(stage, *r) for r in self._exec(
            "SELECT name, state, attempt, output, error FROM treadle_subtask "
            "WHERE pipeline=? AND item_id=? AND stage=? ORDER BY id", (pipeline, item_id, stage))}

    def upsert_subtasks(self, pipeline: str, item_id: str, stage: str,
                        rows: Sequence[tuple[str, str, int, str | None]]) -> None:
        self._many(
            "INSERT INTO treadle_subtask (pipeline, item_id, stage, name, state, attempt, owner, updated_at) "
            "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (pipeline, item_id, stage, name) DO UPDATE SET "
            "state=excluded.state, attempt=excluded.attempt, owner=excluded.owner, "
            "updated_at=excluded.updated_at",
            [(pipeline, item_id, stage, n, st, a, o, self.now) for n, st, a, o in rows])

    def delete_subtasks(self, pipeline: str, item_id: str, stage: str, names: Sequence[str]) -> None:
        self._many("DELETE FROM treadle_subtask WHERE pipeline=? AND item_id=? AND stage=? AND name=?",
                   [(pipeline, item_id, stage, n) for n in names])

    def apply_subtasks(self, pipeline: str, owner: str, results: Sequence[SubResult]) -> list[bool]:
        if self.store._apply_sub_batch is not None and len(results) > 1:
            sub_batch: list[bool] = self.store._apply_sub_batch(self, pipeline, owner, results)
            return sub_batch
        sql = self.sql(
            "UPDATE treadle_subtask SET state=?, output=?, error=?, owner=NULL, updated_at=? "
            "WHERE pipeline=? AND item_id=? AND stage=? AND name=? AND owner=? AND attempt=? "
            "AND state='running'")
        flags = []
        for r in results:
            self.cur.execute(sql, (r.state, r.output, r.error, self.now, pipeline, r.item_id,
                                   r.stage, r.name, owner, r.attempt))
            flags.append(self.store._changes(self.cur) == 1)
        return flags

    def reset_subtasks(self, pipeline: str, keys: Sequence[tuple[str, str]]) -> None:
        self._many("UPDATE treadle_subtask SET state='pending', owner=NULL WHERE pipeline=? "
                   "AND item_id=? AND stage=? AND state='running'",
                   [(pipeline, i, s) for i, s in keys])

    def save_plans(self, pipeline: str, rows: Sequence[tuple[str, str, int, str | None]]) -> None:
        self._many(
            "INSERT INTO treadle_fanout_plan (pipeline, item_id, stage, attempt, plan, resume_at) "
            "VALUES (?,?,?,?,?,NULL) ON CONFLICT (pipeline, item_id, stage) DO UPDATE SET "
            "attempt=excluded.attempt, plan=excluded.plan, resume_at=NULL",
            [(pipeline, i, s, a, plan) for i, s, a, plan in rows])

    def resume_plans(self, pipeline: str, rows: Sequence[tuple[str, str, int]]) -> None:
        self._many(
            "UPDATE treadle_fanout_plan SET resume_at=? WHERE pipeline=? AND item_id=? AND stage=? "
            "AND (attempt=? OR resume_at=?)",
            [(a, pipeline, i, s, a, a - 1) for i, s, a in rows])

    def plans_to_resume(self, pipeline: str, rows: Sequence[tuple[str, str, int]]
                        ) -> dict[tuple[str, str], str]:
        wanted = {(i, s): a - 1 for i, s, a in rows}
        ids = sorted({i for i, _, _ in rows})
        out = {}
        for part in chunks(ids):
            for item_id, stage, resume_at, plan in self._exec(
                    "SELECT item_id, stage, resume_at, plan FROM treadle_fanout_plan WHERE "
                    f"pipeline=? AND item_id IN ({marks(len(part))}) AND resume_at IS NOT NULL "
                    "AND plan IS NOT NULL", (pipeline, *part)):
                if wanted.get((item_id, stage)) == resume_at:
                    out[(item_id, stage)] = plan
        return out

    def drop_plans(self, pipeline: str, rows: Sequence[tuple[str, str]]) -> None:
        self._many("DELETE FROM treadle_fanout_plan WHERE pipeline=? AND item_id=? AND stage=?",
                   [(pipeline, i, s) for i, s in rows])

    def runners(self) -> list[tuple[str, str, int, float]]:
        return list(self._exec("SELECT owner, host, pid, expires_at FROM treadle_runner"))

    def running_rows(self, pipeline: str) -> list[tuple[str, str, int, str | None]]:
        # the literal state='running' is the predicate of the partial index treadle_stage_running
        return list(self._exec(
            "SELECT item_id, stage, attempt, owner FROM treadle_stage WHERE pipeline=? AND state='running'",
            (pipeline,)))

    def rolling_back(self, pipeline: str) -> dict[str, str]:
        # the literal LIKE is the predicate of the partial index treadle_item_rolling_back
        return {r[0]: r[1] for r in self._exec(
            f"SELECT item_id, state FROM treadle_item WHERE pipeline=? AND state LIKE '{ROLLING_BACK}%'",
            (pipeline,)) if r[1] == ROLLING_BACK or r[1].startswith(ROLLING_BACK + ":")}

    def delete_runners(self, owners: Sequence[str]) -> None:
        self._many("DELETE FROM treadle_runner WHERE owner=?", [(o,) for o in owners])

    def find(self, pipeline: str, stages: Sequence[str], item_id: str | None,
             stage: str | None, states: Sequence[str]) -> list[tuple[str, str]]:
        where = ["pipeline=?", f"state IN ({marks(len(states))})",
                 f"stage IN ({marks(len(stages))})"]
        params: list[Any] = [pipeline, *states, *stages]
        if item_id is not None:
            where.append("item_id=?")
            params.append(item_id)
        if stage is not None:
            where.append("stage=?")
            params.append(stage)
        return [(r[0], r[1]) for r in self._exec(
            f"SELECT item_id, stage FROM treadle_stage WHERE {' AND '.join(where)} ORDER BY id", params)]

    def require_item(self, pipeline: str, item_id: str) -> None:
        if not list(self._exec("SELECT 1 FROM treadle_item WHERE pipeline=? AND item_id=?",
                               (pipeline, item_id))):
            raise ItemNotFoundError(item_id, pipeline)

    def append_control(self, pipeline: str, kind: str, targets: Sequence[str], actor: str,
                       reason: str | None) -> None:
        self.control.extend((pipeline, kind, t, self.now, actor, reason) for t in targets)
        self.pipelines.add(pipeline)

    def control_rows(self, pipeline: str, since: int, kinds: Sequence[str] | None = None
                     ) -> list[ControlRow]:
        return control_query(lambda sql, params: list(self._exec(sql, params)), pipeline, since,
                             kinds)

    def item_states(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for chunk in chunks(list(item_ids)):
            out.update(self._exec(
                "SELECT item_id, state FROM treadle_item WHERE pipeline=? "
                f"AND item_id IN ({marks(len(chunk))})", (pipeline, *chunk)))
        return out

    # -- nested pipelines ------------------------------------------------------
    def insert_links(self, rows: Sequence[tuple[str, str, str, str, str]]) -> None:
        self._many("INSERT INTO treadle_child (pipeline, item_id, stage, child_pipeline, child_id) "
                   "VALUES (?,?,?,?,?) ON CONFLICT (pipeline, item_id, stage, child_pipeline, "
                   "child_id) DO NOTHING", rows)

    def links_of(self, pipeline: str, item_id: str, stage: str | None = None
                 ) -> list[tuple[str, str, str]]:
        cond, params = (" AND stage=?", (stage,)) if stage is not None else ("", ())
        return [(r[0], r[1], r[2]) for r in self._exec(
            "SELECT stage, child_pipeline, child_id FROM treadle_child WHERE pipeline=? "
            f"AND item_id=?{cond} ORDER BY id", (pipeline, item_id, *params))]

    def parents_of(self, child_pipeline: str, child_ids: Iterable[str]
                   ) -> list[tuple[str, str, str, str]]:
        out: list[tuple[str, str, str, str]] = []
        for chunk in chunks(list(child_ids)):
            out += [(r[0], r[1], r[2], r[3]) for r in self._exec(
                "SELECT child_id, pipeline, item_id, stage FROM treadle_child WHERE "
                f"child_pipeline=? AND child_id IN ({marks(len(chunk))}) ORDER BY id",
                (child_pipeline, *chunk))]
        return out


def control_query(read: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]], pipeline: str,
                  since: int, kinds: Sequence[str] | None) -> list[ControlRow]:
    """Control rows after ``since`` through ``read`` (a transaction's or a plain read)."""
    cond = f" AND kind IN ({marks(len(kinds))})" if kinds else ""
    return [ControlRow(*r) for r in read(
        "SELECT id, kind, target, at, actor, reason FROM treadle_control "
        f"WHERE pipeline=? AND id>?{cond} ORDER BY id", (pipeline, since, *(kinds or ())))]


__all__ = ["Dialect", "SqlTx", "chunks", "control_query", "marks"]
