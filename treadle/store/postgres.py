"""The PostgreSQL store: many runner processes, on any number of machines.

PostgreSQL is the coordinator: claims are ``UPDATE ... WHERE id IN (SELECT
... FOR UPDATE SKIP LOCKED) RETURNING``, so concurrent runners never take the
same row and never wait on each other's claims; leases and heartbeats use the
database clock; joins lock the item row before reading sibling states. The
driver is psycopg2 (the ``postgres`` extra). See docs/scaling.md.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import StoreError
from .sql import SqlStore
from .urls import mask_text, mask_url


@functools.lru_cache(maxsize=512)
def _pyformat(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresStore(SqlStore):
    """A store in a PostgreSQL database (``open_store("postgresql://...")``)."""

    _skip_locked = " FOR UPDATE SKIP LOCKED"
    _lock_rows = True

    def __init__(self, url: str) -> None:
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            raise StoreError(
                "PostgreSQL stores need psycopg2: pip install 'treadle[postgres]'."
            ) from None
        from playhouse.db_url import parse

        try:
            params = parse(url.replace("postgres://", "postgresql://", 1), unquote_password=True)
        except Exception as exc:  # noqa: BLE001 - a malformed URL
            raise StoreError(f"Cannot parse the store URL {mask_url(url)}: {mask_text(str(exc), url)}.") from None
        import peewee as pw

        database = pw.PostgresqlDatabase(params.pop("database"), **params)
        super().__init__(url, database)
        try:
            self._create_schema()
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - psycopg2 errors
            detail = " ".join(mask_text(str(exc), url).split()).rstrip(".?")
            raise StoreError(
                f"Cannot use the store {mask_url(url)}: {detail}. Check the URL, and that "
                "PostgreSQL is running and accepts connections from this machine."
            ) from None

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

    def is_disconnect(self, exc: BaseException) -> bool:
        import psycopg2

        return isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) or (
            isinstance(exc, StoreError) and "connect" in str(exc).lower())

    def _exclusive(self, tx: Any) -> None:
        # CREATE TABLE IF NOT EXISTS and bulk reconciliation race between
        # sessions: one at a time, until the transaction ends.
        tx._exec("SELECT pg_advisory_xact_lock(7465656164)")  # "treadle"

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
