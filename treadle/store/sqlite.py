"""The SQLite store: WAL, ``BEGIN IMMEDIATE`` writes, and a bundled SQLite.

SQLite before 3.51.3 can corrupt a WAL database when two connections write
or checkpoint at the same moment (https://sqlite.org/wal.html#walresetbug).
treadle runs several connections per file (one per thread, and several
runner processes), so it never uses the system library: it talks to SQLite
through apsw, whose wheels bundle a current SQLite. See docs/sqlite.md.
"""

from __future__ import annotations

import os
import time
from typing import Any

import apsw
from playhouse.apsw_ext import APSWDatabase

from ..errors import StoreError
from .sql import SqlStore
from .urls import no_store

#: The oldest SQLite without the WAL-reset bug.
MIN_SQLITE = (3, 51, 3)
SYNCHRONOUS = ("off", "normal", "full", "extra")


def sqlite_version() -> tuple[int, ...]:
    """Version of the SQLite library treadle uses (apsw's)."""
    return tuple(int(p) for p in apsw.sqlite_lib_version().split("."))


class SqliteStore(SqlStore):
    """A store in one SQLite file; several threads and processes may share it.

    ``synchronous`` is ``"full"`` by default: a committed transition
    survives power loss as well as a crash. ``"normal"`` survives any crash
    of the process but may lose the last commits on power loss.
    """

    def __init__(self, url: str, path: str, *, synchronous: str = "full",
                 busy_timeout: float = 60.0, create: bool = True) -> None:
        if sqlite_version() < MIN_SQLITE:
            raise StoreError(
                f"apsw bundles SQLite {apsw.sqlite_lib_version()}, older than 3.51.3, which has the "
                "WAL-reset corruption bug; upgrade it: pip install -U apsw."
            )
        if synchronous not in SYNCHRONOUS:
            raise StoreError(
                f"synchronous={synchronous!r} in {url!r} is invalid; use one of {', '.join(SYNCHRONOUS)}."
            )
        self.path = path
        self.synchronous = synchronous
        if not create and not os.path.isfile(path):
            raise no_store(url, f"the file {path!r} does not exist")
        if not create and os.path.getsize(path) == 0:
            raise no_store(url, f"the file {path!r} is empty")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise StoreError(
                f"Cannot open the store {url}: the folder {parent!r} does not exist; create it first."
            )
        if not self._check_existing(url, path, create) and not create:
            raise no_store(url, f"{path!r} is an SQLite database without treadle's tables")
        database = APSWDatabase(
            path,
            pragmas=[("journal_mode", "wal"), ("synchronous", synchronous),
                     ("cache_size", -32000), ("temp_store", "memory")],
            timeout=busy_timeout,
        )
        super().__init__(url, database)
        try:
            self._create_schema()
        except apsw.Error as exc:
            raise StoreError(f"Cannot open the store {url}: {exc}.") from None

    def _check_existing(self, url: str, path: str, create: bool) -> bool:
        """Refuse a store of a newer schema before writing anything to it; True when
        ``path`` holds treadle's tables (read through a read-only connection)."""
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            return False
        try:
            conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        except apsw.Error as exc:
            raise StoreError(f"Cannot open the store {url}: {exc}.") from None
        try:
            conn.set_busy_timeout(60_000)
            rows = list(conn.execute(
                "SELECT value FROM treadle_meta WHERE key='schema_version'"))
        except apsw.SQLError:
            rows = []  # no treadle tables yet: a fresh or foreign file
        except apsw.NotADBError:
            if not create:
                raise no_store(url, f"{path!r} is not an SQLite database") from None
            raise StoreError(
                f"Cannot open the store {url}: {path!r} is not an SQLite database. "
                "Point --db / open_store() at a new file or an existing treadle store."
            ) from None
        finally:
            conn.close()
        if rows:
            self._check_version(int(rows[0][0]))
        return bool(rows)

    def _now(self, cur: Any) -> float:
        # One host, one clock: the database's clock is this machine's clock.
        return time.time()

    def _changes(self, cur: Any) -> int:
        return int(cur.connection.changes())

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN IMMEDIATE")
