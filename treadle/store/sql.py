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
from ..metrics import StageMetrics
from . import counts, schema
from .base import BaseStore
from .metrics import sql_stage_metrics
from .query import Filter, Match, first_per_item, like_pattern, page, window
from .records import (
    ControlRow,
    Outlook,
    ResultRow,
    Shape,
    StageRecord,
    StatusRows,
    SubRecord,
)
from .schema import make_models
from .sqltx import SqlTx, chunks, control_query, marks
from .tx import Tx
from .urls import mask_text, mask_url

_T = TypeVar("_T")
_EVENT_KEYS = ("seq", "at", "item_id", "stage", "subtask", "state", "attempt", "actor", "error",
               "details")


def _reset(database: Any) -> None:
    """Forget the calling thread's connection without closing it."""
    database._state.reset()


class SqlStore(BaseStore):
    """The durable store. Build it with :func:`treadle.open_store`."""

    _skip_locked = ""
    _lock_rows = False  # lock item rows before reading sibling states (concurrent writers)
    _insert_returning: Any = None  # (cur, sql, rows) -> inserted ids, for concurrent submitters
    # (tx, pipeline, owner, results) -> accepted flags, in one round trip per page
    _apply_batch: Any = None
    _apply_sub_batch: Any = None
    # (tx, pipeline, rows, state, from_states, *, ready, error, clear_output) -> rows moved
    _set_state_batch: Any = None
    # (tx, pipeline, expect, state, rows) -> moved flags (review decisions in bulk)
    _cas_batch: Any = None
    # (tx, pipeline, rows): successors' ready flags in one round trip per page
    _set_ready_batch: Any = None
    _claim_rows_batch: Any = None

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

    def _insert_many(self, cur: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Rows for an ``INSERT ... VALUES (...)`` (rows inserted in order): SQLite's
        prepared statement per row is as fast as anything (PostgreSQL overrides)."""
        self._executemany(cur, sql, rows)

    def _before_history(self, tx: SqlTx, pipelines: Sequence[str]) -> None:
        """Hook: just before a transaction writes its history rows (its last write)."""

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
            tx = SqlTx(self, cur)
            yield tx
            tx.flush()
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
        from playhouse.migrate import SchemaMigrator

        migrator = SchemaMigrator.from_database(self.db)
        for target in range(version + 1, schema.SCHEMA_VERSION + 1):
            step = schema.MIGRATIONS.get(target)
            if step is not None:  # a version without a step changes no table
                step(migrator)
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
                "INSERT INTO treadle_stage (pipeline, item_id, stage, state, ready, attempt, "
                "not_before, updated_at) SELECT pipeline, item_id, ?, 'pending', 0, 0, 0, ? "
                "FROM treadle_item WHERE pipeline=? "
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
                f"AND d.stage IN ({marks(len(deps))}) AND d.state NOT IN ('completed','skipped')) "
                "THEN 0 ELSE 1 END WHERE pipeline=? AND stage=? AND state='pending'",
                (*deps, shape.name, stage))
        tx._exec("INSERT INTO treadle_meta (key, value) VALUES (?, ?) "
                 "ON CONFLICT (key) DO UPDATE SET value=excluded.value", (key, fingerprint))
        tx.tally.recount.add(shape.name)  # rows inserted by plain SQL: counted again at flush
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
    def outlook(self, shape: Shape, only: Sequence[str] | None = None,
                stages: Sequence[str] | None = None) -> Outlook:
        names = shape.order if stages is None else stages
        items = f" AND item_id IN ({marks(len(only))})" if only is not None else ""
        params = (shape.name, *shape.order, *(only or ()))
        ready = self._read(
            "SELECT count(*) FROM treadle_stage WHERE pipeline=? AND state='pending' "
            f"AND ready=1 AND stage IN ({marks(len(names))}){items}",
            (shape.name, *names, *(only or ())))[0][0] if names else 0
        stages_in = marks(len(shape.order))
        running = self._read(
            "SELECT count(*) FROM treadle_stage WHERE pipeline=? AND state='running' "
            f"AND stage IN ({stages_in}){items}", params)[0][0]
        return Outlook(ready, running)

    def stage_records(self, shape: Shape, item_id: str) -> list[StageRecord]:
        rows = self._read(
            "SELECT stage, state, ready, attempt, output, error, review, updated_at, fingerprint, "
            "version FROM treadle_stage WHERE pipeline=? AND item_id=?", (shape.name, item_id))
        by_stage = {r[0]: r for r in rows}
        return [
            StageRecord(item_id, s, r[1], bool(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], r[9])
            for s in shape.order if (r := by_stage.get(s)) is not None
        ]

    def status_rows(self, shape: Shape, item_ids: Sequence[str]) -> dict[str, StatusRows]:
        """The rows of a page of items in three statements per 400 ids (item rows,
        stage rows, subtask rows), each through the (pipeline, item_id, ...) keys."""
        wanted = set(shape.order)
        out: dict[str, StatusRows] = {}
        for chunk in chunks(list(dict.fromkeys(item_ids))):
            ids = f"item_id IN ({marks(len(chunk))})"
            params = (shape.name, *chunk)
            for item_id, submitted, version, state in self._read(
                    f"SELECT item_id, submitted_at, version, state FROM treadle_item "
                    f"WHERE pipeline=? AND {ids}", params):
                out[item_id] = StatusRows(item_id, submitted, version, state, [], [])
            stages: dict[str, dict[str, StageRecord]] = {}
            for r in self._read(
                    "SELECT item_id, stage, state, ready, attempt, output, error, review, "
                    f"updated_at, fingerprint, version FROM treadle_stage WHERE pipeline=? "
                    f"AND {ids}", params):
                stages.setdefault(r[0], {})[r[1]] = StageRecord(
                    r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7], r[8], r[9], r[10])
            for item_id, by_stage in stages.items():
                if (rows := out.get(item_id)) is not None:
                    rows.stages.extend(by_stage[s] for s in shape.order if s in by_stage)
            for r in self._read(
                    "SELECT item_id, stage, name, state, attempt, output, error FROM "
                    f"treadle_subtask WHERE pipeline=? AND {ids} ORDER BY id", params):
                if r[1] in wanted and (rows := out.get(r[0])) is not None:
                    rows.subtasks.append(SubRecord(*r[1:]))
        return out

    # -- what plan reads (docs/changes.md) ---------------------------------------
    def result_rows(self, shape: Shape) -> list[ResultRow]:
        """Every stage row of the pipeline (removed stages too), for ``plan``."""
        rows: list[ResultRow] = self._read(
            "SELECT item_id, stage, state, fingerprint FROM treadle_stage WHERE pipeline=?",
            (shape.name,))
        return rows

    def definitions(self, shape: Shape) -> dict[tuple[str, str], str]:
        """(stage, fingerprint) -> definition JSON, as recorded by runners."""
        return {(r[0], r[1]): r[2] for r in self._read(
            "SELECT stage, fingerprint, definition FROM treadle_definition WHERE pipeline=?",
            (shape.name,))}

    def item_versions(self, shape: Shape) -> list[tuple[str, str | None, str, str]]:
        """(item_id, version, data, recorded item state) of every item, oldest first."""
        return [(r[0], r[1], r[2], r[3]) for r in self._read(
            "SELECT item_id, version, data, state FROM treadle_item WHERE pipeline=? ORDER BY id",
            (shape.name,))]

    def item_version(self, shape: Shape, item_id: str) -> str | None:
        """The pipeline version an item was recorded at (None: without one)."""
        rows = self._read("SELECT version FROM treadle_item WHERE pipeline=? AND item_id=?",
                          (shape.name, item_id))
        return rows[0][0] if rows else None

    def item_data(self, shape: Shape, item_id: str) -> tuple[str, float]:
        rows = self._read("SELECT data, submitted_at FROM treadle_item WHERE pipeline=? AND item_id=?",
                          (shape.name, item_id))
        if not rows:
            raise ItemNotFoundError(item_id, shape.name)
        return rows[0][0], rows[0][1]

    def find_items(self, shape: Shape, flt: Filter, limit: int | None = None,
                   offset: int = 0) -> list[Match]:
        n = window(limit, offset)
        lim = f" LIMIT {int(n)}" if n is not None else ""
        if flt.empty:
            return page([Match(i, None, st, 0, None, None, at) for i, st, at in self._read(
                f"SELECT item_id, state, submitted_at FROM treadle_item WHERE pipeline=? ORDER BY id{lim}",
                (shape.name,))], limit, offset)
        # One indexed, ordered query per stage (pipeline, stage, state, updated_at),
        # merged in query.first_per_item: never a scan of the whole table.
        where = "pipeline=? AND stage=?"
        params: list[Any] = []
        if flt.state is not None:
            where += " AND state=?"
            params.append(flt.state)
        if flt.since is not None:
            where += " AND updated_at>=?"
            params.append(flt.since)
        if flt.error is not None:
            where += " AND lower(error) LIKE ? ESCAPE '\\'"
            params.append(like_pattern(flt.error))
        order = "updated_at, id" if flt.by_time else "id"
        found: list[tuple[float, int, Match]] = []
        for name in ([flt.stage] if flt.stage is not None else shape.order):
            for i, st, attempt, error, review, at, row_id in self._read(
                    "SELECT item_id, state, attempt, error, review, updated_at, id FROM treadle_stage "
                    f"WHERE {where} ORDER BY {order}{lim}", (shape.name, name, *params)):
                found.append((at if flt.by_time else 0.0, row_id,
                              Match(i, name, st, attempt, error, review, at)))
        return first_per_item(found, limit, offset)

    def subtask_records(self, shape: Shape, item_id: str) -> list[SubRecord]:
        """Every subtask row of one item (one read, no write lock)."""
        wanted = set(shape.order)
        return [SubRecord(*r) for r in self._read(
            "SELECT stage, name, state, attempt, output, error FROM treadle_subtask "
            "WHERE pipeline=? AND item_id=? ORDER BY id", (shape.name, item_id)) if r[0] in wanted]

    def stored_item_states(self, shape: Shape, item_ids: Iterable[str] | None
                           ) -> dict[str, str]:
        if item_ids is None:
            return dict(self._read(
                "SELECT item_id, state FROM treadle_item WHERE pipeline=? ORDER BY id", (shape.name,)))
        out: dict[str, str] = {}
        for chunk in chunks(list(item_ids)):
            out.update(self._read(
                "SELECT item_id, state FROM treadle_item WHERE pipeline=? "
                f"AND item_id IN ({marks(len(chunk))})", (shape.name, *chunk)))
        return out

    def items_in_item_state(self, shape: Shape, state: str, limit: int | None,
                            offset: int = 0) -> list[str]:
        lim = f" LIMIT {int(offset + limit)}" if limit is not None else ""
        return page([r[0] for r in self._read(
            f"SELECT item_id FROM treadle_item WHERE pipeline=? AND state=? ORDER BY id{lim}",
            (shape.name, state))], limit, offset)

    def settled_item_counts(self, shape: Shape) -> dict[str, int]:
        return dict(self._read(
            "SELECT state, count(*) FROM treadle_item WHERE pipeline=? GROUP BY state", (shape.name,)))

    def counts(self, shape: Shape) -> dict[str, dict[str, int]]:
        """Per stage, rows per state, from the counters (``store/counts.py``)."""
        return counts.read(self._read, shape.name, shape.order)

    def history(self, shape: Shape, item_id: str) -> list[dict[str, Any]]:
        keys = ("seq", "at", "item_id", "stage", "subtask", "state", "attempt", "actor", "error",
                "traceback", "details")
        return [dict(zip(keys, r)) for r in self._read(
            "SELECT id, at, item_id, stage, subtask, state, attempt, actor, error, traceback, details "
            "FROM treadle_history WHERE pipeline=? AND item_id=? ORDER BY id", (shape.name, item_id))]

    def events(self, shape: Shape, since: int, limit: int,
               item_id: str | None = None) -> list[dict[str, Any]]:
        """History rows after id ``since``, oldest first: the event feed."""
        one = " AND item_id=?" if item_id is not None else ""
        return [dict(zip(_EVENT_KEYS, r)) for r in self._read(
            "SELECT id, at, item_id, stage, subtask, state, attempt, actor, error, details "
            f"FROM treadle_history WHERE pipeline=? AND id>?{one} ORDER BY id LIMIT {int(limit)}",
            (shape.name, since, *((item_id,) if item_id is not None else ())))]

    def last_event_id(self, shape: Shape) -> int:
        """The id of the pipeline's newest event (0 when none)."""
        rows = self._read("SELECT id FROM treadle_history WHERE pipeline=? ORDER BY id DESC LIMIT 1",
                          (shape.name,))
        return int(rows[0][0]) if rows else 0

    def control(self, shape: Shape, since: int = 0,
                kinds: Sequence[str] | None = None) -> list[ControlRow]:
        """Pauses, resumes and cancellations after id ``since``, oldest first."""
        return control_query(self._read, shape.name, since, kinds)
    def stage_metrics(self, shape: Shape, *, window: float, sample: int) -> dict[str, StageMetrics]:
        """Per stage: durations, failure and retry rates, throughput, waiting reviews
        (from the newest ``sample`` history rows; see ``store/metrics.py``)."""
        return sql_stage_metrics(self, shape, window=window, sample=sample)

    def _all_stage_rows(self, shape: Shape) -> Iterable[tuple[str, str, str, bool]]:
        return self._read(
            f"SELECT item_id, stage, state, ready FROM treadle_stage WHERE pipeline=? "
            f"AND stage IN ({marks(len(shape.order))})", (shape.name, *shape.order))

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
