"""Shared fixtures: a store per kind (memory, SQLite file, PostgreSQL when configured)."""

from __future__ import annotations

import os

import pytest

from treadle import open_store

POSTGRES_URL = os.environ.get("TREADLE_TEST_POSTGRES_URL")


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """The URL of a fresh store of each kind."""
    if request.param == "memory":
        return "memory://"
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def store(store_url: str):
    """A fresh store of each kind."""
    s = open_store(store_url)
    yield s
    s.close()
