"""The SQLite store: URLs, schema versions, configuration, processes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from treadle import Runner, StoreError, open_store
from treadle.store.schema import SCHEMA_VERSION
from treadle.store.sqlite import MIN_SQLITE, sqlite_version
from treadle.store.urls import mask_url

from . import pipelines_diamond

ROOT = Path(__file__).resolve().parent.parent


def test_bundled_sqlite_has_the_wal_reset_fix():
    """The SQLite treadle runs on is 3.51.3 or newer."""
    assert sqlite_version() >= MIN_SQLITE


def test_store_file_uses_wal_and_full_sync_by_default(tmp_path):
    """A new store is in WAL mode with synchronous=FULL; normal is selectable."""
    store = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    conn = store._connection()
    assert list(conn.execute("PRAGMA journal_mode"))[0][0] == "wal"
    assert list(conn.execute("PRAGMA synchronous"))[0][0] == 2  # FULL
    normal = open_store(f"sqlite:///{tmp_path / 'b.db'}?synchronous=normal")
    assert list(normal._connection().execute("PRAGMA synchronous"))[0][0] == 1


def test_newer_schema_is_refused_and_the_file_untouched(tmp_path):
    """A store written by a newer schema raises StoreError and is not modified."""
    path = tmp_path / "new.db"
    store = open_store(f"sqlite:///{path}")
    Runner(pipelines_diamond.pipeline, store).submit({"id": 1, "n": 1})
    store.close()
    con = sqlite3.connect(path)
    con.execute("UPDATE treadle_meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="newer treadle") as info:
        open_store(f"sqlite:///{path}")
    assert "Nothing was changed" in str(info.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize("url, fragment", [
    ("mysql://u:secret@h/db", "Unknown store URL"),
    ("sqlite:///", "names no file"),
    ("sqlite:///x.db?colour=blue", "unknown option"),
    ("sqlite:///x.db?synchronous=sometimes", "synchronous='sometimes'"),
    ("sqlite:////no/such/folder/x.db", "does not exist"),
])
def test_bad_urls_raise_store_error_without_passwords(url, fragment, tmp_path, monkeypatch):
    """Bad store URLs raise StoreError saying what to do, never showing a password."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match=fragment) as info:
        open_store(url)
    assert "secret" not in str(info.value)


def test_not_a_database(tmp_path):
    """A file that is not SQLite is a clear StoreError."""
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        open_store(f"sqlite:///{path}")


def test_mask_url_hides_passwords():
    """Credentials in URLs are masked everywhere they are shown."""
    assert mask_url("postgresql://bob:hunter2@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert mask_url("postgresql://bob@db/x") == "postgresql://bob@db/x"
    assert mask_url("sqlite:///a.db") == "sqlite:///a.db"


def test_child_process_after_fork_gets_its_own_connection(tmp_path):
    """A forked child reconnects instead of reusing the parent's connection."""
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    store = open_store(f"sqlite:///{tmp_path / 'f.db'}")
    runner = Runner(pipelines_diamond.pipeline, store)
    runner.submit({"id": "parent", "n": 1})
    parent_conn = store._connection()
    pid = os.fork()
    if pid == 0:  # child
        try:
            ok = store._connection() is not parent_conn
            Runner(pipelines_diamond.pipeline, store).submit({"id": "child", "n": 2})
            os._exit(0 if ok else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert store._connection() is parent_conn
    assert [s.item_id for s in runner.items()] == ["parent", "child"]
    runner.run()
    assert runner.counts()["publish"] == {"completed": 2}


def test_two_processes_submit_concurrently(tmp_path):
    """Writers in two processes wait for each other (BEGIN IMMEDIATE + busy timeout)."""
    db = tmp_path / "c.db"
    open_store(f"sqlite:///{db}").close()
    code = (
        "import sys; sys.path.insert(0, {root!r});"
        "from treadle import Runner, open_store; from tests import pipelines_diamond as p;"
        "r = Runner(p.pipeline, open_store({url!r}));"
        "[r.submit({{'id': f'{{sys.argv[1]}}-{{i}}', 'n': i}}) for i in range(200)]"
    ).format(root=str(ROOT), url=f"sqlite:///{db}")
    procs = [subprocess.Popen([sys.executable, "-c", code, tag]) for tag in "ab"]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    runner = Runner(pipelines_diamond.pipeline, open_store(f"sqlite:///{db}"))
    assert len(runner.items(limit=None)) == 400


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_older_schema_is_migrated_in_place(kind, tmp_path, monkeypatch, request):
    """Opening a store of an older schema runs the migration steps and keeps the data."""
    import peewee as pw
    from playhouse.migrate import migrate

    from treadle.store import schema

    url = (f"sqlite:///{tmp_path / 'old.db'}" if kind == "sqlite"
           else request.getfixturevalue("postgres_url"))
    old = open_store(url)
    Runner(pipelines_diamond.pipeline, old).submit({"id": "kept", "n": 1})
    old.close()

    def add_priority(migrator):
        migrate(migrator.add_column("treadle_item", "priority", pw.IntegerField(default=0)))

    monkeypatch.setattr(schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(schema.MIGRATIONS, SCHEMA_VERSION + 1, add_priority)
    new = open_store(url)
    assert new._read("SELECT value FROM treadle_meta WHERE key='schema_version'") == [
        (str(SCHEMA_VERSION + 1),)]
    assert new._read("SELECT item_id, priority FROM treadle_item") == [("kept", 0)]
    runner = Runner(pipelines_diamond.pipeline, new)
    runner.run()
    assert runner.status("kept").state == "completed"
