"""PostgreSQL for the suite: a fresh schema per measurement (parent process only).

The server comes from ``$TREADLE_TEST_POSTGRES_URL`` (the same variable the
tests use), e.g. ``postgresql://postgres@127.0.0.1:5432/test``. Each
measurement gets a schema ``bench_<random>`` of its own, selected through the
connection option ``-csearch_path=<schema>``, and dropped afterwards, so runs
never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    import psycopg2.extensions

ENV = "TREADLE_TEST_POSTGRES_URL"


def base_url() -> str | None:
    """The server URL from the environment, or None when unset."""
    return os.environ.get(ENV) or None


def unavailable() -> str | None:
    """Why PostgreSQL cannot be measured here, or None if it can."""
    if base_url() is None:
        return f"${ENV} is not set (e.g. postgresql://postgres@127.0.0.1:5432/test)"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install 'treadle[postgres]')"
    try:
        _admin().close()
    except Exception as exc:  # noqa: BLE001 - any driver error means: no server to use
        return f"cannot connect to ${ENV}: {' '.join(str(exc).split())}"
    return None


def _admin(base: str | None = None) -> psycopg2.extensions.connection:
    import psycopg2

    conn = psycopg2.connect(base or base_url(), connect_timeout=10)
    conn.autocommit = True
    return conn


@contextmanager
def fresh_schema(base: str | None = None) -> Iterator[str]:
    """Create an empty schema on ``base`` (default: the server of ``$TREADLE_TEST_POSTGRES_URL``),
    yield a store URL that uses it, then drop it."""
    base = base or base_url()
    if base is None:
        raise RuntimeError(f"${ENV} is not set")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = _admin(base)
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in base else "?"
        yield f"{base}{sep}options={quote(f'-csearch_path={schema}', safe='')}"
    finally:
        try:
            with admin.cursor() as cur:
                cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            admin.close()


def server_version() -> str | None:
    """``SHOW server_version`` of the server, or None if it is not reachable."""
    if unavailable() is not None:
        return None
    conn = _admin()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            row = cur.fetchone()
            return None if row is None else str(row[0])
    finally:
        conn.close()


def server_settings() -> dict[str, str] | None:
    """Server settings that bear on the figures (durability, statistics upkeep)."""
    if unavailable() is not None:
        return None
    conn = _admin()
    try:
        out = {}
        with conn.cursor() as cur:
            for name in ("synchronous_commit", "fsync", "autovacuum", "shared_buffers"):
                cur.execute(f"SHOW {name}")
                row = cur.fetchone()
                out[name] = "?" if row is None else str(row[0])
        return out
    finally:
        conn.close()
