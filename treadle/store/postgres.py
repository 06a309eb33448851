"""The PostgreSQL store: many runner processes, on any number of machines.

PostgreSQL is the coordinator: claims are ``UPDATE ... WHERE id IN (SELECT
... FOR UPDATE SKIP LOCKED) RETURNING``, so concurrent runners never take the
same row and never wait on each other's claims; leases and heartbeats use the
database clock; joins lock the item row before reading sibling states. The
driver is psycopg2 (the ``postgres`` extra). See docs/scaling.md.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode

from ..errors import StoreError
from . import pgcopy
from .sql import SqlStore
from .urls import mask_text, mask_url, no_store

#: Seconds a session may sit idle inside a transaction before the server ends it.
IDLE_IN_TRANSACTION = 10.0

_APPLY = (
    "UPDATE treadle_stage AS s SET state=v.state, "
    "output=CASE WHEN v.set_output THEN v.output ELSE s.output END, error=v.error, "
    "review=COALESCE(v.review, s.review), owner=NULL, ready=v.ready, "
    "not_before=v.not_before::float8, updated_at=v.now::float8, "
    "fingerprint=COALESCE(v.fingerprint, s.fingerprint), version=COALESCE(v.version, s.version) "
    "FROM (VALUES %s) AS v(pipeline, owner, now, item_id, stage, attempt, state, set_output, "
    "output, error, review, ready, not_before, fingerprint, version) "
    "WHERE s.pipeline=v.pipeline AND s.item_id=v.item_id AND s.stage=v.stage "
    "AND s.owner=v.owner AND s.attempt=v.attempt AND s.state='running' "
    "RETURNING s.item_id, s.stage, s.attempt"
)
_APPLY_SUB = (
    "UPDATE treadle_subtask AS s SET state=v.state, output=v.output, error=v.error, owner=NULL, "
    "updated_at=v.now::float8 "
    "FROM (VALUES %s) AS v(pipeline, owner, now, item_id, stage, name, attempt, state, output, error) "
    "WHERE s.pipeline=v.pipeline AND s.item_id=v.item_id AND s.stage=v.stage AND s.name=v.name "
    "AND s.owner=v.owner AND s.attempt=v.attempt AND s.state='running' "
    "RETURNING s.item_id, s.stage, s.name, s.attempt"
)


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def split_schema(url: str) -> tuple[str, str | None]:
    """The URL without its ``schema=`` option, and that schema (None when absent).

    Raises :class:`StoreError` for a schema name that is not a plain SQL
    identifier (letters, digits, ``_``; at most 63 characters).
    """
    base, _, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    names = [v for k, v in pairs if k == "schema"]
    if not names:
        return url, None
    name = names[-1]
    if not _IDENTIFIER.fullmatch(name):
        raise StoreError(
            f"schema={name!r} in the store URL {mask_url(url)} is not a plain SQL identifier; "
            "use letters, digits and _ (e.g. ?schema=treadle).")
    rest = urlencode([(k, v) for k, v in pairs if k != "schema"])
    return (f"{base}?{rest}" if rest else base), name


@functools.lru_cache(maxsize=512)
def _pyformat(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresStore(SqlStore):
    """A store in a PostgreSQL database (``open_store("postgresql://...")``)."""

    _skip_locked = " FOR UPDATE SKIP LOCKED"
    _lock_rows = True

    def __init__(self, url: str, *, create: bool = True) -> None:
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            raise StoreError(
                "PostgreSQL stores need psycopg2: pip install 'treadle[postgres]'."
            ) from None
        from playhouse.db_url import parse

        libpq_url, self.schema = split_schema(url)
        try:
            params = parse(libpq_url.replace("postgres://", "postgresql://", 1), unquote_password=True)
        except Exception as exc:  # noqa: BLE001 - a malformed URL
            raise StoreError(
                f"Cannot parse the store URL {mask_url(url)}: {mask_text(str(exc), url)}.") from None
        import peewee as pw

        if self.schema is not None:
            # every connection works in that schema (created below if missing)
            params["options"] = f"{params.get('options', '')} -c search_path={self.schema}".strip()

        # A runner paused inside a transaction (SIGSTOP, a VM freeze) must not hold
        # row locks for ever: the server ends such a session after a while, its
        # locks go, and the runner reconnects (its claims having lapsed meanwhile).
        params["options"] = (f"{params.get('options', '')} -c idle_in_transaction_session_timeout="
                             f"{int(IDLE_IN_TRANSACTION * 1000)}").strip()
        database = pw.PostgresqlDatabase(params.pop("database"), **params)
        super().__init__(url, database)
        try:
            if not create and self._stored_version() is None:
                where = f"schema {self.schema!r} of the database" if self.schema else "the database"
                raise no_store(url, f"{where} has no treadle tables")
            self._create_schema()
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - psycopg2 errors
            detail = " ".join(mask_text(str(exc), url).split()).rstrip(".?")
            raise StoreError(
                f"Cannot use the store {mask_url(url)}: {detail}. Check the URL, and that "
                "PostgreSQL is running and accepts connections from this machine."
            ) from None

    def _create_schema(self) -> None:
        if self.schema is not None:
            with self.transaction() as tx:
                self._exclusive(tx)  # CREATE SCHEMA IF NOT EXISTS races between sessions
                tx._exec(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        super()._create_schema()

    ANALYZE_AFTER = 500  # items in one submission that make statistics worth refreshing

    def submit(self, shape: Any, items: Sequence[tuple[str, str]], actor: str,
               priority: int | None = None) -> list[str]:
        new = super().submit(shape, items, actor, priority)
        if len(new) >= self.ANALYZE_AFTER:
            # Without statistics (a new store, or autovacuum off) the planner may pick a
            # scan for the per-row updates; give it numbers after a large submission.
            self._read_write("ANALYZE treadle_stage")
            self._read_write("ANALYZE treadle_item")
        return new

    def _read_write(self, sql: str) -> None:
        cur = self._connection().cursor()
        cur.execute(sql)

    def _sql(self, sql: str) -> str:
        return _pyformat(sql)

    def _now(self, cur: Any) -> float:
        cur.execute("SELECT extract(epoch from clock_timestamp())::float8")
        return float(cur.fetchone()[0])

    def _changes(self, cur: Any) -> int:
        return int(cur.rowcount)

    def _executemany(self, cur: Any, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        from psycopg2.extras import execute_batch

        execute_batch(cur, sql, list(rows), page_size=200)

    def _insert_many(self, cur: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """``COPY`` for plain rows, else one multi-row ``INSERT`` per page (pgcopy.py)."""
        pgcopy.insert_many(cur, sql, rows)

    def is_disconnect(self, exc: BaseException) -> bool:
        import psycopg2

        return isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) or (
            isinstance(exc, StoreError) and "connect" in str(exc).lower())

    def _exclusive(self, tx: Any) -> None:
        # CREATE TABLE IF NOT EXISTS and bulk reconciliation race between
        # sessions: one at a time, until the transaction ends.
        tx._exec("SELECT pg_advisory_xact_lock(7465656164)")  # "treadle"

    #: First key of the advisory locks that order each pipeline's history (below).
    FEED_LOCK = 74656164
    #: The channel a commit notifies (payload: the pipeline) for followers and idle runners.
    CHANNEL = "treadle_feed"

    def _before_history(self, tx: Any, pipelines: Sequence[str]) -> None:
        """Make history ids follow commit order, per pipeline, and notify followers.

        A sequence hands out ids when rows are inserted, not when they commit:
        two transactions could commit out of id order, and a reader of the feed
        that moved its cursor past the later one would never see the earlier.
        Each transaction therefore writes its history last, under a lock on its
        pipeline held until COMMIT: ids then commit in order. The lock holder
        only inserts and commits, so it never waits for another transaction's
        rows (no deadlock); what it costs is that those last steps of the
        commits of one pipeline's runners take turns.
        """
        for name in pipelines:  # sorted by the caller: one lock order everywhere
            # keyed by schema and pipeline: stores in other schemas never wait for it
            tx._exec("SELECT pg_advisory_xact_lock(?, hashtext(current_schema() || '/' || ?))",
                     (self.FEED_LOCK, name))
            tx._exec("SELECT pg_notify(?, ?)", (self.CHANNEL, name))

    def is_transient(self, exc: BaseException) -> bool:
        """A deadlock or a serialization failure: PostgreSQL rolled the transaction back."""
        return getattr(exc, "pgcode", None) in ("40P01", "40001")

    def wait_for_events(self, shape: Any, timeout: float) -> None:
        """Sleep until a commit notifies (LISTEN), at most ``timeout`` seconds.

        Each thread listens on a connection of its own, opened on first use.
        """
        import select

        conn = getattr(self._local, "listener", None)
        try:
            if conn is None or conn.closed:
                database: Any = self._database
                conn = self._local.listener = database._connect()
                conn.autocommit = True
                conn.cursor().execute(f"LISTEN {self.CHANNEL}")
            deadline = time.monotonic() + max(0.0, timeout)
            while True:  # the channel is shared: only this pipeline's commits end the wait
                left = deadline - time.monotonic()
                if left <= 0 or select.select([conn], [], [], left) == ([], [], []):
                    return
                conn.poll()
                mine = any(n.payload == shape.name for n in conn.notifies)
                conn.notifies.clear()
                if mine:
                    return
        except Exception:  # noqa: BLE001 - a lost listener: poll instead, reconnect next time
            self._local.listener = None
            super().wait_for_events(shape, timeout)

    @staticmethod
    def _apply_batch(tx: Any, pipeline: str, owner: str, transitions: Sequence[Any],
                     stamps: Mapping[str, tuple[str, str | None]] | None = None) -> list[bool]:
        """Guarded stage results as one ``UPDATE ... FROM (VALUES ...)`` per page:
        one round trip instead of one per result."""
        from psycopg2.extras import execute_values

        none: tuple[str | None, str | None] = (None, None)
        table: Mapping[str, tuple[str | None, str | None]] = stamps if stamps is not None else {}
        stamp_of = table.get
        rows = [(pipeline, owner, tx.now, t.item_id, t.stage, t.attempt, t.state,
                 t.output is not None or t.state in ("completed", "skipped"), t.output, t.error,
                 t.review, 1 if t.state == "pending" else 0, tx.now + t.delay,
                 *stamp_of(t.stage, none))
                for t in transitions]
        done = {tuple(r) for r in execute_values(tx.cur, _APPLY, rows, page_size=500, fetch=True)}
        return [(t.item_id, t.stage, t.attempt) in done for t in transitions]

    @staticmethod
    def _apply_sub_batch(tx: Any, pipeline: str, owner: str, results: Sequence[Any]) -> list[bool]:
        """Guarded subtask results in one round trip per page."""
        from psycopg2.extras import execute_values

        rows = [(pipeline, owner, tx.now, r.item_id, r.stage, r.name, r.attempt, r.state,
                 r.output, r.error) for r in results]
        done = {tuple(r) for r in execute_values(tx.cur, _APPLY_SUB, rows, page_size=500, fetch=True)}
        return [(r.item_id, r.stage, r.name, r.attempt) in done for r in results]

    @staticmethod
    def _set_state_batch(tx: Any, pipeline: str, rows: Sequence[tuple[str, str]], state: str,
                         from_states: Sequence[str], *, ready: bool, error: str | None,
                         clear_output: bool) -> list[tuple[str, str]]:
        """Rows from ``from_states`` to ``state`` in one round trip per page (a bulk
        retry or rerun), instead of one statement per row; returns those moved."""
        from psycopg2.extras import execute_values

        sql = (
            "UPDATE treadle_stage AS s SET state=v.state, ready=v.ready, owner=NULL, "
            "error=v.error, updated_at=v.now::float8"
            + (", output=NULL, review=NULL" if clear_output else "")
            + " FROM (VALUES %s) AS v(pipeline, item_id, stage, state, ready, error, now, "
            "from_states) WHERE s.pipeline=v.pipeline AND s.item_id=v.item_id AND s.stage=v.stage "
            "AND s.state = ANY(v.from_states::text[]) RETURNING s.item_id, s.stage"
        )
        states = list(from_states)
        values = [(pipeline, i, st, state, 1 if ready else 0, error, tx.now, states)
                  for i, st in dict.fromkeys(rows)]
        done = {tuple(r) for r in execute_values(tx.cur, sql, values, page_size=500, fetch=True)}
        return [r for r in dict.fromkeys(rows) if r in done]

    @staticmethod
    def _set_ready_batch(tx: Any, pipeline: str, rows: Sequence[tuple[str, str]]) -> None:
        """Mark pending (item, stage) rows ready in one ``UPDATE ... FROM (VALUES ...)``
        per page, instead of one statement per row."""
        from psycopg2.extras import execute_values

        execute_values(
            tx.cur,
            "UPDATE treadle_stage AS s SET ready=1 FROM (VALUES %s) AS v(pipeline, item_id, stage) "
            "WHERE s.pipeline=v.pipeline AND s.item_id=v.item_id AND s.stage=v.stage "
            "AND s.state='pending'",
            [(pipeline, i, st) for i, st in dict.fromkeys(rows)], page_size=500)

    @staticmethod
    def _claim_rows_batch(tx: Any, pipeline: str, owner: str, rows: Sequence[tuple[str, str]],
                          min_priority: int | None) -> list[tuple[str, str, int]]:
        """Chained claims (``Tx.claim_rows``) in one ``UPDATE ... FROM (VALUES ...)`` per page."""
        from psycopg2.extras import execute_values

        floor = -(2 ** 31) if min_priority is None else min_priority
        claimed = execute_values(
            tx.cur,
            "UPDATE treadle_stage AS s SET state='running', ready=1, owner=v.owner, "
            "attempt=s.attempt+1, updated_at=v.now::float8 "
            "FROM (VALUES %s) AS v(pipeline, item_id, stage, owner, now, floor) "
            "WHERE s.pipeline=v.pipeline AND s.item_id=v.item_id AND s.stage=v.stage "
            "AND s.state='pending' AND s.not_before<=v.now::float8 AND s.priority>=v.floor "
            "RETURNING s.item_id, s.stage, s.attempt",
            [(pipeline, i, st, owner, tx.now, floor) for i, st in dict.fromkeys(rows)],
            page_size=500, fetch=True)
        got = {(i, st): a for i, st, a in claimed}
        return [(i, st, got[(i, st)]) for i, st in dict.fromkeys(rows) if (i, st) in got]

    @staticmethod
    def _cas_batch(tx: Any, pipeline: str, expect: str, state: str,
                   rows: Sequence[tuple[str, str, int, str | None, str | None]]) -> list[bool]:
        """:meth:`Tx.cas_many` as one ``UPDATE ... FROM (VALUES ...)`` per page (bulk
        review decisions), instead of one statement per row."""
        from psycopg2.extras import execute_values

        sql = (
            "UPDATE treadle_stage AS s SET state=v.state, output=v.output, review=v.review, "
            "ready=0, owner=NULL, updated_at=v.now::float8 "
            "FROM (VALUES %s) AS v(pipeline, item_id, stage, attempt, expect, state, output, "
            "review, now) WHERE s.pipeline=v.pipeline AND s.item_id=v.item_id "
            "AND s.stage=v.stage AND s.state=v.expect AND s.attempt=v.attempt "
            "RETURNING s.item_id, s.stage"
        )
        values = [(pipeline, i, st, a, expect, state, o, r, tx.now) for i, st, a, o, r in rows]
        done = {tuple(r) for r in execute_values(tx.cur, sql, values, page_size=500, fetch=True)}
        return [(i, st) in done for i, st, _, _, _ in rows]

    @staticmethod
    def _insert_returning(cur: Any, sql: str, rows: list[tuple[Any, ...]]) -> list[str]:
        """Insert what is new (several runners may submit the same items at once)."""
        from psycopg2.extras import execute_values

        new: list[str] = []
        for start in range(0, len(rows), 1000):
            new += [r[0] for r in execute_values(cur, sql, rows[start:start + 1000], fetch=True)]
        order = {r[1]: n for n, r in enumerate(rows)}
        return sorted(new, key=order.__getitem__)

    def _end_read(self) -> None:
        pass  # autocommit connections hold no read transaction

    def _connection(self) -> Any:
        db = self.db
        if not db.is_closed() and not db.is_connection_usable():
            self._drop_connection()  # the server dropped us: reconnect
        return super()._connection()
