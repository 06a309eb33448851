"""The command line at volume: rich tables that never cut, stage metrics, progress,
and the fixed run endings (signals under --watch, hints, summary, logged submissions).

Through real subprocesses on an SQLite file and on PostgreSQL, with exit codes."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.procs import run_on_pty
from tests.volume_pipeline import LONG_MESSAGE, Job
from tests.volume_pipeline import pipeline as volume
from treadle import Runner, StageMetrics, open_store

ROOT = Path(__file__).resolve().parent.parent
TARGET = "tests/volume_pipeline.py:pipeline"
PLAIN_ENV = {"NO_COLOR": "", "COLUMNS": "80"}


def cli(*args: str, db: str, input: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **PLAIN_ENV, "TREADLE_DB": db, **(env or {})}
    return subprocess.run([sys.executable, "-m", "treadle", *args], cwd=ROOT, env=full_env,
                          input=input, capture_output=True, text=True, timeout=120)


def items(*ids: str, secs: float = 0.0) -> list[str]:
    return [a for i in ids for a in ("--item", json.dumps({"id": i, "secs": secs}))]


@pytest.fixture
def db(sql_url: str) -> str:
    """An SQLite file, and a PostgreSQL schema of the test's own (conftest.sql_url)."""
    return sql_url


@pytest.fixture
def sqlite_db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'volume.db'}"


# -- run and status, end to end --------------------------------------------------------

@pytest.mark.timeout(120)
def test_run_and_status_output_and_exit_codes(db):
    """run exits 1 with failures and says what it counted; status shows counts and
    metrics (table and --json) and exits 0; --json keeps its keys."""
    res = cli("run", TARGET, *items("a1", "a2", "review1", "fail1"), db=db)
    assert res.returncode == 1, res.stderr
    out = res.stdout
    assert "\x1b" not in out  # not a terminal: plain
    # fetch: 3 + fail1 twice; enrich: 3 and 6 subtasks; review: 3
    assert ("this run executed 17 stage and subtask run(s): 8 stage(s) completed, 1 failed, "
            "0 skipped, 1 sent to review; the other 7 were attempts to be retried or subtask runs") in out
    assert re.search(r"^done: fetch 4/4 \(.*1 failed\) \| enrich 3/4 .* \| review 3/4 .*1 to review\)$",
                     out, re.M), out
    assert "items in the store: 1 awaiting_review, 2 completed, 1 failed" in out
    assert "fail1 fetch: RuntimeError: cannot fetch fail1" in out
    assert "retry them with: python -m treadle retry" in out

    res = cli("status", TARGET, db=db)
    assert res.returncode == 0, res.stderr
    assert "stage metrics" in res.stdout
    row = [line for line in res.stdout.splitlines() if line.startswith("fetch ")][-1].split()
    assert row[:3] == ["fetch", "3", "5"]  # done, runs
    assert row[5:7] == ["40.0%", "20.0%"]  # 2 of 5 runs failed, 1 was a repeat attempt
    data = json.loads(cli("status", TARGET, "--json", db=db).stdout)
    assert set(data) == {"pipeline", "store", "stages", "items", "paused", "metrics"}
    assert data["stages"]["fetch"] == {"completed": 3, "failed": 1}
    fetch = data["metrics"]["fetch"]
    assert (fetch["done"], fetch["runs"], fetch["failure_rate"], fetch["retry_rate"]) == (3, 5, 0.4, 0.2)
    assert data["metrics"]["review"]["waiting_reviews"] == 1
    assert data["metrics"]["review"]["oldest_review_age"] >= 0
    assert cli("status", TARGET, "--window", "0", db=db).returncode == 2


@pytest.mark.timeout(120)
def test_reviews_table_shows_a_300_character_message_whole(db):
    """reviews prints the whole 300-character message and the whole data, on one line
    when not a terminal."""
    assert cli("run", TARGET, *items("review1"), db=db).returncode == 0
    res = cli("reviews", TARGET, db=db)
    assert res.returncode == 0, res.stderr
    assert len(LONG_MESSAGE) == 300
    line = [x for x in res.stdout.splitlines() if x.startswith("review1")][0]
    assert LONG_MESSAGE in line and '{"title": "A", "tags": ["x"]}' in line
    status = cli("status", TARGET, "review1", db=db)  # the item's table: whole too
    assert status.returncode == 0 and f"message: {LONG_MESSAGE}" in status.stdout
    inbox = json.loads(cli("reviews", TARGET, "--json", db=db).stdout)  # --json unchanged
    assert inbox == [{"item_id": "review1", "stage": "review", "message": LONG_MESSAGE,
                      "data": {"title": "A", "tags": ["x"]}, "version": 1,
                      "previous": None}]


@pytest.mark.timeout(120)
def test_history_table_shows_subtask_names_and_a_readable_diff(db):
    """history has a subtask column naming each subtask, and an edit's diff as lines."""
    cli("run", TARGET, *items("review2"), db=db)
    res = cli("approve", TARGET, "review2", "review", "--data", '{"title": "B", "year": 1999}',
              "--note", "fixed the title", "--reviewer", "ann", db=db)
    assert res.returncode == 0, res.stderr
    res = cli("history", TARGET, "review2", db=db)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    header = lines[0].split()
    assert header[:4] == ["time", "stage", "subtask", "state"]
    rows = [line.split() for line in lines if " enrich " in line]  # date, time, stage, subtask, ...
    assert {(r[3], r[4]) for r in rows if r[3] in ("left", "right")} == {
        ("left", "running"), ("left", "completed"), ("right", "running"), ("right", "completed")}
    text = res.stdout
    assert "decision: approved, reviewer: ann, note: fixed the title" in text
    assert '~ /title: A -> B' in text
    assert '- /tags: ["x"]' in text
    assert "+ /year: 1999" in text
    hist = json.loads(cli("history", TARGET, "review2", "--json", db=db).stdout)  # unchanged
    assert {h["subtask"] for h in hist} == {None, "left", "right"}


def test_tables_wrap_on_a_terminal_instead_of_cutting():
    """On an 80-column terminal the message wraps within its column, every word kept in order."""
    from treadle.cli.output import Look, table

    text = table(["item", "stage", "message"], [["review1", "review", LONG_MESSAGE]],
                 Look(plain=False, width=80))
    assert "\x1b[" in text  # styled for the terminal
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert max(len(line) for line in plain.splitlines()) <= 80
    words = re.findall(r"w\d{3}", plain)
    assert " ".join(words) + "." == LONG_MESSAGE
    assert Look.of(io.StringIO()).plain  # not a terminal: plain


# -- the progress display ---------------------------------------------------------------

@pytest.mark.timeout(120)
def test_progress_bars_on_a_terminal_and_plain_under_no_color(sqlite_db):
    """On a terminal: a bar per stage with done/total, rate and ETA; with NO_COLOR set, plain
    lines and no control code at all."""
    def on_pty(extra_env: dict[str, str]) -> tuple[int, str]:
        env = {**os.environ, "TREADLE_DB": sqlite_db, "COLUMNS": "120", **extra_env}
        if "NO_COLOR" not in extra_env:
            env.pop("NO_COLOR", None)
        return run_on_pty(["-m", "treadle", "run", TARGET, *items(*(f"p{i}" for i in range(6)), secs=0.3),
                           "--workers", "2"], env)

    code, out = on_pty({})
    assert code == 0
    assert "━" in out and "\x1b[" in out
    assert re.search(r"fetch .*6/6", out) and re.search(r"review .*6/6", out)
    assert re.search(r"\d+\.\d/s", out) and "ETA" in out
    assert "this run executed 30 stage and subtask run(s)" in out
    code, out = on_pty({"NO_COLOR": "1"})
    assert code == 0
    assert "\x1b" not in out
    assert "done: fetch 6/6" in out


class _StuckRunner:
    """A runner whose store answers the first count, then never again."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()
        self.store = object()

    def counts(self) -> dict[str, dict[str, int]]:
        self.calls += 1
        if self.calls > 1:
            self.release.wait(30)
        return {"fetch": {"completed": 3, "pending": 1}}


@pytest.mark.timeout(30)
def test_progress_never_hangs_at_exit_and_listens_to_no_signal():
    """The display reads counts, connects no signal receiver (no cost per stage run), and
    leaving it returns in bounded time even when the store stops answering."""
    from treadle import signals
    from treadle.cli.output import PLAIN
    from treadle.cli.progress import Progress

    runner = _StuckRunner()
    out = io.StringIO()
    progress = Progress(runner, out, look=PLAIN, interval=0.05)  # type: ignore[arg-type]
    with progress:
        assert not any(sig.receivers for sig in signals.ALL.values())
        time.sleep(0.3)  # the thread's second read is stuck now
        started = time.monotonic()
    assert time.monotonic() - started < 5
    runner.release.set()
    assert out.getvalue().splitlines()[0] == "progress: fetch 3/4 (0.0/s)"
    assert out.getvalue().splitlines()[-1].startswith("done: fetch 3/4")


# -- metrics against known durations and failures ----------------------------------------

@pytest.mark.timeout(60)
def test_stage_metrics_match_a_run_with_known_durations(store_url):
    """Eight 0.05 s runs, two 0.5 s runs and a failing item tried twice: the metrics say so."""
    runner = Runner(volume, open_store(store_url), workers=16)
    runner.submit(*[Job(f"q{i}", 0.05) for i in range(8)], Job("slow1", 0.5), Job("slow2", 0.5),
                  Job("fail1", 0.05), Job("review1", 0.05))
    started = time.time()
    runner.run()
    took = time.time() - started
    m = runner.stage_metrics(window=600)
    assert list(m) == ["fetch", "enrich", "review"]
    fetch = m["fetch"]
    assert isinstance(fetch, StageMetrics)
    assert (fetch.done, fetch.runs) == (11, 13)
    assert fetch.failure_rate == pytest.approx(2 / 13) and fetch.retry_rate == pytest.approx(1 / 13)
    assert fetch.p50 is not None and fetch.p95 is not None
    assert 0.05 <= fetch.p50 < 0.5  # most runs sleep 0.05 s
    assert 0.5 <= fetch.p95 <= took  # the two slow ones are the top 2 of 13
    assert fetch.throughput > 0
    review = m["review"]
    assert (review.runs, review.waiting_reviews, review.failure_rate) == (11, 1, 0.0)
    assert review.oldest_review_age is not None and 0 <= review.oldest_review_age <= time.time() - started
    assert m["enrich"].done == 11
    with pytest.raises(ValueError, match="window"):
        runner.stage_metrics(window=0)


# -- fixed run endings ---------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_run_watch_exits_130_with_the_summary_on_a_signal(sqlite_db, signum, busy):
    """run --watch ends with exit 130 and the summary on SIGINT and on SIGTERM, whether a
    stage runs or the runner waits for new work."""
    env = {**os.environ, **PLAIN_ENV, "TREADLE_DB": sqlite_db}
    extra = items("long", secs=4.0) if busy else items("quick")
    proc = subprocess.Popen([sys.executable, "-m", "treadle", "run", TARGET, "--watch", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 30
        while True:  # wait until the item's fetch runs (busy) or the item is done (idle)
            res = cli("status", TARGET, "--json", db=sqlite_db)
            stages = json.loads(res.stdout)["stages"] if res.returncode == 0 else {}
            if stages.get("fetch", {}).get("running" if busy else "completed"):
                break
            assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "(interrupted: run again to continue)" in out
    assert "stage states in the store:" in out and "items in the store:" in out


@pytest.mark.timeout(120)
def test_serialization_error_hint_says_fix_the_output_not_retry(sqlite_db):
    """After a SerializationError the hint says to fix the stage's output first."""
    res = cli("run", TARGET, *items("unstorable1"), db=sqlite_db)
    assert res.returncode == 1
    assert "unstorable1 fetch: SerializationError" in res.stdout
    assert ("the output of fetch cannot be stored as JSON: fix what the stage returns" in res.stdout)
    assert "a retry of the same code fails again" in res.stdout
    assert "\nretry them with" not in res.stdout


@pytest.mark.timeout(120)
def test_memory_store_suggests_no_command_needing_the_gone_data(tmp_path):
    """On memory:// no hint suggests retry, review or status: the data is gone at exit."""
    res = cli("run", TARGET, *items("fail1", "review1"), db="memory://")
    assert res.returncode == 1, res.stderr
    assert "python -m treadle retry" not in res.stdout
    assert "python -m treadle review" not in res.stdout
    assert "memory:// keeps nothing once this run ends" in res.stdout


@pytest.mark.timeout(120)
def test_log_format_json_logs_item_submitted(sqlite_db):
    """--log-format json logs item_submitted for the items it submits, before their stages."""
    res = cli("run", TARGET, *items("l1", "l2"), "--log-format", "json", db=sqlite_db)
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    names = [(e["event"], e.get("item_id")) for e in events]
    assert ("item_submitted", "l1") in names and ("item_submitted", "l2") in names
    assert names.index(("item_submitted", "l1")) < names.index(("stage_started", "l1"))
