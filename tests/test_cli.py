"""The command line, end to end through subprocesses against a real SQLite file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import run_on_pty

ROOT = Path(__file__).resolve().parent.parent
TARGET = "tests/cli_pipeline.py:pipeline"


def cli(*args: str, db: str | None = None, input: str | None = None, env: dict | None = None,
        cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    if db is not None:
        full_env["TREADLE_DB"] = db
    return subprocess.run([sys.executable, "-m", "treadle", *args], cwd=cwd, env=full_env,
                          input=input, capture_output=True, text=True, timeout=120)


@pytest.fixture
def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def test_run_submits_items_shows_summary_and_exit_status(db):
    """run submits --item and --items, prints a plain summary, exits 1 when items failed."""
    items = '{"id": "big", "size": 50}\n{"id": "bad1"}\n'
    res = cli("run", TARGET, "--item", '{"id": "a", "size": 2}', "--items", "-", input=items, db=db)
    assert res.returncode == 1, res.stderr
    out = res.stdout
    assert "\x1b" not in out  # not a terminal: no control codes
    assert "submitted 3 new item(s)" in out
    assert "bad1 load: RuntimeError: cannot load bad1" in out
    assert "retry them with: python -m treadle retry tests/cli_pipeline.py:pipeline" in out
    assert "1 item(s) await review: python -m treadle review tests/cli_pipeline.py:pipeline" in out
    status = json.loads(cli("status", TARGET, "--json", db=db).stdout)
    assert status["stages"]["save"] == {"completed": 1, "pending": 2}
    assert status["items"] == {"awaiting_review": 1, "completed": 1, "failed": 1}


def test_run_exit_zero_and_db_flag_wins_over_env(tmp_path, db):
    """--db beats $TREADLE_DB; a run without failures exits 0."""
    other = f"sqlite:///{tmp_path / 'other.db'}"
    res = cli("run", TARGET, "--item", '{"id": "a"}', "--db", other, db=db)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "other.db").exists() and not (tmp_path / "cli.db").exists()


def test_status_of_one_item_json_schema(db):
    """status ITEM --json has state, and per stage state, attempts, output, error, review."""
    cli("run", TARGET, "--item", '{"id": "big", "size": 50}', db=db)
    data = json.loads(cli("status", TARGET, "--json", "big", db=db).stdout)  # any order
    assert data["item_id"] == "big" and data["state"] == "awaiting_review"
    assert list(data["stages"]) == ["load", "check", "save"]
    check = data["stages"]["check"]
    assert check["state"] == "awaiting_review" and check["attempts"] == 1
    assert data["stages"]["load"]["duration_s"] >= 0 and data["stages"]["save"]["duration_s"] is None
    assert check["review"]["data"] == {"size": 50} and check["review"]["message"] == "Big one: confirm"
    text = cli("status", TARGET, "big", db=db).stdout
    assert "item big: awaiting_review" in text and "review: waiting" in text


def test_reviews_approve_reject_and_history(db):
    """reviews lists the inbox; approve --data edits; reject stops; history shows it all."""
    cli("run", TARGET, "--item", '{"id": "b1", "size": 20}', "--item", '{"id": "b2", "size": 30}', db=db)
    inbox = json.loads(cli("reviews", TARGET, "--json", db=db).stdout)
    assert [(r["item_id"], r["stage"], r["data"]) for r in inbox] == [
        ("b1", "check", {"size": 20}), ("b2", "check", {"size": 30})]
    res = cli("approve", TARGET, "b1", "check", "--data", '{"size": 21}', "--note", "fix",
              "--reviewer", "ann", db=db)
    assert res.returncode == 0 and "approved b1 at check with edited data" in res.stdout
    assert cli("reject", TARGET, "b2", "check", "--reason", "dup", db=db).returncode == 0
    assert cli("run", TARGET, db=db).returncode == 0
    final = json.loads(cli("status", TARGET, "b1", "--json", db=db).stdout)
    assert final["stages"]["save"]["output"] == {"saved": {"size": 21}}
    hist = json.loads(cli("history", TARGET, "b1", "--json", db=db).stdout)
    decision = [h for h in hist if h["actor"] == "ann"][0]
    assert decision["state"] == "completed" and decision["details"]["note"] == "fix"
    assert decision["details"]["diff"] == [{"op": "replace", "path": "/size", "old": 20, "new": 21}]
    assert json.loads(cli("status", TARGET, "b2", "--json", db=db).stdout)["state"] == "rejected"
    table = cli("history", TARGET, "b1", db=db).stdout
    assert "submitted" in table and "ann" in table


def test_retry_and_rerun(db):
    """retry puts failed stages back; rerun --from resets a stage and its downstream."""
    cli("run", TARGET, "--item", '{"id": "bad9"}', "--item", '{"id": "ok"}', db=db)
    res = cli("retry", TARGET, db=db)
    assert res.returncode == 2 and "--all-failed" in res.stderr
    res = cli("retry", TARGET, "--all-failed", "--yes", db=db)
    assert res.returncode == 0 and "back to pending: 1 (1 at load)" in res.stdout
    res = cli("rerun", TARGET, "ok", "--from", "check", db=db)
    assert res.returncode == 0 and "check, save back to pending" in res.stdout
    data = json.loads(cli("status", TARGET, "ok", "--json", db=db).stdout)
    assert data["stages"]["check"]["state"] == "pending" and data["stages"]["load"]["state"] == "completed"
    assert cli("run", TARGET, db=db).returncode == 1  # bad9 fails again
    data = json.loads(cli("status", TARGET, "ok", "--json", db=db).stdout)
    assert data["stages"]["save"]["state"] == "completed" and data["stages"]["check"]["attempts"] == 2


def test_graph_formats():
    """graph prints text, mermaid and dot."""
    assert "flowchart TD" in cli("graph", TARGET, "--format", "mermaid").stdout
    assert '"load" -> "check";' in cli("graph", TARGET, "--format", "dot").stdout
    text = cli("graph", TARGET).stdout
    assert "   2  check  <- load" in text and "   1  load   (first)" in text


@pytest.mark.parametrize("args, fragment", [
    (["status", "nowhere.py:pipeline"], "No file 'nowhere.py'"),
    (["status", "tests/cli_pipeline.py:nope"], "has no attribute 'nope'. It defines: pipeline"),
    (["status", "no_such_module_xyz:pipeline"], "no module named 'no_such_module_xyz'"),
    (["status", TARGET, "ghost"], "Item 'ghost' is not in pipeline 'cli'"),
    (["approve", TARGET, "ghost", "chek"], "Did you mean 'check'"),
    (["approve", TARGET, "x", "check", "--data", "{bad"], "--data is not valid JSON"),
    (["run", TARGET, "--item", '{"size": 1}'], "Cannot build a Rec"),
    (["status", TARGET, "--db", "postgresql://u:hunter2@127.0.0.1:1/x"], "Cannot use the store postgresql://u:***@127.0.0.1:1/x"),
    (["status", TARGET, "--db", "mysql://u:hunter2@h/x"], "Unknown store URL 'mysql://u:***@h/x'"),
    (["frobnicate", TARGET], ""),
    (["status", TARGET], "no store at sqlite:///"),
    (["status", TARGET, "--db", "bob:hunter2@localhost"], "Unknown store URL 'bob:***@localhost'"),
])
def test_errors_are_one_line_exit_2_no_traceback(args, fragment, db):
    """Bad usage and treadle errors exit 2 with one line on stderr and no traceback."""
    if "ghost" in args or "--data" in args:
        cli("submit", TARGET, "--item", '{"id": "seed"}', db=db)  # the store exists
    res = cli(*args, db=db)
    assert res.returncode == 2
    assert fragment in res.stderr
    assert "Traceback" not in res.stderr
    assert "hunter2" not in res.stderr + res.stdout
    if fragment:
        assert len(res.stderr.strip().splitlines()) == 1


def test_debug_shows_the_traceback(db):
    """--debug prints the traceback of an error."""
    cli("submit", TARGET, "--item", '{"id": "seed"}', db=db)
    res = cli("status", TARGET, "ghost", "--debug", db=db)
    assert res.returncode == 2 and "Traceback" in res.stderr


def test_help_on_every_command():
    """Every command has --help with an example."""
    for command in ("run", "submit", "status", "reviews", "review", "approve", "reject",
                    "retry", "rerun", "history", "graph"):
        res = cli(command, "--help")
        assert res.returncode == 0 and "example:" in res.stdout, command


def test_interactive_review_approves_edits_and_rejects(tmp_path, db):
    """review drives approve / edit ($EDITOR) / reject / skip from stdin."""
    items = [f'{{"id": "r{i}", "size": {20 + i}}}' for i in range(4)]
    cli("run", TARGET, *sum((["--item", i] for i in items), []), db=db)
    editor = tmp_path / "editor.py"
    editor.write_text("import json, sys\np = sys.argv[1]\nd = json.load(open(p))\n"
                      "d['size'] = 99\njson.dump(d, open(p, 'w'))\n")
    answers = "a\ne\nr\nnot needed\ns\n"
    res = cli("review", TARGET, "--reviewer", "zoe", input=answers, db=db,
              env={"EDITOR": f"{sys.executable} {editor}"})
    assert res.returncode == 0, res.stderr
    assert "1 approved, 1 edited, 1 rejected, 0 changes, 1 skipped" in res.stdout
    assert '"size": 20' in res.stdout  # the data was shown
    cli("run", TARGET, db=db)
    state = {i: json.loads(cli("status", TARGET, i, "--json", db=db).stdout) for i in ("r0", "r1", "r2", "r3")}
    assert state["r0"]["stages"]["save"]["output"] == {"saved": {"size": 20}}
    assert state["r1"]["stages"]["save"]["output"] == {"saved": {"size": 99}}
    assert state["r2"]["state"] == "rejected" and state["r2"]["stages"]["check"]["review"]["note"] == "not needed"
    assert state["r3"]["state"] == "awaiting_review"
    assert state["r1"]["stages"]["check"]["review"]["reviewer"] == "zoe"


def test_interactive_review_rejects_invalid_json_edit(tmp_path, db):
    """An edit that is not valid JSON is not applied; declining to re-edit leaves it waiting."""
    cli("run", TARGET, "--item", '{"id": "j", "size": 40}', db=db)
    editor = tmp_path / "bad_editor.py"
    editor.write_text("import sys\nopen(sys.argv[1], 'w').write('{not json')\n")
    res = cli("review", TARGET, input="e\nn\nq\n", db=db, env={"EDITOR": f"{sys.executable} {editor}"})
    assert "not valid JSON" in res.stdout
    assert json.loads(cli("status", TARGET, "j", "--json", db=db).stdout)["state"] == "awaiting_review"


def test_run_logs_one_json_line_per_transition(db):
    """--log-format json prints one JSON object per transition with the documented keys."""
    res = cli("run", TARGET, "--item", '{"id": "a"}', "--item", '{"id": "bad2"}',
              "--log-format", "json", db=db)
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    events = [(e["event"], e.get("item_id"), e.get("stage")) for e in lines]
    assert ("stage_completed", "a", "save") in events
    failed = [e for e in lines if e["event"] == "stage_failed"][0]
    assert failed["item_id"] == "bad2" and failed["error"] == "RuntimeError: cannot load bad2"
    assert failed["attempt"] == 1 and failed["level"] == "warning"
    assert sum(1 for e in events if e[0] == "stage_started") == 4


def test_progress_display_on_a_terminal(db):
    """Under a pseudo-terminal, run redraws progress in place and ends with the final counts."""
    env = {**os.environ, "TREADLE_DB": db}
    env.pop("NO_COLOR", None)
    code, out = run_on_pty(["-m", "treadle", "run", TARGET, "--item", '{"id": "p1"}',
                            "--item", '{"id": "p2"}'], env)
    assert code == 0
    assert "\x1b[2K" in out  # redrawn in place
    assert "━" in out  # a bar per stage
    for stage in ("load", "check", "save"):
        assert re.search(stage + r" .*2/2", out), out  # done / total
    assert "this run executed 6 stage and subtask run(s): 6 stage(s) completed" in out


def test_run_item_id_advances_just_that_item(db):
    """run --item-id ID moves only that item."""
    cli("submit", TARGET, "--item", '{"id": "one"}', "--item", '{"id": "two"}', db=db)
    res = cli("run", TARGET, "--item-id", "two", db=db)
    assert res.returncode == 0, res.stderr
    assert json.loads(cli("status", TARGET, "two", "--json", db=db).stdout)["state"] == "completed"
    assert json.loads(cli("status", TARGET, "one", "--json", db=db).stdout)["state"] == "pending"


def test_run_watch_picks_up_new_items_until_interrupted(db):
    """run --watch keeps going: items submitted later are run; Ctrl-C ends it cleanly."""
    import signal as sig

    env = {**os.environ, "TREADLE_DB": db}
    proc = subprocess.Popen([sys.executable, "-m", "treadle", "run", TARGET, "--watch"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        assert cli("submit", TARGET, "--item", '{"id": "late"}', db=db).returncode == 0
        deadline = time.time() + 30
        while True:
            res = cli("status", TARGET, "late", "--json", db=db)
            if res.returncode == 0 and json.loads(res.stdout)["state"] == "completed":
                break
            assert time.time() < deadline, "the watching runner did not pick up the new item"
            time.sleep(0.2)
        proc.send_signal(sig.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err  # interrupted, as documented
    assert "Traceback" not in err
    assert "items in the store: 1 completed" in out


def _has_started(db: str, pipeline: str) -> bool:
    """True once a stage of ``pipeline`` has been claimed in the store at ``db``."""
    import sqlite3

    path = db.removeprefix("sqlite:///")
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=5)) as conn:
            row = conn.execute("SELECT count(*) FROM treadle_history WHERE pipeline=? "
                               "AND state='running'", (pipeline,)).fetchone()
    except sqlite3.Error:  # not created yet
        return False
    return bool(row[0])


def test_interrupted_run_exits_130_and_says_so(tmp_path, db):
    """Ctrl-C during run: exit status 130 and a summary saying to run again."""
    import signal as sig

    target = tmp_path / "slowpipe.py"
    target.write_text("import time\nfrom treadle import Pipeline, stage\n\n"
                      "@stage()\ndef slow(item):\n    time.sleep(0.5)\n\n"
                      "pipeline = Pipeline('slowcli', [slow])\n")
    items = "".join(f'{{"id": "s{i}"}}\n' for i in range(20))
    env = {**os.environ, "TREADLE_DB": db}
    proc = subprocess.Popen([sys.executable, "-m", "treadle", "run", f"{target}:pipeline",
                             "--items", "-", "--workers", "2"], cwd=tmp_path, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    proc.stdin.write(items)
    proc.stdin.close()
    deadline = time.time() + 60  # until the run has started stages (slow on a loaded machine)
    while not _has_started(db, "slowcli"):
        assert time.time() < deadline and proc.poll() is None, "the run did not start"
        time.sleep(0.1)
    proc.send_signal(sig.SIGINT)
    out = proc.stdout.read()
    proc.wait(timeout=30)
    assert proc.returncode == 130, proc.stderr.read()
    assert "interrupted: run again to continue" in out


def test_interactive_review_requests_changes(db):
    """The 'changes' choice sends the stage back with the reviewer's feedback."""
    cli("run", TARGET, "--item", '{"id": "ch", "size": 30}', db=db)
    res = cli("review", TARGET, "--reviewer", "kim", input="c\n\nc\nsmaller please\n", db=db)
    assert "changes need feedback" in res.stdout and "1 changes" in res.stdout
    hist = json.loads(cli("history", TARGET, "ch", "--json", db=db).stdout)
    asked = [h for h in hist if h["state"] == "changes_requested"]
    assert asked[0]["details"] == {"feedback": "smaller please", "reviewer": "kim"}
