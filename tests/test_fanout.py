"""Fan-out: per-subtask tracking, partial retry, concurrency, crash safety, scale."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest

from treadle import FanOut, ItemState, Pipeline, Runner, StageState, SubTask, open_store, stage
from treadle.testing import capture_signals

from .procs import Script, import_from

ROOT = Path(__file__).resolve().parent.parent


def make_enrich(calls: list[str], broken: set[str]):
    def source(name: str):
        def fetch():
            calls.append(name)
            if name in broken:
                raise ConnectionError(f"{name} is down")
            return {"from": name}
        return fetch

    @stage()
    def enrich(item):
        return FanOut({n: source(n) for n in ("mb", "discogs", "lastfm", "acoustid", "wiki")})

    @stage(after=[enrich])
    def join(item, ctx):
        return sorted(ctx.outputs["enrich"])

    return Pipeline("enrich", [enrich, join])


def test_two_of_five_fail_then_retry_reruns_exactly_those(store):
    """Failed subtasks fail the stage; retry reruns only them; the join sees all five."""
    calls: list[str] = []
    broken = {"discogs", "wiki"}
    runner = Runner(make_enrich(calls, broken), store, workers=3)
    runner.submit({"id": 1})
    with capture_signals() as rec:
        report = runner.run()
    assert report.failed == 1
    st = runner.status(1).stages["enrich"]
    assert st.state == StageState.FAILED
    assert st.error == ("2 of 5 subtasks failed (discogs: ConnectionError: discogs is down; "
                        "wiki: ConnectionError: wiki is down)")
    assert {n: s.state.value for n, s in st.subtasks.items()} == {
        "mb": "completed", "discogs": "failed", "lastfm": "completed", "acoustid": "completed",
        "wiki": "failed"}
    assert st.subtasks["wiki"].error == "ConnectionError: wiki is down"
    assert runner.status(1).stages["join"].state == StageState.PENDING
    assert sorted(e.data["subtask"] for e in rec.of("subtask_failed")) == ["discogs", "wiki"]
    assert len(rec.of("subtask_started")) == 5 and len(rec.of("subtask_completed")) == 3

    broken.clear()
    calls.clear()
    runner.retry(1, stage="enrich")
    runner.run()
    assert sorted(calls) == ["discogs", "wiki"]
    final = runner.status(1)
    assert final.state == ItemState.COMPLETED
    assert final.stages["join"].output == ["acoustid", "discogs", "lastfm", "mb", "wiki"]
    assert final.stages["enrich"].output["wiki"] == {"from": "wiki"}
    assert final.stages["enrich"].subtasks["wiki"].attempts == 2
    assert final.stages["enrich"].subtasks["mb"].attempts == 1
    subtask_history = [(h.subtask, h.state, h.attempt) for h in runner.history(1) if h.subtask == "wiki"]
    assert subtask_history == [("wiki", "running", 1), ("wiki", "failed", 1),
                               ("wiki", "running", 2), ("wiki", "completed", 2)]


def test_new_names_run_and_vanished_names_are_dropped(store):
    """On retry a rebuilt FanOut runs new names and records vanished ones as dropped."""
    version = {"names": ["a", "b", "gone"], "fail": {"b"}}

    def sub(n):
        def f():
            if n in version["fail"]:
                raise RuntimeError(n)
            return n
        return f

    @stage()
    def fan(item):
        return FanOut({n: sub(n) for n in version["names"]})

    runner = Runner(Pipeline("evolving", [fan]), store)
    runner.submit({"id": 1})
    runner.run()
    version.update(names=["a", "b", "new"], fail=set())
    runner.retry(1)
    runner.run()
    st = runner.status(1).stages["fan"]
    assert st.state == StageState.COMPLETED and st.output == {"a": "a", "b": "b", "new": "new"}
    assert list(st.subtasks) == ["a", "b", "new"]
    dropped = [h for h in runner.history(1) if h.state == "dropped"]
    assert [(h.subtask, h.details) for h in dropped] == [("gone", {"reason": "no longer in the FanOut"})]


def test_duplicate_subtask_names_fail_the_stage(store):
    """Two subtasks with one name are the stage's failure, with a clear error."""

    @stage()
    def fan(item):
        return FanOut([SubTask("x", len, "ab"), SubTask("x", len, "cd")])

    runner = Runner(Pipeline("dups", [fan]), store)
    runner.submit({"id": 1})
    runner.run()
    assert "two subtasks named 'x'" in runner.status(1).stages["fan"].error


def test_subtasks_of_different_items_run_concurrently(store):
    """Subtasks of two items overlap in time (proven with a barrier, not timing)."""
    barrier = threading.Barrier(4, timeout=10)

    def meet():
        barrier.wait()
        return "met"

    @stage()
    def fan(item):
        return FanOut({"one": meet, "two": meet})

    runner = Runner(Pipeline("meet", [fan]), store, workers=4)
    runner.submit({"id": 1}, {"id": 2})
    report = runner.run()
    assert report.failed == 0, report.failures
    assert all(runner.status(i).stages["fan"].output == {"one": "met", "two": "met"} for i in (1, 2))


def test_thousand_subtasks(store):
    """A fan-out of 1,000 subtasks completes and its output has 1,000 entries."""

    @stage()
    def fan(item):
        return FanOut([SubTask(f"t{i}", pow, i, 2) for i in range(1000)])

    @stage(after=[fan])
    def total(item, ctx):
        return sum(ctx.outputs["fan"].values())

    runner = Runner(Pipeline("big", [fan, total]), store, workers=4)
    runner.submit({"id": 1})
    runner.run()
    st = runner.status(1)
    assert len(st.stages["fan"].output) == 1000
    assert st.stages["total"].output == sum(i * i for i in range(1000))


def test_empty_fanout_completes_with_empty_output(store):
    """FanOut({}) completes at once with {}."""

    @stage()
    def fan(item):
        return FanOut({})

    runner = Runner(Pipeline("empty", [fan]), store)
    runner.submit({"id": 1})
    runner.run()
    assert runner.status(1).stages["fan"].output == {}


@pytest.mark.slow
def test_sigkill_during_fanout_does_not_rerun_completed_subtasks(tmp_path):
    """After SIGKILL mid fan-out, resuming runs only subtasks that had not completed."""
    db = f"sqlite:///{tmp_path / 'fan.db'}"
    script = Script(ROOT / "tests" / "fanout" / "slow_fanout.py", db, tmp_path / "fan.log",
                    "FANOUT_LOG")
    script.kill_after(12)
    slow_fanout = import_from(ROOT / "tests" / "fanout", "slow_fanout")
    runner = Runner(slow_fanout.pipeline, open_store(db))
    before = runner.status("only").stages["spread"].subtasks
    completed_before = {n for n, s in before.items() if s.state == "completed"}
    assert 0 < len(completed_before) < 50
    script.run()
    runs = Counter(script.lines())
    assert set(runs) == {f"s{i:02d}" for i in range(50)}
    for name in completed_before:
        assert runs[name] == 1, f"{name} completed before the kill but ran again"
    # re-executions only for subtasks that were in flight at the kill (at most the pool's width)
    assert sum(n - 1 for n in runs.values()) <= 4
    final = runner.status("only")
    assert final.state == ItemState.COMPLETED and final.stages["gather"].output == 50
