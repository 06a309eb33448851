"""Shared fixtures: a store per kind (memory, SQLite file, PostgreSQL when configured).

PostgreSQL tests use the server at ``$TREADLE_TEST_POSTGRES_URL`` (``.ci/run``
sets it); each test gets a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from treadle import open_store

POSTGRES_URL = os.environ.get("TREADLE_TEST_POSTGRES_URL")
NO_POSTGRES = "TREADLE_TEST_POSTGRES_URL is not set: no PostgreSQL server to test against"


def pytest_report_header(config: pytest.Config) -> str:
    """Say once whether the PostgreSQL tests run."""
    if POSTGRES_URL:
        from treadle.store.urls import mask_url

        return f"treadle: PostgreSQL tests run against {mask_url(POSTGRES_URL)}"
    return f"treadle: PostgreSQL tests are skipped ({NO_POSTGRES})"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of an empty PostgreSQL schema of this test's own."""
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    import psycopg2

    schema = f"treadle_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(POSTGRES_URL)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        admin.cursor().execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """The URL of a fresh store of each kind."""
    if request.param == "memory":
        return "memory://"
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def store(store_url: str):
    """A fresh store of each kind."""
    s = open_store(store_url)
    yield s
    s.close()
