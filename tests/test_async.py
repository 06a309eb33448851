"""Async stages: ``async def`` wherever a function goes, on the runner's event loop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from treadle import (
    FanOut,
    Pipeline,
    Review,
    Runner,
    SubTask,
    open_store,
    stage,
)
from treadle.states import StageState
from treadle.verdicts import Accepted, Rejected

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(90)


class InFlight:
    """Counts coroutines inside a stage at once (on the event loop: no lock needed)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    async def hold(self, seconds: float) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1


def test_a_thousand_coroutines_wait_at_once_with_four_workers(store_url):
    """1,000 items awaiting 0.2 s each with workers=4: hundreds are in flight at once."""
    seen = InFlight()

    @stage()
    async def call_api(item):
        await seen.hold(0.2)
        return {"id": item["id"]}

    runner = Runner(Pipeline("many", [call_api]), open_store(store_url), workers=4)
    runner.submit(*({"id": i} for i in range(1000)))
    report = runner.run()
    assert report.completed == 1000
    assert seen.peak >= 500, seen.peak
    assert runner.status(999).stages["call_api"].output == {"id": 999}


def test_concurrency_limits_coroutines_too():
    """``@stage(concurrency=50)`` holds for async stages."""
    seen = InFlight()

    @stage(concurrency=50)
    async def call_api(item):
        await seen.hold(0.05)
        return 1

    runner = Runner(Pipeline("limited", [call_api]), open_store("memory://"), workers=4)
    runner.submit(*({"id": i} for i in range(300)))
    assert runner.run().completed == 300
    assert 1 < seen.peak <= 50, seen.peak


def test_a_timeout_cancels_the_coroutine_and_retry_applies(store_url):
    """At the timeout the coroutine is cancelled (its finally runs), the attempt fails
    with StageTimeout, and the retry policy runs it again."""
    cleaned: list[int] = []

    @stage(timeout=0.2, retry=3)
    async def slow(item, ctx):
        try:
            if ctx.attempt < 3:
                await asyncio.sleep(30)
            return ctx.attempt
        finally:
            cleaned.append(ctx.attempt)

    runner = Runner(Pipeline("timeouts", [slow]), open_store(store_url))
    runner.submit({"id": "x"})
    started = time.monotonic()
    runner.run()
    assert time.monotonic() - started < 20
    st = runner.status("x").stages["slow"]
    assert st.state == StageState.COMPLETED and st.output == 3
    assert cleaned == [1, 2, 3]
    errors = [h.error for h in runner.history("x") if h.state == "failed"]
    assert errors == ["StageTimeout: timed out after 0.2 s"] * 2


def test_mixed_sync_and_async_diamond(store_url):
    """Sync and async stages mix; results are committed before dependents start."""
    @stage()
    def read(item):
        return item["n"]

    @stage(after=[read])
    async def double(item, ctx):
        await asyncio.sleep(0.01)
        return ctx.outputs["read"] * 2

    @stage(after=[read])
    def square(item, ctx):
        return ctx.outputs["read"] ** 2

    @stage(after=[double, square], when=lambda item: item["n"] != 0)
    async def join(item, ctx):
        return ctx.outputs["double"] + ctx.outputs["square"]

    runner = Runner(Pipeline("diamond", [read, double, square, join]), open_store(store_url))
    runner.submit(*({"id": i, "n": i} for i in range(10)))
    report = runner.run()
    assert report.failed == 0
    assert runner.status(3).stages["join"].output == 15
    assert runner.status(0).stages["join"].state == StageState.SKIPPED


def test_async_condition_is_awaited(store_url):
    """An ``async def`` ``when=`` predicate is awaited."""
    async def wanted(item):
        await asyncio.sleep(0)
        return item["id"] % 2 == 0

    @stage(when=wanted)
    def only_even(item):
        return item["id"]

    runner = Runner(Pipeline("aw", [only_even]), open_store(store_url))
    runner.submit(*({"id": i} for i in range(4)))
    runner.run()
    assert runner.status(2).stages["only_even"].state == StageState.COMPLETED
    assert runner.status(1).stages["only_even"].state == StageState.SKIPPED


def test_async_fan_out_subtasks_with_partial_retry(store_url):
    """Async subtasks run on the loop; a retry re-runs only the failed one."""
    calls: Counter[str] = Counter()
    fail = {"b": True}

    async def fetch(name: str) -> str:
        calls[name] += 1
        await asyncio.sleep(0.01)
        if fail.get(name):
            raise ConnectionError(f"{name} is down")
        return name.upper()

    @stage()
    def enrich(item):
        return FanOut([SubTask(n, fetch, n) for n in ("a", "b", "c")])

    runner = Runner(Pipeline("afan", [enrich]), open_store(store_url))
    runner.submit({"id": "x"})
    runner.run()
    st = runner.status("x").stages["enrich"]
    assert st.state == StageState.FAILED
    assert "ConnectionError: b is down" in st.subtasks["b"].error
    fail["b"] = False
    runner.retry("x")
    runner.run()
    st = runner.status("x").stages["enrich"]
    assert st.state == StageState.COMPLETED
    assert st.output == {"a": "A", "b": "B", "c": "C"}
    assert calls == {"a": 1, "b": 2, "c": 1}


def test_async_gate_gives_feedback(store_url):
    """An async gate judges outputs; its feedback reaches the next attempt."""
    async def gate(item, output, ctx):
        await asyncio.sleep(0)
        return Accepted() if output >= 2 else Rejected("too small")

    @stage(gate=gate, retry=3)
    async def guess(item, ctx):
        return len(ctx.feedback) + 1

    runner = Runner(Pipeline("agate", [guess]), open_store(store_url))
    runner.submit({"id": "x"})
    runner.run()
    st = runner.status("x").stages["guess"]
    assert st.state == StageState.COMPLETED and st.output == 2


def test_async_rollback_runs(store_url):
    """An async rollback compensates a completed stage when the item fails."""
    undone: list[str] = []

    async def unbook(item):
        await asyncio.sleep(0)
        undone.append(item["id"])

    @stage(rollback=unbook)
    async def book(item):
        return "booked"

    @stage(after=[book])
    async def pay(item):
        raise RuntimeError("card declined")

    runner = Runner(Pipeline("arb", [book, pay], on_failure="rollback"), open_store(store_url))
    runner.submit({"id": "x"})
    runner.run()
    assert undone == ["x"]
    assert runner.status("x").stages["book"].state == StageState.ROLLED_BACK


def test_async_review_then_approve(store_url):
    """An async stage may ask for review like any other."""
    @stage()
    async def draft(item):
        return Review({"title": "t"}, message="check")

    runner = Runner(Pipeline("arev", [draft]), open_store(store_url))
    runner.submit({"id": "x"})
    assert runner.run().awaiting_review == 1
    runner.approve("x", "draft", data={"title": "T"})
    assert runner.status("x").stages["draft"].output == {"title": "T"}


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="needs the main thread for SIGINT")
def test_shutdown_cancels_coroutines_and_keeps_their_attempt(tmp_path):
    """Ctrl-C: after the grace period, coroutines still waiting are cancelled (their
    finally runs) and their claims go back without using up an attempt."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    cancelled: list[int] = []

    @stage()
    async def wait(item):
        if item["id"] == 0:
            os.kill(os.getpid(), signal.SIGINT)
        try:
            await asyncio.sleep(30)
        finally:
            cancelled.append(item["id"])

    runner = Runner(Pipeline("ashut", [wait]), open_store(url), grace=0.3)
    runner.submit(*({"id": i} for i in range(20)))
    report = runner.run()
    assert report.interrupted
    states = [runner.status(i).stages["wait"] for i in range(20)]
    assert all(s.state == StageState.PENDING for s in states)
    assert all(s.attempts == 0 for s in states)
    assert sorted(cancelled) == list(range(20))


def test_async_limit_must_be_positive():
    """``async_limit`` is validated."""
    @stage()
    async def a(item):
        return 1

    with pytest.raises(ValueError, match="async_limit"):
        Runner(Pipeline("al", [a]), open_store("memory://"), async_limit=0)


@pytest.mark.slow
def test_sigkill_with_hundreds_of_coroutines_in_flight(tmp_path):
    """SIGKILL with 500 coroutines in flight: the next run re-runs only those, and no
    stage completes twice."""
    db, log = tmp_path / "aio.db", tmp_path / "aio.log"
    env = {**os.environ, "TREADLE_AIO_LOG": str(log), "PYTHONPATH": str(ROOT)}
    script = ROOT / "tests" / "aio" / "inflight.py"
    # the killed run's coroutines wait long enough that none can finish before the kill
    proc = subprocess.Popen([sys.executable, str(script), str(db)],
                            env={**env, "TREADLE_AIO_SLEEP": "30"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = log.read_text().split("\n") if log.exists() else []
        if sum(1 for ln in lines if ln.startswith("start")) >= 500:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    first = log.read_text().split("\n")
    assert not [ln for ln in first if ln.startswith("done")], "killed too late"
    subprocess.run([sys.executable, str(script), str(db)], env={**env, "TREADLE_AIO_SLEEP": "0.05"},
                   check=True, timeout=120)
    lines = [ln for ln in log.read_text().split("\n") if ln]
    starts = Counter(ln.split()[1] for ln in lines if ln.startswith("start"))
    assert set(starts.values()) == {2}  # once in the killed run, once again: only those
    assert Counter(ln.split()[1] for ln in lines if ln.startswith("done")) == Counter(
        {str(i): 1 for i in range(500)})
    runner = Runner(_inflight_pipeline(), open_store(f"sqlite:///{db}"))
    for i in range(500):
        completed = [h for h in runner.history(i) if h.state == "completed"]
        assert Counter(h.stage for h in completed) == {"wait": 1, "after": 1}


def _inflight_pipeline() -> Any:
    sys.path.insert(0, str(ROOT / "tests" / "aio"))
    try:
        import inflight  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    return inflight.pipeline


def test_generator_functions_are_refused_at_decoration():
    """An ``async def`` with ``yield`` (or a plain generator) cannot be a stage."""
    from treadle import PipelineDefinitionError

    async def agen(item):
        yield 1

    def gen(item):
        yield 1

    for fn in (agen, gen):
        with pytest.raises(PipelineDefinitionError, match="generator function"):
            stage()(fn)
