"""Shared fixtures: a store per kind (memory, SQLite file, PostgreSQL when configured).

PostgreSQL tests use the server at ``$TREADLE_TEST_POSTGRES_URL`` (``.ci/run``
sets it); each test gets a schema of its own, dropped afterwards.

Optional backends skip with a reason when they are not configured, except in
CI: ``TREADLE_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) turns a PostgreSQL skip
into a failure, and ``TREADLE_REQUIRE_CHROMIUM=1`` does the same for the
browser tests (see :func:`require_chromium`), so a misconfigured CI cannot pass
by skipping.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import pytest

from treadle import open_store
from treadle.store.base import StateStore

POSTGRES_URL = os.environ.get("TREADLE_TEST_POSTGRES_URL")
NO_POSTGRES = "TREADLE_TEST_POSTGRES_URL is not set: no PostgreSQL server to test against"
REQUIRE_POSTGRES = "TREADLE_REQUIRE_POSTGRES"
REQUIRE_CHROMIUM = "TREADLE_REQUIRE_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def required(variable: str) -> bool:
    """True when CI demands the backend named by ``variable`` (set to ``1``)."""
    return os.environ.get(variable, "").strip() == "1"


def skip_or_fail(reason: str, variable: str) -> NoReturn:
    """Skip the calling test with ``reason``, or fail it when ``$variable`` is ``1``."""
    if required(variable):
        pytest.fail(f"{reason}; {variable}=1 makes this skip a failure", pytrace=False)
    pytest.skip(reason)


def require_postgres() -> str:
    """The PostgreSQL server URL, or skip (fail under ``TREADLE_REQUIRE_POSTGRES=1``)."""
    if not POSTGRES_URL:
        skip_or_fail(NO_POSTGRES, REQUIRE_POSTGRES)
    return POSTGRES_URL


def find_chromium() -> str | None:
    """A Chromium executable: ``$TREADLE_CHROMIUM`` if set, else the first on ``PATH``,
    else one that ``playwright install chromium`` downloaded."""
    explicit = os.environ.get("TREADLE_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    browsers = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH") or Path.home() / ".cache" / "ms-playwright")
    found = sorted(browsers.glob("chromium-*/chrome-linux*/chrome"))
    return str(found[-1]) if found else None


def require_chromium() -> str:
    """The Chromium executable for browser tests, or skip (fail under
    ``TREADLE_REQUIRE_CHROMIUM=1``). Web tests call this or use the ``chromium`` fixture."""
    path = find_chromium()
    if path is None:
        where = os.environ.get("TREADLE_CHROMIUM") or f"PATH ({', '.join(CHROMIUM_NAMES)})"
        skip_or_fail(f"no Chromium found at {where}: set TREADLE_CHROMIUM to its executable",
                     REQUIRE_CHROMIUM)
    return path


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say once whether the PostgreSQL tests run, and whether skipping them fails."""
    if POSTGRES_URL:
        from treadle.store.urls import mask_url

        lines = [f"treadle: PostgreSQL tests run against {mask_url(POSTGRES_URL)}"]
    else:
        lines = [f"treadle: PostgreSQL tests are skipped ({NO_POSTGRES})"]
    for variable in (REQUIRE_POSTGRES, REQUIRE_CHROMIUM):
        if required(variable):
            lines.append(f"treadle: {variable}=1: a skip for want of it is a failure")
    return lines


@pytest.fixture
def chromium() -> str:
    """The path of a Chromium executable (skips, or fails when required, without one)."""
    return require_chromium()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of an empty PostgreSQL schema of this test's own."""
    server = require_postgres()
    import psycopg2

    schema = f"treadle_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(server)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in server else "?"
    try:
        yield f"{server}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        admin.cursor().execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty durable store URL: an SQLite file, and a PostgreSQL schema of the test's own."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh store of each kind."""
    if request.param == "memory":
        return "memory://"
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def store(store_url: str) -> Iterator[StateStore]:
    """A fresh store of each kind."""
    s = open_store(store_url)
    yield s
    s.close()
