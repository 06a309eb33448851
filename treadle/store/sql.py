"""The peewee-backed SQL store: SQLite (through apsw) by default, PostgreSQL later.

peewee creates the tables and owns the connections (one per thread). The
write path runs hand-written, prepared statements inside explicit
transactions: ``BEGIN IMMEDIATE`` on SQLite, so a writer takes the lock up
front and waits (busy timeout) instead of failing half-way.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import peewee as pw

from .._crash import crash_point
from ..errors import ItemNotFoundError, StoreError
from . import schema
from .base import BaseStore
from .records import (
    PENDING,
    ROLLING_BACK,
    HistoryRow,
    Outlook,
    Shape,
    StageRecord,
    SubRecord,
    SubResult,
    Transition,
)
from .schema import make_models
from .tx import Tx
from .urls import mask_text, mask_url

_CHUNK = 400  # ids per IN (...) list: far below every database's parameter limit


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


_T = TypeVar("_T")


def _reset(database: Any) -> None:
    """Forget the calling thread's connection without closing it."""
    database._state.reset()


def _marks(n: int) -> str:
    return ",".join("?" * n)



class SqlTx(Tx):
    """Tx primitives as SQL over one connection's open transaction."""

    def __init__(self, store: SqlStore, cur: Any) -> None:
        self.store = store
        self.cur = cur
        self.sql = store._sql
        self.now = store._now(cur)

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self.cur.execute(self.sql(sql), params)
        return self.cur

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        if isinstance(rows, (list, tuple)) and not rows:
            return
        self.store._executemany(self.cur, self.sql(sql), rows)

    def insert_items(self, pipeline: str, rows: Sequence[tuple[str, str]]) -> list[str]:
        if self.store._insert_returning is not None:
            first: dict[str, tuple[Any, ...]] = {}
            for item_id, data in rows:  # the first of repeated ids wins
                first.setdefault(item_id, (pipeline, item_id, data, PENDING, self.now, self.now))
            inserted: list[str] = self.store._insert_returning(
                self.cur, "INSERT INTO treadle_item (pipeline, item_id, data, state, submitted_at, "
                "updated_at) VALUES %s ON CONFLICT (pipeline, item_id) DO NOTHING RETURNING item_id",
                list(first.values()))
            return inserted
        known: set[str] = set()
        ids = list(dict.fromkeys(i for i, _ in rows))
        for chunk in _chunks(ids):
            known.update(r[0] for r in self._exec(
                f"SELECT item_id FROM treadle_item WHERE pipeline=? AND item_id IN ({_marks(len(chunk))})",
                (pipeline, *chunk)))
        new, seen = [], set(known)
        fresh = []
        for item_id, data in rows:
            if item_id not in seen:
                seen.add(item_id)
                new.append(item_id)
                fresh.append((pipeline, item_id, data, PENDING, self.now, self.now))
        self._many("INSERT INTO treadle_item (pipeline, item_id, data, state, submitted_at, updated_at) "
                   "VALUES (?,?,?,?,?,?)", fresh)
        return new

    def insert_stage_rows(self, pipeline: str, rows: Iterable[tuple[str, str, bool]]) -> None:
        self._many(
            "INSERT INTO treadle_stage (pipeline, item_id, stage, state, ready, attempt, not_before, updated_at) "
            "VALUES (?,?,?,'pending',?,0,0,?) ON CONFLICT (pipeline, item_id, stage) DO NOTHING",
            ((pipeline, i, s, 1 if r else 0, self.now) for i, s, r in rows),
        )

    def lock_stage_rows(self, pipeline: str, item_id: str) -> None:
        if self.store._lock_rows:
            self._exec("SELECT 1 FROM treadle_stage WHERE pipeline=? AND item_id=? ORDER BY id FOR UPDATE",
                       (pipeline, item_id)).fetchall()

    def lock_items(self, pipeline: str, item_ids: Iterable[str]) -> None:
        if not self.store._lock_rows:
            return  # SQLite: BEGIN IMMEDIATE already serialises writers
        ids = sorted(item_ids)
        for chunk in _chunks(ids):
            self._exec(f"SELECT 1 FROM treadle_item WHERE pipeline=? AND item_id IN ({_marks(len(chunk))}) "
                       "ORDER BY item_id FOR UPDATE", (pipeline, *chunk)).fetchall()

    def stage_states(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, dict[str, tuple[str, bool]]]:
        out: dict[str, dict[str, tuple[str, bool]]] = {}
        ids = list(item_ids)
        for chunk in _chunks(ids):
            for item_id, stage, state, ready in self._exec(
                "SELECT item_id, stage, state, ready FROM treadle_stage "
                f"WHERE pipeline=? AND item_id IN ({_marks(len(chunk))})", (pipeline, *chunk)):
                out.setdefault(item_id, {})[stage] = (state, bool(ready))
        return out

    def apply(self, pipeline: str, owner: str, transitions: Sequence[Transition]) -> list[bool]:
        if self.store._apply_batch is not None and len(transitions) > 1:
            batch: list[bool] = self.store._apply_batch(self, pipeline, owner, transitions)
            return batch
        sql = self.sql(
            "UPDATE treadle_stage SET state=?, output=CASE WHEN ? THEN ? ELSE output END, "
            "error=?, review=COALESCE(?, review), owner=NULL, ready=?, not_before=?, updated_at=? "
            "WHERE pipeline=? AND item_id=? AND stage=? AND owner=? AND attempt=? AND state='running'"
        )
        changes = self.store._changes
        cur = self.cur
        flags = []
        for t in transitions:
            set_output = t.output is not None or t.state in ("completed", "skipped")
            ready = 1 if t.state == PENDING else 0
            cur.execute(sql, (t.state, set_output, t.output, t.error, t.review, ready,
                              self.now + t.delay, self.now,
                              pipeline, t.item_id, t.stage, owner, t.attempt))
            flags.append(changes(cur) == 1)
        return flags

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
        return items

    def unclaim(self, pipeline: str, owner: str, keys: Sequence[tuple[str, str, int]]) -> list[bool]:
        sql = self.sql("UPDATE treadle_stage SET state='pending', ready=1, owner=NULL, attempt=attempt-1, "
                       "updated_at=? WHERE pipeline=? AND item_id=? AND stage=? AND owner=? "
                       "AND attempt=? AND state='running'")
        flags = []
        for item_id, stage, attempt in keys:
            self.cur.execute(sql, (self.now, pipeline, item_id, stage, owner, attempt))
            flags.append(self.store._changes(self.cur) == 1)
        return flags

    def set_ready(self, pipeline: str, rows: Sequence[tuple[str, str]]) -> None:
        self._many(
            "UPDATE treadle_stage SET ready=1 WHERE pipeline=? AND item_id=? AND stage=? AND state='pending'",
            [(pipeline, i, s) for i, s in rows],
        )

    def set_state(self, pipeline: str, rows: Sequence[tuple[str, str]], state: str,
                  from_states: Sequence[str], *, ready: bool, error: str | None = None,
                  clear_output: bool = False) -> list[tuple[str, str]]:
        sql = self.sql(
            "UPDATE treadle_stage SET state=?, ready=?, owner=NULL, error=?, updated_at=?"
            + (", output=NULL, review=NULL" if clear_output else "")
            + f" WHERE pipeline=? AND item_id=? AND stage=? AND state IN ({_marks(len(from_states))})"
        )
        moved = []
        for item_id, stage in rows:
            self.cur.execute(sql, (state, 1 if ready else 0, error, self.now, pipeline, item_id,
                                   stage, *from_states))
            if self.store._changes(self.cur) == 1:
                moved.append((item_id, stage))
        return moved

    def set_item_states(self, pipeline: str, rows: Sequence[tuple[str, str]]) -> None:
        self._many("UPDATE treadle_item SET state=?, updated_at=? WHERE pipeline=? AND item_id=?",
                   [(st, self.now, pipeline, i) for i, st in rows])

    def append_history(self, pipeline: str, rows: Iterable[HistoryRow]) -> None:
        self._many(
            "INSERT INTO treadle_history (pipeline, item_id, stage, subtask, state, attempt, actor, at, "
            "error, traceback, details) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            ((pipeline, r.item_id, r.stage, r.subtask, r.state, r.attempt, r.actor, self.now,
              r.error, r.traceback, r.details) for r in rows),
        )

    def claim(self, pipeline: str, owner: str, stages: Sequence[str], limit: int,
              only: Sequence[str] | None = None) -> list[tuple[str, str, int]]:
        items = f" AND item_id IN ({_marks(len(only))})" if only is not None else ""
        rows = list(self._exec(
            "UPDATE treadle_stage SET state='running', owner=?, attempt=attempt+1, updated_at=? "
            "WHERE id IN (SELECT id FROM treadle_stage WHERE pipeline=? AND state='pending' AND ready=1 "
            f"AND not_before<=? AND stage IN ({_marks(len(stages))}){items} ORDER BY id LIMIT ?"
            f"{self.store._skip_locked}) RETURNING id, item_id, stage, attempt",
            (owner, self.now, pipeline, self.now, *stages, *(only or ()), limit),
        ))
        rows.sort()
        return [(i, s, a) for _, i, s, a in rows]

    def items_json(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, str]:
        ids = list(item_ids)
        data: dict[str, str] = {}
        for chunk in _chunks(ids):
            data.update(self._exec(
                f"SELECT item_id, data FROM treadle_item WHERE pipeline=? AND item_id IN ({_marks(len(chunk))})",
                (pipeline, *chunk)))
        return data

    def completed_outputs(self, pipeline: str, item_ids: Iterable[str]) -> dict[str, dict[str, str | None]]:
        ids = list(item_ids)
        outputs: dict[str, dict[str, str | None]] = {i: {} for i in ids}
        for chunk in _chunks(ids):
            # Filter the state here, not in SQL: a state condition tempts the
            # planner into the (pipeline, stage, state) index and a long scan.
            for item_id, stage, state, output in self._exec(
                "SELECT item_id, stage, state, output FROM treadle_stage WHERE pipeline=? "
                f"AND item_id IN ({_marks(len(chunk))})", (pipeline, *chunk)):
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
        return self.store._changes(self.cur) == 1

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
        where = ["pipeline=?", f"state IN ({_marks(len(states))})",
                 f"stage IN ({_marks(len(stages))})"]
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


class SqlStore(BaseStore):
    """The durable store. Build it with :func:`treadle.open_store`."""

    _skip_locked = ""
    _lock_rows = False  # lock item rows before reading sibling states (concurrent writers)
    _insert_returning: Any = None  # (cur, sql, rows) -> inserted ids, for concurrent submitters
    # (tx, pipeline, owner, results) -> accepted flags, in one round trip per page
    _apply_batch: Any = None
    _apply_sub_batch: Any = None

    def __init__(self, url: str, database: pw.Database) -> None:
        self.url = url
        self._database = database
        self._pid = os.getpid()
        self._local = threading.local()
        self._shape_cache: dict[str, str] = {}
        # runners registered through this store object: (host, pid), to register
        # again a runner whose row was removed while it was paused
        self._registered: dict[str, tuple[str, int]] = {}
        self._runners_lock = threading.Lock()
        self.models = make_models(database)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({mask_url(self.url)!r})"

    # -- dialect hooks -------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql

    def _now(self, cur: Any) -> float:
        raise NotImplementedError

    def _changes(self, cur: Any) -> int:
        raise NotImplementedError

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN")

    def _executemany(self, cur: Any, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        cur.executemany(sql, rows)

    # -- connections ---------------------------------------------------------
    @property
    def db(self) -> pw.Database:
        """The peewee database; after a ``fork`` the child gets fresh connections."""
        if os.getpid() != self._pid:
            self._after_fork()
        return self._database

    def _after_fork(self) -> None:
        # Never touch (or close) connections inherited from the parent: drop them.
        self._pid = os.getpid()
        _reset(self._database)
        self._local = threading.local()

    def _connection(self) -> Any:
        db: Any = self.db
        try:
            return db.connection()
        except Exception as exc:  # noqa: BLE001 - drivers raise many kinds
            raise StoreError(
                f"Cannot connect to the store {mask_url(self.url)}: "
                f"{mask_text(str(exc), self.url)}. Check the URL and that the database is reachable."
            ) from None

    @contextmanager
    def transaction(self) -> Iterator[SqlTx]:
        cur = self._retry_once(lambda: self._begin_cursor())
        try:
            yield SqlTx(self, cur)
        except BaseException:
            with contextlib.suppress(Exception):  # a dead connection rolls back by itself
                cur.execute("ROLLBACK")
            raise
        else:
            cur.execute("COMMIT")

    def is_disconnect(self, exc: BaseException) -> bool:
        """True if ``exc`` means the connection to the database was lost (retry it)."""
        return False

    def _end_read(self) -> None:
        """Hook: end the implicit read transaction a driver may hold open."""

    def _exclusive(self, tx: SqlTx) -> None:
        """Hook: serialise, until commit, schema creation and reconciliation
        between processes sharing one store (SQLite's BEGIN IMMEDIATE does)."""

    def _begin_cursor(self) -> Any:
        cur = self._connection().cursor()
        self._begin(cur)
        return cur

    def _retry_once(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn``; if the connection turns out to be dead, reconnect and run it again.

        Only for steps that changed nothing yet: a read, or BEGIN.
        """
        try:
            return fn()
        except Exception as exc:
            if not self.is_disconnect(exc):
                raise
            self._drop_connection()
            return fn()

    def _drop_connection(self) -> None:
        try:
            self._database.close()
        except Exception:  # noqa: BLE001 - closing a dead connection may fail
            _reset(self._database)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            cur = self._connection().cursor()
            cur.execute(self._sql(sql), params)
            return list(cur)

        return self._retry_once(run)

    # -- schema ------------------------------------------------------------
    def _stored_version(self, tx: SqlTx | None = None) -> int | None:
        if not self.db.table_exists("treadle_meta"):
            return None
        sql = "SELECT value FROM treadle_meta WHERE key='schema_version'"
        rows = list(tx._exec(sql)) if tx is not None else self._read(sql)
        return int(rows[0][0]) if rows else None

    def _create_schema(self) -> None:
        """Create the tables of a new store, or migrate an older one, or refuse a newer one."""
        version = self._stored_version()
        self._end_read()
        if version is not None:
            self._check_version(version)  # before writing anything
            if version == schema.SCHEMA_VERSION:
                return  # nothing to do: no DDL, no locks taken
        with self.transaction() as tx:
            self._exclusive(tx)
            version = self._stored_version(tx)  # another process may have done it meanwhile
            if version is None:
                self.db.create_tables(list(self.models.values()), safe=True)
                for sql in schema.RECOVERY_INDEXES:
                    tx._exec(sql)
                tx._exec("INSERT INTO treadle_meta (key, value) VALUES ('schema_version', ?) "
                         "ON CONFLICT (key) DO NOTHING", (str(schema.SCHEMA_VERSION),))
            else:
                self._check_version(version)
                self._migrate(tx, version)

    def _migrate(self, tx: SqlTx, version: int) -> None:
        """Apply ``schema.MIGRATIONS`` from ``version`` up, in this transaction."""
        from playhouse.migrate import SchemaMigrator  # type: ignore[import-untyped]

        migrator = SchemaMigrator.from_database(self.db)
        for target in range(version + 1, schema.SCHEMA_VERSION + 1):
            schema.MIGRATIONS[target](migrator)
            crash_point("mid-schema-migration")
            tx._exec("UPDATE treadle_meta SET value=? WHERE key='schema_version'", (str(target),))

    def _check_version(self, version: int) -> None:
        SCHEMA_VERSION = schema.SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"The store {mask_url(self.url)} was written by a newer treadle (schema "
                f"{version}; this one understands up to {SCHEMA_VERSION}). Upgrade treadle: "
                "pip install -U treadle. Nothing was changed."
            )

    def _reconcile(self, tx: Tx, shape: Shape) -> bool:
        assert isinstance(tx, SqlTx)
        fingerprint = json.dumps({s: list(shape.deps[s]) for s in shape.order}, sort_keys=True)
        key = f"shape:{shape.name}"
        rows = list(tx._exec("SELECT value FROM treadle_meta WHERE key=?", (key,)))
        if rows and rows[0][0] == fingerprint:
            return False
        self._exclusive(tx)
        rows = list(tx._exec("SELECT value FROM treadle_meta WHERE key=?", (key,)))
        if rows and rows[0][0] == fingerprint:
            return False  # another process reconciled it while we waited
        for stage in shape.order:
            tx._exec(
                "INSERT INTO treadle_stage (pipeline, item_id, stage, state, ready, attempt, not_before, updated_at) "
                "SELECT pipeline, item_id, ?, 'pending', 0, 0, 0, ? FROM treadle_item WHERE pipeline=? "
                "ON CONFLICT (pipeline, item_id, stage) DO NOTHING", (stage, tx.now, shape.name))
        for stage in shape.order:
            deps = shape.deps[stage]
            if not deps:
                tx._exec("UPDATE treadle_stage SET ready=1 WHERE pipeline=? AND stage=? AND state='pending'",
                         (shape.name, stage))
                continue
            tx._exec(
                "UPDATE treadle_stage SET ready=CASE WHEN EXISTS (SELECT 1 FROM treadle_stage d "
                "WHERE d.pipeline=treadle_stage.pipeline AND d.item_id=treadle_stage.item_id "
                f"AND d.stage IN ({_marks(len(deps))}) AND d.state NOT IN ('completed','skipped')) "
                "THEN 0 ELSE 1 END WHERE pipeline=? AND stage=? AND state='pending'",
                (*deps, shape.name, stage))
        tx._exec("INSERT INTO treadle_meta (key, value) VALUES (?, ?) "
                 "ON CONFLICT (key) DO UPDATE SET value=excluded.value", (key, fingerprint))
        return True

    # -- runners -----------------------------------------------------------
    def register_runner(self, owner: str, host: str, pid: int, lease: float) -> None:
        with self.transaction() as tx:
            tx._exec("INSERT INTO treadle_runner (owner, host, pid, started_at, expires_at) "
                     "VALUES (?,?,?,?,?) ON CONFLICT (owner) DO UPDATE SET expires_at=excluded.expires_at",
                     (owner, host, pid, tx.now, tx.now + lease))

        with self._runners_lock:
            self._registered[owner] = (host, pid)

    def heartbeat(self, owner: str, lease: float) -> None:
        with self._runners_lock:
            known = self._registered.get(owner)
        with self.transaction() as tx:
            tx._exec("UPDATE treadle_runner SET expires_at=? WHERE owner=?", (tx.now + lease, owner))
            if self._changes(tx.cur) == 0 and known is not None:
                # taken for dead and forgotten (a long pause): known again from now on
                tx._exec("INSERT INTO treadle_runner (owner, host, pid, started_at, expires_at) "
                         "VALUES (?,?,?,?,?) ON CONFLICT (owner) DO NOTHING",
                         (owner, known[0], known[1], tx.now, tx.now + lease))

    def close_thread_connection(self) -> None:
        """Close the calling thread's connection (a helper thread that is ending)."""
        try:
            self._database.close()
        except Exception:  # noqa: BLE001 - closing a dead connection may fail
            _reset(self._database)

    def unregister_runner(self, owner: str) -> None:
        with self._runners_lock:
            self._registered.pop(owner, None)
        with self.transaction() as tx:
            tx._exec("DELETE FROM treadle_runner WHERE owner=?", (owner,))

    # -- reads -------------------------------------------------------------
    def outlook(self, shape: Shape, only: Sequence[str] | None = None) -> Outlook:
        marks = _marks(len(shape.order))
        items = f" AND item_id IN ({_marks(len(only))})" if only is not None else ""
        params = (shape.name, *shape.order, *(only or ()))
        ready = self._read(
            "SELECT count(*) FROM treadle_stage WHERE pipeline=? AND state='pending' "
            f"AND ready=1 AND stage IN ({marks}){items}", params)[0][0]
        running = self._read(
            "SELECT count(*) FROM treadle_stage WHERE pipeline=? AND state='running' "
            f"AND stage IN ({marks}){items}", params)[0][0]
        return Outlook(ready, running)

    def stage_records(self, shape: Shape, item_id: str) -> list[StageRecord]:
        rows = self._read(
            "SELECT stage, state, ready, attempt, output, error, review, updated_at FROM treadle_stage "
            "WHERE pipeline=? AND item_id=?", (shape.name, item_id))
        by_stage = {r[0]: r for r in rows}
        return [
            StageRecord(item_id, s, r[1], bool(r[2]), r[3], r[4], r[5], r[6], r[7])
            for s in shape.order if (r := by_stage.get(s)) is not None
        ]

    def item_data(self, shape: Shape, item_id: str) -> tuple[str, float]:
        rows = self._read("SELECT data, submitted_at FROM treadle_item WHERE pipeline=? AND item_id=?",
                          (shape.name, item_id))
        if not rows:
            raise ItemNotFoundError(item_id, shape.name)
        return rows[0][0], rows[0][1]

    def item_ids(self, shape: Shape, stage: str | None, state: str | None,
                 limit: int | None) -> list[str]:
        lim = f" LIMIT {int(limit)}" if limit is not None else ""
        if stage is None and state is None:
            return [r[0] for r in self._read(
                f"SELECT item_id FROM treadle_item WHERE pipeline=? ORDER BY id{lim}", (shape.name,))]
        if state is None:  # every state of one stage: all items, in submission order
            return [r[0] for r in self._read(
                f"SELECT item_id FROM treadle_stage WHERE pipeline=? AND stage=? ORDER BY id{lim}",
                (shape.name, stage))]
        # One indexed, ordered query per stage (pipeline, stage, state, updated_at),
        # merged here: never a scan of the whole table.
        rows: list[tuple[float, int, str]] = []
        for name in ([stage] if stage is not None else shape.order):
            rows.extend((r[1], r[2], r[0]) for r in self._read(
                "SELECT item_id, updated_at, id FROM treadle_stage WHERE pipeline=? AND stage=? "
                f"AND state=? ORDER BY updated_at, id{lim}", (shape.name, name, state)))
        rows.sort()
        ids = list(dict.fromkeys(i for _, _, i in rows))
        return ids[:limit] if limit is not None else ids

    def subtask_records(self, shape: Shape, item_id: str) -> list[SubRecord]:
        """Every subtask row of one item (one read, no write lock)."""
        wanted = set(shape.order)
        return [SubRecord(*r) for r in self._read(
            "SELECT stage, name, state, attempt, output, error FROM treadle_subtask "
            "WHERE pipeline=? AND item_id=? ORDER BY id", (shape.name, item_id)) if r[0] in wanted]

    def settled_item_counts(self, shape: Shape) -> dict[str, int]:
        return dict(self._read(
            "SELECT state, count(*) FROM treadle_item WHERE pipeline=? GROUP BY state", (shape.name,)))

    def counts(self, shape: Shape) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {s: {} for s in shape.order}
        for stage, state, n in self._read(
            "SELECT stage, state, count(*) FROM treadle_stage WHERE pipeline=? GROUP BY stage, state",
            (shape.name,)):
            if stage in out:
                out[stage][state] = n
        return out

    def history(self, shape: Shape, item_id: str) -> list[dict[str, Any]]:
        keys = ("seq", "at", "item_id", "stage", "subtask", "state", "attempt", "actor", "error",
                "traceback", "details")
        return [dict(zip(keys, r)) for r in self._read(
            "SELECT id, at, item_id, stage, subtask, state, attempt, actor, error, traceback, details "
            "FROM treadle_history WHERE pipeline=? AND item_id=? ORDER BY id", (shape.name, item_id))]

    def _all_stage_rows(self, shape: Shape) -> Iterable[tuple[str, str, str, bool]]:
        return self._read(
            f"SELECT item_id, stage, state, ready FROM treadle_stage WHERE pipeline=? "
            f"AND stage IN ({_marks(len(shape.order))})", (shape.name, *shape.order))

    def dump(self) -> str:
        """Every row of every treadle table as JSON text (to compare store states)."""
        out = {}
        for table in ("treadle_meta", "treadle_item", "treadle_stage", "treadle_subtask",
                      "treadle_history"):
            out[table] = [list(r) for r in self._read(f"SELECT * FROM {table} ORDER BY 1")]
        return json.dumps(out, sort_keys=True, default=str)

    def close(self) -> None:
        """Close this thread's connection."""
        if os.getpid() == self._pid and not self._database.is_closed():
            self._database.close()
