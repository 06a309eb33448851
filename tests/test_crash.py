"""Real-subprocess crash tests: SIGKILL mid-run, two runners on one SQLite file, SIGTERM.

The worker (tests/crash/worker.py) runs the diamond pipeline of
tests/crash/pipeline.py; every stage execution appends ``item stage attempt
pid`` to a side-effect log before it does its work, so the log says exactly
which (item, stage, attempt) ran in which process. The tests compare that log
with the store's history.

The kill points are drawn from a seeded RNG: set ``TREADLE_CRASH_SEED`` to
vary or replay them (the seed is in every failure message).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from treadle import Runner, open_store

HERE = Path(__file__).resolve().parent
WORKER = HERE / "crash" / "worker.py"

_spec = importlib.util.spec_from_file_location("treadle_crash_pipeline", HERE / "crash" / "pipeline.py")
assert _spec is not None and _spec.loader is not None
crash = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(crash)

SEED = int(os.environ.get("TREADLE_CRASH_SEED", "20240611"))

pytestmark = pytest.mark.slow


# -- helpers -------------------------------------------------------------------
def start_worker(db: Path, log: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(db), str(log), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """Wait for ``proc`` (killing it if it overruns) and return its stdout, stderr."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"worker {proc.pid} still running after {timeout} s\nstdout:\n{out}\nstderr:\n{err}")


def report_of(stdout: str) -> dict[str, Any]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    assert lines, f"worker printed no report: {stdout!r}"
    return json.loads(lines[-1])


def log_lines(log: Path) -> int:
    try:
        with open(log, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def read_log(log: Path) -> list[tuple[str, str, int, int]]:
    """(item_id, stage, attempt, pid) per execution, in the order they started."""
    out = []
    for line in log.read_text().splitlines():
        item_id, stage, attempt, pid = line.split()
        out.append((item_id, stage, int(attempt), int(pid)))
    return out


def wait_until(cond: Any, timeout: float, what: str, proc: subprocess.Popen[str] | None = None,
               poll: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def kill_at_targets(start: Callable[[], subprocess.Popen[str]], log: Path, targets: list[int],
                    rng: random.Random, ctx: str, delay: float = 0.03) -> set[int]:
    """Start a worker per target (``start()``) and SIGKILL it once the log has reached the
    target, plus a random delay up to ``delay``; returns the pids whose kill landed mid-run
    (a worker that finished first was not killed)."""
    killed: set[int] = set()
    for target in targets:
        before = log_lines(log)
        proc = start()
        wait_until(lambda: log_lines(log) >= max(target, before + 1), 60,
                   f"log line {target} ({ctx})", proc)
        time.sleep(rng.uniform(0.0, delay))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed.add(proc.pid)
        out, err = finish(proc, 30)
        if proc.returncode == 0:  # it finished before the kill: that kill did not land
            killed.discard(proc.pid)
        else:
            assert proc.returncode == -signal.SIGKILL, (ctx, proc.returncode, out, err)
            assert proc.pid in killed
    return killed


def pid_of(actor: str) -> int:
    """The pid in a runner owner ``host:pid:random``."""
    return int(actor.rsplit(":", 2)[1])


def inspector(db: Path, tail: bool = True) -> tuple[Runner, Any]:
    store = open_store(f"sqlite:///{db}")
    return Runner(crash.build(None, tail=tail), store), store


def check_all_completed_once(runner: Runner, n_items: int, stages: list[str]
                             ) -> dict[tuple[str, str], Any]:
    """Every (item, stage) completed, with exactly one ``completed`` history entry.

    Returns (item, stage) -> that history entry.
    """
    assert runner.counts() == {s: {"completed": n_items} for s in stages}
    completed: dict[tuple[str, str], Any] = {}
    for item in crash.items(n_items):
        item_id = item["id"]
        status = runner.status(item_id)
        for s in stages:
            assert status.stages[s].state == "completed", (item_id, s, status.stages[s])
        done = Counter(h.stage for h in runner.history(item_id) if h.state == "completed")
        assert done == {s: 1 for s in stages}, f"{item_id}: completed transitions {dict(done)}"
        for h in runner.history(item_id):
            if h.state == "completed":
                completed[(item_id, h.stage)] = h
    return completed


def check_outputs(runner: Runner, n_items: int, tail: bool) -> None:
    """Outputs are the deterministic values, and d's output carries b's and c's."""
    for item in crash.items(n_items):
        item_id = item["id"]
        st = runner.status(item_id).stages
        want = crash.expected_outputs(item_id, tail)
        assert {s: st[s].output for s in want} == want
        assert st["d"].output["b"] == st["b"].output
        assert st["d"].output["c"] == st["c"].output
        if tail:
            assert st["e"].output["d"] == st["d"].output


# -- 1. SIGKILL at random moments ------------------------------------------------
N_ITEMS = 60
KILLS = 6


def test_sigkill_mid_run_resumes_with_only_inflight_stages_rerun(tmp_path: Path) -> None:
    """A runner SIGKILLed at random moments resumes: every stage completes once; only in-flight stages re-run."""
    db, log = tmp_path / "crash.db", tmp_path / "effects.log"
    stages = crash.stage_names()
    rng = random.Random(SEED)
    total = N_ITEMS * len(stages)
    # Kill once the log reaches each target (spread over the run), plus a random delay.
    targets = sorted(rng.sample(range(total * 5 // 100, total * 85 // 100), KILLS))
    ctx = f"seed={SEED} targets={targets}"
    killed = kill_at_targets(
        lambda: start_worker(db, log, "--items", str(N_ITEMS), "--sleep-max", "0.02"),
        log, targets, rng, ctx)
    assert len(killed) >= 5, f"only {len(killed)} kills landed mid-run ({ctx})"

    proc = start_worker(db, log, "--items", str(N_ITEMS), "--sleep-max", "0.02")
    out, err = finish(proc, 60)
    assert proc.returncode == 0, (ctx, out, err)
    assert "Traceback" not in err, err
    assert report_of(out)["items"] == {"completed": N_ITEMS}

    runner, store = inspector(db)
    try:
        completed = check_all_completed_once(runner, N_ITEMS, stages)
        check_outputs(runner, N_ITEMS, tail=True)

        runs: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
        for item_id, stage, attempt, pid in read_log(log):
            runs[(item_id, stage)].append((attempt, pid))
        assert set(runs) == set(completed), "some (item, stage) never ran or ran unrecorded"

        reruns = 0
        for key, execs in runs.items():
            attempts = [a for a, _ in execs]
            assert attempts == sorted(set(attempts)), f"{key}: an attempt ran twice: {execs} ({ctx})"
            history = [h for h in runner.history(key[0]) if h.stage == key[1]]
            claimed = {h.attempt: h for h in history if h.state == "running"}
            done = {h.attempt for h in history if h.state == "completed"}
            recovered = {h.attempt for h in history if h.state == "pending" and h.actor == "recovery"}
            for attempt, pid in execs:
                # Each execution ran under a claim of its own process.
                assert attempt in claimed, f"{key} attempt {attempt} ran unclaimed ({ctx})"
                assert pid_of(claimed[attempt].actor) == pid, (key, attempt, claimed[attempt].actor, pid)
            last_attempt, last_pid = execs[-1]
            assert completed[key].attempt == last_attempt, (key, execs, completed[key].attempt)
            assert pid_of(completed[key].actor) == last_pid, (key, execs, completed[key].actor)
            for attempt, pid in execs[:-1]:
                reruns += 1
                # Re-executed: that attempt was claimed, never completed, killed, recovered.
                assert attempt not in done, f"{key} attempt {attempt} completed yet ran again ({ctx})"
                assert pid in killed, f"{key} attempt {attempt} re-ran though pid {pid} was not killed"
                assert attempt in recovered, f"{key} attempt {attempt} re-ran without a recovery"
            # A claim ends by completion or by recovery, nothing else.
            assert set(claimed) == done | recovered, (key, sorted(claimed), done, recovered)
        assert reruns >= 1, f"no kill caught a stage in flight ({ctx})"
    finally:
        store.close()


# -- 2. two runners, one SQLite file ----------------------------------------------
def test_two_runner_processes_share_the_work_and_run_each_stage_once(tmp_path: Path) -> None:
    """Two runner processes started together on one SQLite file split the work and run each stage exactly once."""
    db, log = tmp_path / "shared.db", tmp_path / "effects.log"
    # more ready stages than one runner claims at once (128), so both get work
    n_items, stages = 300, crash.stage_names(tail=False)
    go = tmp_path / "go"
    ready = [tmp_path / "ready-0", tmp_path / "ready-1"]
    procs = [
        start_worker(db, log, "--items", str(n_items), "--no-tail", "--sleep-min", "0.001",
                     "--sleep-max", "0.005", "--ready", str(r), "--go", str(go))
        for r in ready
    ]
    try:
        wait_until(lambda: all(r.exists() for r in ready) or any(p.poll() is not None for p in procs),
                   60, "both workers to be ready")
        go.touch()
        results = [finish(p, 60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    owners = set()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, (out, err)
        assert "Traceback" not in err, err
        rep = report_of(out)
        assert rep["items"] == {"completed": n_items} and not rep["interrupted"], rep
        owners.add(rep["owner"])
    assert len(owners) == 2

    execs = read_log(log)
    per_key = Counter((i, s) for i, s, _, _ in execs)
    twice = {k: n for k, n in per_key.items() if n != 1}
    assert not twice, f"(item, stage) executed more than once: {twice}"
    assert len(per_key) == n_items * len(stages)
    assert {a for _, _, a, _ in execs} == {1}

    runner, store = inspector(db, tail=False)
    try:
        completed = check_all_completed_once(runner, n_items, stages)
        check_outputs(runner, n_items, tail=False)
        actors = Counter(h.actor for h in completed.values())
        assert set(actors) == owners, f"completed by {dict(actors)}, runners were {owners}"
        by_pid = {(i, s): pid for i, s, _, pid in execs}
        for key, h in completed.items():
            assert pid_of(h.actor) == by_pid[key], (key, h.actor, by_pid[key])
        for item in crash.items(n_items):
            assert not [h for h in runner.history(item["id"]) if h.actor == "recovery"]
    finally:
        store.close()


# -- 3. SIGTERM ---------------------------------------------------------------
SLOW = ("--items", "20", "--workers", "2", "--no-tail", "--sleep-min", "0.3", "--sleep-max", "0.5")
GRACE = 4.0


def sigterm_run(db: Path, log: Path) -> tuple[subprocess.Popen[str], str, str, float, int]:
    """Start a slow worker, SIGTERM it once stages are running; return the process,
    its output, the seconds from SIGTERM to exit and the log lines before SIGTERM."""
    proc = start_worker(db, log, *SLOW, "--grace", str(GRACE))
    wait_until(lambda: log_lines(log) >= 1, 60, "the first stage to start", proc)
    assert proc.poll() is None, finish(proc, 5)
    before = log_lines(log)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = finish(proc, GRACE + 30)
    return proc, out, err, time.monotonic() - t0, before


def test_sigterm_stops_within_grace_and_next_run_finishes(tmp_path: Path) -> None:
    """SIGTERM makes a runner stop cleanly within its grace period; a fresh run then finishes every stage once."""
    db, log = tmp_path / "term.db", tmp_path / "effects.log"
    stages = crash.stage_names(tail=False)
    proc, out, err, elapsed, before = sigterm_run(db, log)
    assert proc.returncode == 0, (out, err)
    assert "Traceback" not in err, err
    assert report_of(out)["interrupted"] is True
    assert elapsed <= GRACE + 2.0, f"exited {elapsed:.2f} s after SIGTERM, grace {GRACE} s"

    runner, store = inspector(db, tail=False)
    try:
        counts = runner.counts()
        assert all("running" not in by_state for by_state in counts.values()), counts
        assert counts["d"].get("completed", 0) < 20, "SIGTERM landed after the work was done"
        # The stages already running at SIGTERM had time to finish: they were committed.
        for item_id, stage, attempt, _ in read_log(log)[:before]:
            assert [h.attempt for h in runner.history(item_id)
                    if h.stage == stage and h.state == "completed"] == [attempt], (item_id, stage)
    finally:
        store.close()

    proc = start_worker(db, log, *SLOW[:-4], "--sleep-min", "0", "--sleep-max", "0.002")
    out, err = finish(proc, 60)
    assert proc.returncode == 0, (out, err)
    rep = report_of(out)
    assert rep["interrupted"] is False and rep["items"] == {"completed": 20}, rep

    runner, store = inspector(db, tail=False)
    try:
        check_all_completed_once(runner, 20, stages)
        check_outputs(runner, 20, tail=False)
    finally:
        store.close()


def test_sigterm_starts_no_new_stage(tmp_path: Path) -> None:
    """After SIGTERM no new stage starts, and the runner exits once its running stages finish."""
    db, log = tmp_path / "term.db", tmp_path / "effects.log"
    proc, out, err, elapsed, before = sigterm_run(db, log)
    assert proc.returncode == 0, (out, err)
    started_after = log_lines(log) - before
    # At most one stage per worker thread may slip through between our read and the signal.
    assert started_after <= 2, f"{started_after} stages started after SIGTERM"
    assert elapsed < GRACE, f"exited {elapsed:.2f} s after SIGTERM (grace {GRACE} s)"
