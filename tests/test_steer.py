"""Cancel, pause/resume and the committed event feed, end to end: through the Runner
on every store, and through real subprocesses (a runner in one process, the command
in another) on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.steer_pipeline import Job
from tests.steer_pipeline import pipeline as steer
from treadle import (
    InvalidTransitionError,
    ItemState,
    Pipeline,
    Review,
    Runner,
    StageState,
    open_store,
    stage,
)

ROOT = Path(__file__).resolve().parent.parent
TARGET = "tests/steer_pipeline.py:pipeline"


def cli(*args: str, db: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TREADLE_DB": db, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "treadle", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def popen(*args: str, db: str) -> subprocess.Popen[str]:
    env = {**os.environ, "TREADLE_DB": db, "NO_COLOR": "1"}
    return subprocess.Popen([sys.executable, "-m", "treadle", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def db(sql_url: str) -> str:
    """An SQLite file, and a PostgreSQL schema of the test's own (conftest.sql_url)."""
    return sql_url


def wait_for(check: Any, timeout: float = 60, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- cancel through the runner, on every store -----------------------------------------

@pytest.mark.timeout(60)
def test_cancel_while_a_stage_runs_discards_its_result_and_nothing_downstream_starts(store_url):
    started, calls = threading.Event(), []
    seen: dict[str, bool] = {}

    @stage()
    def a(item, ctx):
        calls.append(("a", item["id"]))
        if item["id"] == "slow":
            started.set()
            seen["cancelled"] = ctx.cancelled.wait(20)  # set by the cancel, long before 20 s
        return {"from": item["id"]}

    @stage(after=[a])
    def b(item):
        calls.append(("b", item["id"]))

    p = Pipeline("cancel_running", [a, b])
    store = open_store(store_url)
    runner = Runner(p, store, workers=2)
    runner.submit({"id": "slow"}, {"id": "other"})
    reports: list[Any] = []
    thread = threading.Thread(target=lambda: reports.append(runner.run()), daemon=True)
    thread.start()
    assert started.wait(20)
    other = Runner(p, store if store_url == "memory://" else open_store(store_url))
    assert other.cancel("slow", reason="withdrawn") == ["slow"]
    thread.join(30)
    assert not thread.is_alive() and seen == {"cancelled": True}
    assert reports[0].cancelled == 1
    status = runner.status("slow")
    assert status.state == ItemState.CANCELLED
    assert status.stages["a"].state == StageState.PENDING and status.stages["a"].output is None
    assert ("b", "slow") not in calls and ("b", "other") in calls
    states = [(h.stage, h.state) for h in runner.history("slow")]
    assert ("a", "completed") not in states and states[-1] == (None, "cancelled")
    assert runner.run().executed == 0  # nothing of it ever runs again
    assert [s.item_id for s in runner.items(state="cancelled")] == ["slow"]
    # its unfinished stages stay pending (never ready): listed by stage state, as cancelled
    assert [s.state for s in runner.items(state="pending")] == [ItemState.CANCELLED]
    with pytest.raises(InvalidTransitionError, match="already completed"):
        runner.cancel("other")


@pytest.mark.timeout(60)
def test_cancel_runs_the_rollbacks_when_the_pipeline_asks_then_ends_cancelled(store_url):
    undone: list[str] = []

    @stage(rollback=lambda item: undone.append(item["id"]))
    def reserve(item):
        return "seat"

    @stage(after=[reserve])
    def confirm(item):
        return Review({"seat": 1}, message="confirm?")

    p = Pipeline("cancel_rollback", [reserve, confirm], on_failure="rollback")
    runner = Runner(p, open_store(store_url))
    runner.submit({"id": "t1"})
    assert runner.run().awaiting_review == 1
    assert runner.cancel(["t1"], reason="customer left") == ["t1"]
    runner.run()
    assert undone == ["t1"]
    status = runner.status("t1")
    assert status.state == ItemState.CANCELLED
    assert status.stages["reserve"].state == StageState.ROLLED_BACK
    assert runner.items(stage="confirm", state="awaiting_review") == []


@pytest.mark.timeout(60)
def test_pause_holds_a_stage_in_every_run_until_resumed(store_url):
    runner = Runner(steer, open_store(store_url))
    runner.submit(Job("j1"), Job("j2"))
    assert runner.pause("publish", reason="API down") is True
    report = runner.run()
    assert report.paused == 2 and runner.counts()["publish"] == {"pending": 2}
    assert runner.paused() == ["publish"]
    assert runner.resume() is True and runner.paused() == []
    assert runner.run().paused == 0
    assert runner.counts()["publish"] == {"completed": 2}
    kinds = [(e.item_id, e.stage, e.state) for e in runner.events() if e.item_id is None]
    assert kinds == [(None, "publish", "paused"), (None, None, "resumed")]


# -- across processes --------------------------------------------------------------------

@pytest.mark.timeout(180)
def test_pause_from_another_process_stops_claims_and_resume_restarts_them(db):
    runner = Runner(steer, open_store(db))
    runner.submit(*[Job(f"j{i:03d}", secs=0.2) for i in range(120)])
    watch = popen("run", TARGET, "--watch", "--workers", "2", db=db)
    try:
        def starts() -> int:
            return sum(1 for e in runner.events(0, 100_000) if e.state == "running"
                       and e.stage == "work")

        wait_for(lambda: starts() >= 10, what="the runner to start work")
        assert cli("pause", TARGET, "--stage", "work", db=db).returncode == 0
        time.sleep(0.6)  # a poll: what was claimed before the pause may still start
        held = starts()
        time.sleep(1.5)
        assert starts() == held < 120  # no claim of 'work' after the pause
        assert "paused: work" in cli("status", TARGET, db=db).stdout
        assert cli("resume", TARGET, db=db).returncode == 0
        wait_for(lambda: runner.counts()["publish"].get("completed") == 120, timeout=120,
                 what="every item to complete after resume")
    finally:
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=60)
    assert watch.returncode == 130, err
    runs: dict[str, int] = {}
    for e in runner.events(0, 100_000):
        if e.state == "running":
            runs[f"{e.item_id}/{e.stage}"] = runs.get(f"{e.item_id}/{e.stage}", 0) + 1
    assert len(runs) == 240 and set(runs.values()) == {1}  # nothing lost, nothing twice


@pytest.mark.timeout(180)
def test_events_follow_sees_another_process_in_commit_order_each_once(db):
    Runner(steer, open_store(db)).submit(Job("seed"))
    follower = popen("events", TARGET, "--follow", "--json", "--since", "0", db=db)
    lines: list[dict[str, Any]] = []
    reader = threading.Thread(
        target=lambda: lines.extend(json.loads(line) for line in follower.stdout or ()))
    reader.start()
    try:
        runner = cli("run", TARGET, "--workers", "4",
                     *[a for i in range(30) for a in ("--item", json.dumps({"id": f"e{i}"}))],
                     db=db)
        assert runner.returncode == 0, runner.stderr
        expected = [e.id for e in Runner(steer, open_store(db)).events(0, 100_000)]
        wait_for(lambda: bool(lines) and lines[-1]["id"] == expected[-1], timeout=60,
                 what="the follower to print the last event")
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=30)
        reader.join(10)
    assert follower.returncode == 0
    assert [e["id"] for e in lines] == expected  # every event once, in commit order
    assert {e["state"] for e in lines} >= {"submitted", "running", "completed"}
    assert len([e for e in lines if e["state"] == "completed"]) == 62  # 31 items x 2 stages


@pytest.mark.timeout(120)
def test_cancel_pause_resume_events_exit_codes(db, tmp_path):
    assert cli("submit", TARGET, "--item", '{"id": "x1"}', "--item", '{"id": "x2"}',
               db=db).returncode == 0
    ok = cli("cancel", TARGET, "x1", "--reason", "dup", db=db)
    assert ok.returncode == 0 and "cancelled 1 item(s)" in ok.stdout
    again = cli("cancel", TARGET, "x1", db=db)
    assert again.returncode == 2 and "already cancelled" in again.stderr
    unknown = cli("cancel", TARGET, "nope", db=db)
    assert unknown.returncode == 2 and "nope" in unknown.stderr
    no_tty = cli("cancel", TARGET, "--state", "pending", db=db)  # a filter asks first
    assert no_tty.returncode == 2 and "--yes" in no_tty.stderr
    assert Runner(steer, open_store(db)).status("x2").state == ItemState.PENDING
    assert cli("cancel", TARGET, "--state", "pending", "--yes", db=db).returncode == 0
    assert Runner(steer, open_store(db)).status("x2").state == ItemState.CANCELLED
    assert cli("pause", TARGET, "--stage", "nosuch", db=db).returncode == 2
    assert cli("pause", TARGET, db=db).returncode == 0
    assert "already paused" in cli("pause", TARGET, db=db).stdout
    assert cli("resume", TARGET, db=db).returncode == 0
    events = cli("events", TARGET, "--item", "x1", db=db)
    assert events.returncode == 0 and "cancelled" in events.stdout
    assert [json.loads(line)["state"] for line in cli(
        "events", TARGET, "--item", "x1", "--json", db=db).stdout.splitlines()] == [
        "submitted", "cancelled"]
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    for command in (["events"], ["pause"], ["resume"], ["cancel", "x1"]):
        gone = cli(command[0], TARGET, *command[1:], db=missing)
        assert gone.returncode == 2 and "no store at" in gone.stderr
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.timeout(60)
def test_a_commit_wakes_who_waits_for_events(store_url):
    """wait_for_events returns when another process's store commits (PostgreSQL: its
    NOTIFY; memory: the store's own commit), long before its 30 s timeout; on SQLite it
    polls (returns within a fifth of a second)."""
    waiter = Runner(steer, open_store(store_url))
    writer = Runner(steer, waiter.store if store_url == "memory://" else open_store(store_url))
    writer.submit(Job("w0"))
    waiter.wait_for_events(0.01)  # PostgreSQL: listening from now on
    done = threading.Event()

    def wait() -> None:
        waiter.wait_for_events(30)
        done.set()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    time.sleep(0.3)
    writer.submit(Job("w1"))
    assert done.wait(20), "a commit did not wake the waiter"
    assert [e.item_id for e in waiter.events(0)][-1] == "w1"
