"""Retries (with tenacity policies), timeouts and concurrency limits."""

from __future__ import annotations

import threading
import time

import pytest
from tenacity import retry_if_exception_type, stop_after_attempt, wait_fixed

from treadle import FanOut, ItemState, Pipeline, Runner, StageState, stage
from treadle.contrib.retry import RetryPolicy
from treadle.testing import capture_signals


def test_fails_twice_then_succeeds_within_three_attempts(store):
    """retry=stop_after_attempt(3): two failures then success; history has all three."""
    calls = {"n": 0}

    @stage(retry=RetryPolicy(stop=stop_after_attempt(3), wait=wait_fixed(0)))
    def flaky(item, ctx):
        calls["n"] += 1
        assert ctx.attempt == calls["n"]
        if calls["n"] < 3:
            raise ConnectionError(f"try {calls['n']}")
        return "ok"

    runner = Runner(Pipeline("r", [flaky]), store)
    runner.submit({"id": 1})
    with capture_signals() as rec:
        report = runner.run()
    assert report.failed == 0
    st = runner.status(1).stages["flaky"]
    assert st.state == StageState.COMPLETED and st.attempts == 3 and st.output == "ok"
    hist = [(h.state, h.attempt, h.error) for h in runner.history(1) if h.stage == "flaky"]
    assert hist == [("running", 1, None), ("failed", 1, "ConnectionError: try 1"),
                    ("running", 2, None), ("failed", 2, "ConnectionError: try 2"),
                    ("running", 3, None), ("completed", 3, None)]
    assert [e.data["final"] for e in rec.of("stage_failed")] == [False, False]


def test_int_retry_is_attempts_in_all_and_exhaustion_fails(store):
    """retry=2 means two attempts; then the stage fails for good and dependents wait."""
    calls = []

    @stage(retry=2)
    def always(item):
        calls.append(1)
        raise ValueError("nope")

    @stage(after=[always])
    def after(item):
        raise AssertionError("must not run")

    runner = Runner(Pipeline("x", [always, after]), store)
    runner.submit({"id": 1})
    with capture_signals() as rec:
        report = runner.run()
    assert len(calls) == 2 and report.failed == 1
    st = runner.status(1)
    assert st.state == ItemState.FAILED and st.stages["always"].attempts == 2
    assert st.stages["after"].state == StageState.PENDING
    assert [e.data["final"] for e in rec.of("stage_failed")] == [False, True]


def test_only_matching_errors_are_retried(store):
    """retry_if_exception_type limits which errors get another attempt."""
    calls = []

    @stage(retry=RetryPolicy(stop=stop_after_attempt(5), wait=wait_fixed(0),
                             retry=retry_if_exception_type(ConnectionError)))
    def picky(item):
        calls.append(1)
        raise KeyError("not retryable")

    runner = Runner(Pipeline("p", [picky]), store)
    runner.submit({"id": 1})
    runner.run()
    assert len(calls) == 1


def test_retry_wait_does_not_block_other_items(store):
    """While one item waits 2 s to retry, other items' stages complete (event order)."""
    state = {"failed_once": False}

    @stage(retry=RetryPolicy(stop=stop_after_attempt(2), wait=wait_fixed(2)))
    def work(item):
        if item["id"] == "slow" and not state["failed_once"]:
            state["failed_once"] = True
            raise TimeoutError("upstream busy")
        return item["id"]

    @stage(after=[work])
    def after(item, ctx):
        return ctx.outputs["work"]

    runner = Runner(Pipeline("w", [work, after]), store, workers=1)
    runner.submit({"id": "slow"}, *({"id": f"fast{i}"} for i in range(5)))
    with capture_signals() as rec:
        runner.run()
    order = [(e.name, e.data.get("item_id"), e.data.get("stage")) for e in rec.events
             if e.name in ("stage_failed", "stage_completed")]
    retry_at = order.index(("stage_failed", "slow", "work"))
    slow_done = order.index(("stage_completed", "slow", "work"))
    between = {i for n, i, s in order[retry_at:slow_done] if n == "stage_completed"}
    assert {f"fast{i}" for i in range(5)} <= between
    assert runner.status("slow").state == ItemState.COMPLETED


def test_subtasks_retry_on_their_own(store):
    """A subtask's retry policy reruns only that subtask."""
    calls = {"a": 0, "b": 0}

    def sub(name, fails):
        def f():
            calls[name] += 1
            if calls[name] <= fails:
                raise ConnectionError(name)
            return name
        return f

    @stage(retry=RetryPolicy(stop=stop_after_attempt(3), wait=wait_fixed(0)))
    def fan(item):
        return FanOut({"a": sub("a", 0), "b": sub("b", 2)})

    runner = Runner(Pipeline("f", [fan]), store)
    runner.submit({"id": 1})
    runner.run()
    st = runner.status(1).stages["fan"]
    assert st.state == StageState.COMPLETED and st.output == {"a": "a", "b": "b"}
    assert calls == {"a": 1, "b": 3}
    assert st.subtasks["b"].attempts == 3 and st.subtasks["a"].attempts == 1


def test_timeout_fails_the_stage_sets_cancelled_and_does_not_hold_the_run(store):
    """A stage past its timeout fails with StageTimeout; ctx.cancelled is set."""
    seen = {}
    release, observed = threading.Event(), threading.Event()

    @stage(timeout=0.3)
    def slow(item, ctx):
        if item["id"] == "stuck":
            seen["cancelled"] = ctx.cancelled.wait(10)
            observed.set()
            release.wait(10)
        return "done"

    runner = Runner(Pipeline("t", [slow]), store, workers=2)
    runner.submit({"id": "stuck"}, {"id": "quick"})
    started = time.monotonic()
    report = runner.run()
    assert time.monotonic() - started < 5
    release.set()
    assert observed.wait(10) and seen["cancelled"] is True
    st = runner.status("stuck").stages["slow"]
    assert st.state == StageState.FAILED and st.error == "StageTimeout: timed out after 0.3 s"
    assert runner.status("quick").stages["slow"].state == StageState.COMPLETED
    assert report.failed == 1


def test_concurrency_limit_is_never_exceeded(store):
    """concurrency=2: never more than two runs of the stage at once."""
    lock = threading.Lock()
    now = {"running": 0, "peak": 0}

    @stage(concurrency=2)
    def limited(item):
        with lock:
            now["running"] += 1
            now["peak"] = max(now["peak"], now["running"])
        time.sleep(0.01)
        with lock:
            now["running"] -= 1
        return 1

    runner = Runner(Pipeline("c", [limited]), store, workers=8)
    runner.submit(*({"id": i} for i in range(30)))
    runner.run()
    assert now["peak"] == 2
    assert runner.counts()["limited"] == {"completed": 30}


def test_retry_policy_is_a_plain_callable(store):
    """Any (attempt, error) -> seconds | None callable is a retry policy."""
    calls = []

    def twice_quickly(attempt, error):
        return 0.0 if attempt < 2 else None

    @stage(retry=twice_quickly)
    def s(item):
        calls.append(1)
        raise RuntimeError("x")

    runner = Runner(Pipeline("c", [s]), store)
    runner.submit({"id": 1})
    runner.run()
    assert len(calls) == 2


@pytest.mark.parametrize("bad", [0, -1, True, "3"])
def test_bad_retry_values(bad):
    """retry must be an int >= 1 or a policy."""
    from treadle import InvalidStageError

    with pytest.raises(InvalidStageError):
        stage(retry=bad)(lambda item: None)
