"""PostgreSQL: many runner processes on one database, crashes, pauses, lost connections."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from treadle import Runner, open_store

from .crash import pipeline as crash_pipeline

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
WORKER = str(ROOT / "tests" / "crash" / "worker.py")


def executions(log: Path) -> Counter[tuple[str, str]]:
    """How many times each (item, stage) started, from the side-effect log."""
    if not log.exists():
        return Counter()
    return Counter((p[0], p[1]) for p in (line.split() for line in log.read_text().splitlines()) if p)


def start_worker(url: str, log: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, WORKER, url, str(log), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def completions(url: str, tail: bool = False) -> dict[tuple[str, str], list[str]]:
    """Per (item, stage): the actors of its recorded 'completed' transitions."""
    runner = Runner(crash_pipeline.build(tail=tail), open_store(url))
    out: dict[tuple[str, str], list[str]] = {}
    for status in runner.items(limit=None):
        for h in runner.history(status.item_id):
            if h.state == "completed" and h.subtask is None:
                out.setdefault((h.item_id, h.stage), []).append(h.actor)
    return out


def test_four_runner_processes_run_each_stage_exactly_once(postgres_url, tmp_path):
    """4 processes x 4 threads finish 2,000 (item, stage) executions, none twice."""
    log, go = tmp_path / "effects.log", tmp_path / "go"
    procs = [start_worker(postgres_url, log, "--items", "500", "--no-tail", "--workers", "4",
                          "--sleep-max", "0.002", "--ready", str(tmp_path / f"ready{i}"),
                          "--go", str(go)) for i in range(4)]
    deadline = time.time() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(4)):
        assert time.time() < deadline, "workers did not get ready"
        time.sleep(0.05)
    go.write_text("go")
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [o[1][-2000:] for o in outs]
    runs = executions(log)
    assert len(runs) == 2000 and set(runs.values()) == {1}
    done = completions(postgres_url)
    assert len(done) == 2000 and all(len(a) == 1 for a in done.values())
    owners = {json.loads(o[0].strip().splitlines()[-1])["owner"] for o in outs}
    actors = {a[0] for a in done.values()}
    assert actors <= owners and len(actors) >= 2, "the work was not shared"


def test_killed_runner_claims_are_taken_over_by_a_live_runner(postgres_url, tmp_path):
    """SIGKILL one runner: another, still running, takes over; re-runs only what was in flight."""
    log = tmp_path / "effects.log"
    slow = ("--items", "60", "--no-tail", "--workers", "3", "--sleep-min", "0.02",
            "--sleep-max", "0.06", "--lease", "3")
    victim = start_worker(postgres_url, log, *slow)
    deadline = time.time() + 60
    while sum(executions(log).values()) < 20:
        assert time.time() < deadline
        time.sleep(0.01)
    survivor = start_worker(postgres_url, log, *slow)
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    out, err = survivor.communicate(timeout=180)
    assert survivor.returncode == 0, err[-2000:]
    runs = executions(log)
    assert len(runs) == 240
    done = completions(postgres_url)
    assert len(done) == 240 and all(len(a) == 1 for a in done.values())
    # Only work the victim had in flight (started, result not committed) ran again:
    # every earlier execution of a re-run stage was the victim's, and it never
    # recorded a completion for that stage.
    by_key: dict[tuple[str, str], list[str]] = {}
    for item, stage_name, _attempt, pid in (l.split() for l in log.read_text().splitlines()):
        by_key.setdefault((item, stage_name), []).append(pid)
    rerun = {k: pids for k, pids in by_key.items() if len(pids) > 1}
    assert rerun, "the kill landed when nothing was in flight; nothing was taken over"
    for key, pids in rerun.items():
        assert set(pids[:-1]) == {str(victim.pid)}, key
        assert not done[key][0].split(":")[1] == str(victim.pid), key
    assert len(rerun) <= 3 + 128, "more re-runs than the victim could have had in flight"


def test_paused_runner_loses_its_claims_and_its_late_results_are_refused(postgres_url, tmp_path):
    """SIGSTOP past the lease: others take over; after SIGCONT its results are refused."""
    log = tmp_path / "effects.log"
    common = ("--items", "30", "--no-tail", "--workers", "2", "--lease", "1.5")
    paused = start_worker(postgres_url, log, *common, "--sleep-min", "0.2", "--sleep-max", "0.3")
    deadline = time.time() + 60
    while sum(executions(log).values()) < 4:
        assert time.time() < deadline
        time.sleep(0.01)
    paused.send_signal(signal.SIGSTOP)
    try:
        time.sleep(2.0)  # past its 1.5 s lease
        other = start_worker(postgres_url, log, *common, "--sleep-max", "0.01")
        out, err = other.communicate(timeout=180)
        assert other.returncode == 0, err[-2000:]
    finally:
        paused.send_signal(signal.SIGCONT)
    out, err = paused.communicate(timeout=120)
    assert paused.returncode == 0, err[-2000:]
    done = completions(postgres_url)
    assert len(done) == 120 and all(len(a) == 1 for a in done.values())
    runner = Runner(crash_pipeline.build(tail=False), open_store(postgres_url))
    refused = [h for s in runner.items(limit=None) for h in runner.history(s.item_id)
               if h.actor == "recovery"]
    assert refused, "the paused runner's claims were never taken over"
    assert runner.counts()["d"] == {"completed": 30}


def test_runner_survives_its_connection_being_terminated(postgres_url, tmp_path):
    """pg_terminate_backend under a running runner: it reconnects and finishes; nothing lost."""
    import psycopg2

    app = f"treadle_kill_{os.getpid()}"
    sep = "&" if "?" in postgres_url else "?"
    url = f"{postgres_url}{sep}application_name={app}"
    log = tmp_path / "effects.log"
    pipe = crash_pipeline.build(str(log), sleep_max=0.01, tail=False)
    runner = Runner(pipe, open_store(url), workers=3)
    runner.submit(*crash_pipeline.items(40))
    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.setdefault("report", runner.run()))
    thread.start()
    admin = psycopg2.connect(os.environ["TREADLE_TEST_POSTGRES_URL"])
    admin.autocommit = True
    killed = 0
    deadline = time.time() + 60
    while sum(executions(log).values()) < 60 and time.time() < deadline:
        time.sleep(0.01)
    for _ in range(3):
        cur = admin.cursor()
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name=%s",
                    (app,))
        killed += sum(1 for (ok,) in cur.fetchall() if ok)
        time.sleep(0.2)
    admin.close()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert killed >= 1
    assert runner.counts()["d"] == {"completed": 40}
    done = completions(url)
    assert len(done) == 160 and all(len(a) == 1 for a in done.values())
