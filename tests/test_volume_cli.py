"""Operating at volume from the shell: items by filter, bulk decisions, no store created by mistake.

Every command runs as a subprocess, on an SQLite file and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from treadle import Runner

from .bulk_pipeline import seed

ROOT = Path(__file__).resolve().parent.parent
TARGET = "tests/bulk_pipeline.py:pipeline"


def treadle(*args: str, db: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m treadle ARGS`` with TREADLE_DB=db, not on a terminal."""
    env = {**os.environ, "TREADLE_DB": db}
    return subprocess.run([sys.executable, "-m", "treadle", *args], cwd=ROOT, env=env,
                          input=input, capture_output=True, text=True, timeout=120)


def ids(rows: list[dict]) -> list[str]:
    return [r["item_id"] for r in rows]


@pytest.fixture
def db(sql_url: str) -> str:
    """An SQLite file, and a PostgreSQL schema of the test's own (conftest.sql_url)."""
    return sql_url


# -- items ------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_items_filters_paging_and_json(db):
    """items filters by stage, state, error (any case) and since; pages with --offset; --json is a list."""
    seed(db, fine=3, odd=2, hold=2, slow=2, oops=1)
    res = treadle("items", TARGET, db=db)
    assert res.returncode == 0, res.stderr
    assert "items 1-10" in res.stdout and "next page" not in res.stdout
    assert "\x1b" not in res.stdout  # not a terminal: no control codes
    for kind in ("fine-0000", "odd-0001", "hold-0000", "slow-0001", "oops-0000"):
        assert kind in res.stdout

    res = treadle("items", TARGET, "--stage", "check", "--state", "awaiting_review", "--json", db=db)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert sorted(ids(rows)) == ["fine-0000", "fine-0001", "fine-0002", "odd-0000", "odd-0001"]
    assert set(rows[0]) == {"item_id", "state", "stage", "stage_state", "error", "updated_at"}
    assert {(r["state"], r["stage"], r["stage_state"]) for r in rows} == {
        ("awaiting_review", "check", "awaiting_review")}
    assert all(isinstance(r["updated_at"], float) for r in rows)

    res = treadle("items", TARGET, "--state", "failed", "--error", "upstream timeout", "--json", db=db)
    rows = json.loads(res.stdout)
    assert sorted(ids(rows)) == ["slow-0000", "slow-0001"]
    assert all(r["stage"] == "check" and "Upstream TIMEOUT" in r["error"] for r in rows)
    table = treadle("items", TARGET, "--state", "failed", "--error", "FORMAT", db=db).stdout
    assert "oops-0000" in table and "bad format" in table and "slow-0000" not in table

    assert ids(json.loads(treadle("items", TARGET, "--stage", "intake", "--state", "awaiting_review",
                                  "--json", db=db).stdout)) == ["hold-0000", "hold-0001"]
    assert len(json.loads(treadle("items", TARGET, "--since", "1h", "--json", db=db).stdout)) == 10
    assert len(json.loads(treadle("items", TARGET, "--since", "2001-01-01", "--json", db=db).stdout)) == 10
    future = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 3600))
    res = treadle("items", TARGET, "--since", future, db=db)
    assert res.returncode == 0 and "No item matches" in res.stdout

    first = treadle("items", TARGET, "--limit", "4", db=db)
    assert "items 1-4; next page: --offset 4" in first.stdout
    pages = [ids(json.loads(treadle("items", TARGET, "--limit", "4", "--offset", str(o), "--json",
                                    db=db).stdout)) for o in (0, 4, 8)]
    everything = ids(json.loads(treadle("items", TARGET, "--json", db=db).stdout))
    assert [len(p) for p in pages] == [4, 4, 2] and sum(pages, []) == everything

    for bad, fragment in ((["--state", "bogus"], "invalid choice"),
                          (["--since", "yesterday"], "--since 'yesterday' is neither"),
                          (["--stage", "chek"], "Did you mean 'check'"),
                          (["--limit", "0"], "--limit must be at least 1")):
        res = treadle("items", TARGET, *bad, db=db)
        assert res.returncode == 2 and fragment in res.stderr, (bad, res.stderr)


# -- bulk decisions ---------------------------------------------------------------

def decisions(runner: Runner, item_id: str, stage: str) -> list[tuple[str, str]]:
    """(state, actor) of the decision rows of one stage in the history."""
    return [(h.state, h.actor) for h in runner.history(item_id)
            if h.stage == stage and h.details and "decision" in h.details]


@pytest.mark.timeout(300)
def test_bulk_approve_of_1000_reviews_by_filter(db):
    """approve --all --stage --where-message: the count first, one decision row each, nothing else touched."""
    runner = seed(db, fine=1000, odd=20, hold=10)
    waiting = runner.counts()
    assert waiting["check"]["awaiting_review"] == 1020 and waiting["intake"]["awaiting_review"] == 10
    args = ("approve", TARGET, "--all", "--stage", "check", "--where-message", "LOOKS fine",
            "--reviewer", "rita")

    res = treadle(*args, db=db)  # not a terminal, no --yes: refused, nothing changed
    assert res.returncode == 2 and "Pass --yes" in res.stderr
    assert "1000 review(s) match: 1000 at check" in res.stdout
    assert runner.counts()["check"]["awaiting_review"] == 1020

    res = treadle(*args, "--yes", db=db)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.index("1000 review(s) match: 1000 at check") < out.index("approved 1000 (1000 at check)")
    assert "skipped" not in out

    counts = runner.counts()
    assert counts["check"] == {"completed": 1000, "awaiting_review": 20, "pending": 10}
    assert counts["intake"]["awaiting_review"] == 10
    for n in range(1000):
        assert decisions(runner, f"fine-{n:04d}", "check") == [("completed", "rita")]
    for item in [f"odd-{n:04d}" for n in range(20)] + [f"hold-{n:04d}" for n in range(10)]:
        assert decisions(runner, item, "check") == decisions(runner, item, "intake") == []
    assert runner.status("odd-0000").stages["check"].state == "awaiting_review"
    assert runner.status("hold-0000").stages["intake"].state == "awaiting_review"

    again = treadle(*args, "--yes", db=db)
    assert again.returncode == 0 and "nothing to approve" in again.stdout
    runner.run()
    assert runner.counts()["publish"]["completed"] == 1000


@pytest.mark.timeout(180)
def test_bulk_reject_and_retry_by_filter(db):
    """reject --all --reason and retry --all-failed --error touch what matches, each recorded once."""
    runner = seed(db, fine=3, hold=30, slow=25, oops=5)
    res = treadle("reject", TARGET, "--all", "--stage", "intake", "--reason", "duplicate",
                  "--reviewer", "sam", "--yes", db=db)
    assert res.returncode == 0, res.stderr
    assert "30 review(s) match: 30 at intake" in res.stdout and "rejected 30" in res.stdout
    for n in range(30):
        status = runner.status(f"hold-{n:04d}")
        assert status.state == "rejected" and status.stages["intake"].review.note == "duplicate"
        assert decisions(runner, f"hold-{n:04d}", "intake") == [("rejected", "sam")]
    assert runner.counts()["check"]["awaiting_review"] == 3  # the fine ones wait still

    res = treadle("retry", TARGET, "--all-failed", "--error", "upstream timeout", "--yes", db=db)
    assert res.returncode == 0, res.stderr
    assert "25 failed stage(s) match: 25 at check" in res.stdout
    assert "back to pending: 25 (25 at check)" in res.stdout
    for n in range(25):
        retried = [h for h in runner.history(f"slow-{n:04d}") if h.details == {"reason": "retry"}]
        assert [(h.stage, h.state) for h in retried] == [("check", "pending")]
        assert runner.status(f"slow-{n:04d}").stages["check"].state == "pending"
    assert all(runner.status(f"oops-{n:04d}").stages["check"].state == "failed" for n in range(5))
    assert runner.status("hold-0000").state == "rejected"

    res = treadle("retry", TARGET, "--all-failed", "--error", "no such error", "--yes", db=db)
    assert res.returncode == 0 and "nothing to retry" in res.stdout
    res = treadle("retry", TARGET, "--all-failed", db=db)
    assert res.returncode == 2 and "Pass --yes" in res.stderr
    assert runner.counts()["check"]["failed"] == 5
    res = treadle("retry", TARGET, "tests-item", "--error", "x", db=db)
    assert res.returncode == 2 and "--error goes with retry --all-failed" in res.stderr


def test_bulk_confirmation_on_a_terminal(tmp_path):
    """On a terminal the bulk command asks; anything but y changes nothing."""
    import pty

    db = f"sqlite:///{tmp_path / 'volume.db'}"
    runner = seed(db, fine=4)
    for answer, approved in ((b"n\n", 0), (b"y\n", 4)):
        primary, secondary = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "treadle", "approve", TARGET, "--all"],
                                cwd=ROOT, env={**os.environ, "TREADLE_DB": db}, stdin=secondary,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.close(secondary)
        try:
            os.write(primary, answer)
            out, err = proc.communicate(timeout=60)
        finally:
            os.close(primary)
        assert proc.returncode == 0, err
        assert b"approve these 4 review(s)? [y/N]" in out
        assert (b"nothing changed" in out) == (approved == 0)
        assert runner.counts()["check"].get("completed", 0) == approved


# -- commands never create or alter what is not a store -----------------------------

NON_STORE_COMMANDS = [
    ["status"], ["status", "x"], ["reviews"], ["history", "x"], ["items"], ["items", "--state", "failed"],
    ["approve", "x", "check"], ["approve", "--all", "--yes"], ["reject", "x", "check", "--reason", "r"],
    ["reject", "--all", "--reason", "r", "--yes"], ["retry", "x"], ["retry", "--all-failed", "--yes"],
    ["rerun", "x", "--from", "intake"], ["review"],
]


def _foreign(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    con.execute("INSERT INTO notes (body) VALUES ('mine')")
    con.commit()
    con.close()


@pytest.mark.parametrize("kind", ["missing", "empty", "foreign SQLite", "not SQLite"])
def test_reading_and_deciding_commands_leave_a_non_store_untouched(tmp_path, kind):
    """Read-only commands and decisions: exit 2 "no store at", the file byte for byte as it was."""
    path = tmp_path / "mistyped.db"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign SQLite":
        _foreign(path)
    elif kind == "not SQLite":
        path.write_text("just some notes\n" * 20)
    before = path.read_bytes() if path.exists() else None
    db = f"sqlite:///{path}"
    for args in NON_STORE_COMMANDS:
        res = treadle(args[0], TARGET, *args[1:], db=db)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert f"no store at {db}" in res.stderr, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert (path.read_bytes() if path.exists() else None) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if kind == "missing" else [path.name])
    assert treadle("graph", TARGET, db=db).returncode == 0  # needs no store


def test_reading_and_deciding_commands_leave_an_empty_postgres_schema_empty(postgres_url):
    """On a PostgreSQL schema without treadle's tables: exit 2 "no store at", no table created."""
    import psycopg2

    def tables() -> list[str]:
        con = psycopg2.connect(postgres_url)
        try:
            cur = con.cursor()
            cur.execute("SELECT table_name FROM information_schema.tables "
                        "WHERE table_schema = current_schema()")
            return sorted(r[0] for r in cur.fetchall())
        finally:
            con.close()

    assert tables() == []
    for args in NON_STORE_COMMANDS:
        res = treadle(args[0], TARGET, *args[1:], db=postgres_url)
        assert res.returncode == 2 and "no store at postgresql://" in res.stderr, (args, res.stderr)
    assert tables() == []


@pytest.mark.timeout(120)
def test_commands_work_on_a_real_store(db):
    """The same commands on a store that exists: decisions and reads go through (exit 0)."""
    seed(db, fine=2, slow=1)
    assert treadle("status", TARGET, db=db).returncode == 0
    res = treadle("approve", TARGET, "fine-0000", "check", db=db)
    assert res.returncode == 0, res.stderr
    res = treadle("approve", TARGET, "--stage", "check", db=db)
    assert res.returncode == 2 and "approve needs ITEM STAGE, or --all" in res.stderr
    res = treadle("approve", TARGET, "fine-0001", "check", "--where-message", "x", db=db)
    assert res.returncode == 2 and "go with approve --all" in res.stderr
    assert Counter(r["stage_state"] for r in json.loads(
        treadle("items", TARGET, "--stage", "check", "--json", db=db).stdout)) == Counter(
        {"completed": 1, "awaiting_review": 1, "failed": 1})
