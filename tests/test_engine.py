"""The engine core: one owner per task, nothing hangs, nothing runs twice.

Each test here is the regression test of a bug the engine-core rewrite
removed (issue 12); the number in the docstring is the bug's.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from typing import Any

import pytest

from treadle import (
    FanOut,
    Pipeline,
    Review,
    Runner,
    Skipped,
    StoreError,
    open_store,
    signals,
    stage,
)
from treadle.engine import Scheduler
from treadle.states import StageState

from . import pipelines_pid

pytestmark = pytest.mark.timeout(60)


def _runs(runner: Runner, item_id: Any) -> Counter[tuple[str | None, str | None]]:
    """How many times each (stage, subtask) of an item was claimed (history 'running')."""
    return Counter((h.stage, h.subtask) for h in runner.history(item_id) if h.state == "running")


def _completions(runner: Runner, item_id: Any) -> Counter[tuple[str | None, int]]:
    return Counter((h.stage, h.attempt) for h in runner.history(item_id)
                   if h.state == "completed" and h.subtask is None)


def test_a_late_refused_subtask_never_drops_the_newer_fan_out(store_url):
    """Bug 1: the stage's claim is lost while its fan-out runs and this runner claims it
    again; the old subtasks' late (refused) results leave the new fan-out alone."""
    store = open_store(store_url)
    restarted = threading.Event()
    calls: Counter[str] = Counter()
    box: dict[str, Any] = {}

    def sub(name: str) -> Any:
        def run() -> str:
            calls[name] += 1
            if calls[name] == 1:
                if name == "a":  # the claim of attempt 1 is given back meanwhile
                    r = box["runner"]
                    r.store.release(r.pipeline, r.owner, [("x", "fan", 1)])
                restarted.wait(10)  # return only once attempt 2's subtasks run
            else:
                restarted.set()
                time.sleep(0.5)  # the old subtasks' refusals are committed first
            return name
        return run

    @stage()
    def fan(item):
        return FanOut({"a": sub("a"), "b": sub("b")})

    runner = Runner(Pipeline("late", [fan]), store, workers=4)
    box["runner"] = runner
    runner.submit({"id": "x"})
    runner.run()
    st = runner.status("x").stages["fan"]
    assert st.state == StageState.COMPLETED
    assert st.attempts == 2
    assert st.output == {"a": "a", "b": "b"}
    assert not [s for s in runner.status("x").stages.values() if s.state == StageState.RUNNING]


def test_timed_out_stages_that_ignore_cancel_do_not_starve_the_pool(store_url):
    """Bug 2: stages that time out and never return get their threads replaced; run() ends."""
    release = threading.Event()

    @stage(timeout=0.3)
    def stuck(item):
        if item["id"].startswith("hang"):
            release.wait(30)  # ignores ctx.cancelled
        return {"ok": True}

    store = open_store(store_url)
    runner = Runner(Pipeline("stuck", [stuck]), store, workers=2)
    runner.submit(*({"id": f"hang{i}"} for i in range(4)), {"id": "fine1"}, {"id": "fine2"})
    try:
        report = runner.run()
    finally:
        release.set()
    assert report.failed == 4
    for i in range(4):
        st = runner.status(f"hang{i}").stages["stuck"]
        assert st.state == StageState.FAILED and st.error == "StageTimeout: timed out after 0.3 s"
    assert runner.status("fine1").stages["stuck"].state == StageState.COMPLETED
    assert runner.status("fine2").stages["stuck"].state == StageState.COMPLETED


def test_a_slow_receiver_never_lets_the_lease_lapse(tmp_path):
    """Bug 4: a receiver blocking for longer than the lease does not delay the heartbeat:
    a second runner on the same store takes over nothing, nothing runs twice."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    slow_once = threading.Event()

    @stage()
    def s1(item):
        time.sleep(0.05)
        return 1

    @stage(after=[s1])
    def s2(item):
        time.sleep(0.05)
        return 2

    pipeline = Pipeline("slowrecv", [s1, s2])

    def receiver(sender, **kw):
        if not slow_once.is_set():
            slow_once.set()
            time.sleep(2.5)

    signals.stage_completed.connect(receiver, sender=pipeline, weak=False)
    try:
        r1 = Runner(pipeline, open_store(url), workers=2, lease=1.0)
        r1.submit(*({"id": i} for i in range(30)))
        t = threading.Thread(target=r1.run, daemon=True)
        t.start()
        assert slow_once.wait(10)
        time.sleep(1.5)  # r1's receiver is still blocked; its lease would have lapsed
        r2 = Runner(pipeline, open_store(url), workers=2, lease=1.0)
        r2.run()
        t.join(30)
        assert not t.is_alive()
    finally:
        signals.stage_completed.disconnect(receiver, sender=pipeline)
    for i in range(30):
        runs = _runs(r2, i)
        assert runs[("s1", None)] == 1 and runs[("s2", None)] == 1, (i, runs)
    assert r2.item_counts(exact=True) == {"completed": 30}


class _LostReply(Exception):
    """Stands for a driver error meaning the connection was lost."""


def test_a_fan_out_committed_with_its_reply_lost_is_not_given_back(store_url):
    """Bug 5: a commit that starts a fan-out, applied but its reply lost, is retried; the
    fan-out stays this runner's: the stage function and each subtask run once."""
    store = open_store(store_url)
    calls: Counter[str] = Counter()
    real_commit = store.commit
    lost = {"done": False}

    def commit(*args: Any, **kwargs: Any) -> Any:
        result = real_commit(*args, **kwargs)
        if kwargs.get("fanouts") and not lost["done"]:
            lost["done"] = True
            raise _LostReply("server closed the connection unexpectedly")
        return result

    store.commit = commit  # type: ignore[method-assign]
    store.is_disconnect = lambda exc: isinstance(exc, _LostReply)  # type: ignore[method-assign]

    def sub(name: str) -> Any:
        def run() -> str:
            calls[name] += 1
            return name
        return run

    @stage()
    def fan(item):
        calls["fan"] += 1
        return FanOut({"p": sub("p"), "q": sub("q")})

    @stage(after=[fan])
    def after(item, ctx):
        return sorted(ctx.outputs["fan"])

    runner = Runner(Pipeline("lostfan", [fan, after]), store)
    runner.submit({"id": "x"})
    runner.run()
    assert lost["done"]
    assert calls == {"fan": 1, "p": 1, "q": 1}
    assert runner.status("x").stages["after"].output == ["p", "q"]


def test_claims_follow_a_process_pools_capacity(tmp_path):
    """Bug 8: with a 2-process pool, 16 stages of 0.4 s with a 3 s timeout all complete:
    the runner hands the pool what it can run, and the clock starts then."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as pool:
        runner = Runner(pipelines_pid.napping, open_store(f"sqlite:///{tmp_path / 'n.db'}"),
                        executor=pool)
        runner.submit(*({"id": i} for i in range(16)))
        report = runner.run()
    assert report.failed == 0, report.failures
    assert report.completed == 16


def test_verdict_as_a_skip_reason_or_subtask_name_is_just_a_name(store_url):
    """Bug 9: ``Skipped("verdict")`` and a subtask named ``verdict`` are not mistaken for gates."""
    @stage()
    def skip(item):
        return Skipped("verdict")

    @stage()
    def fan(item):
        return FanOut({"verdict": lambda: 1 / 0})

    runner = Runner(Pipeline("names", [skip, fan]), open_store(store_url))
    runner.submit({"id": "x"})
    report = runner.run()
    st = runner.status("x").stages
    assert st["skip"].state == StageState.SKIPPED
    assert st["fan"].state == StageState.FAILED
    assert "ZeroDivisionError" in st["fan"].subtasks["verdict"].error
    assert report.failed == 1


def test_finished_stages_leave_the_deadline_heap():
    """Bug 13: the deadline heap does not keep every finished stage with a timeout."""
    @stage(timeout=3600)
    def quick(item):
        return 1

    pipeline = Pipeline("deadlines", [quick])
    store = open_store("memory://")
    Runner(pipeline, store).submit(*({"id": i} for i in range(3000)))
    store.prepare(pipeline)
    sched = Scheduler(pipeline, store, owner="test:deadlines", workers=4, executor=None,
                      lease=30.0, grace=1.0)
    counters = sched.run()
    assert counters.completed == 3000
    assert sched.slots.deadline_count < 300


def test_a_lone_surrogate_in_an_error_is_stored_escaped(store_url):
    """Bug 14: an error message with a lone surrogate (os.fsdecode of bad bytes) is stored
    escaped; the run goes on for the other items."""
    @stage()
    def parse(item):
        if item["id"] == "bad":
            raise ValueError("cannot open " + os.fsdecode(b"caf\xe9.txt"))
        return {"ok": 1}

    runner = Runner(Pipeline("surrogate", [parse]), open_store(store_url))
    runner.submit({"id": "bad"}, {"id": "good"})
    report = runner.run()
    assert report.failed == 1 and report.completed == 1
    assert runner.status("bad").stages["parse"].error == "ValueError: cannot open caf\\udce9.txt"


def test_one_result_the_store_refuses_does_not_block_the_others(store_url):
    """Bug 14: when a group commit fails because of one result, the others commit and that
    stage fails with a SerializationError saying it could not be stored."""
    store = open_store(store_url)
    real_commit = store.commit

    def commit(shape: Any, owner: str, transitions: Any, *args: Any, **kwargs: Any) -> Any:
        if any(t.output and "POISON" in t.output for t in transitions):
            raise UnicodeEncodeError("utf-8", "POISON", 0, 1, "surrogates not allowed")
        return real_commit(shape, owner, transitions, *args, **kwargs)

    store.commit = commit  # type: ignore[method-assign]

    @stage()
    def make(item):
        return "POISON" if item["id"] == 3 else item["id"]

    @stage(after=[make])
    def use(item, ctx):
        return ctx.outputs["make"]

    runner = Runner(Pipeline("poison", [make, use]), store, workers=2)
    runner.submit(*({"id": i} for i in range(8)))
    report = runner.run()
    assert report.failed == 1
    bad = runner.status(3).stages["make"]
    assert bad.state == StageState.FAILED
    assert bad.error.startswith("SerializationError: the result could not be stored")
    for i in (0, 1, 2, 4, 5, 6, 7):
        assert runner.status(i).stages["use"].output == i


def test_receivers_raising_keyboard_interrupt_break_nothing(store_url):
    """Bug 16: receivers raising KeyboardInterrupt / SystemExit are logged and ignored by
    run(), submit() and approve_all(); every stage runs once, at attempt 1."""
    @stage()
    def work(item):
        return 1

    @stage(after=[work])
    def check(item):
        return Review({"ok": True})

    pipeline = Pipeline("kbi", [work, check])

    def interrupt(sender, **kw):
        raise KeyboardInterrupt

    def leave(sender, **kw):
        raise SystemExit(3)

    connected = [(signals.item_submitted, interrupt), (signals.stage_started, interrupt),
                 (signals.stage_completed, leave), (signals.review_decided, interrupt)]
    for sig, fn in connected:
        sig.connect(fn, sender=pipeline, weak=False)
    try:
        runner = Runner(pipeline, open_store(store_url), workers=2)
        assert len(runner.submit(*({"id": i} for i in range(20)))) == 20
        report = runner.run()
        assert report.awaiting_review == 20
        assert len(runner.approve_all("check").done) == 20
    finally:
        for sig, fn in connected:
            sig.disconnect(fn, sender=pipeline)
    for i in range(20):
        st = runner.status(i)
        assert st.state == "completed"
        assert st.stages["work"].attempts == 1


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="needs the main thread for SIGINT")
def test_a_second_ctrl_c_still_gives_unstarted_claims_back(tmp_path):
    """Bug 16: a KeyboardInterrupt out of run() (Ctrl-C twice) leaves nothing running, and
    claims that never started go back with their attempt number."""
    started = threading.Event()

    @stage()
    def slow(item):
        if not started.is_set():
            started.set()
            os.kill(os.getpid(), signal.SIGINT)   # stop: finish what runs, claim nothing
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGINT)   # and again: KeyboardInterrupt
        time.sleep(0.5)
        return 1

    runner = Runner(Pipeline("ctrlc", [slow]), open_store(f"sqlite:///{tmp_path / 'c.db'}"),
                    workers=1, grace=5.0)
    runner.submit(*({"id": i} for i in range(20)))
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    statuses = [runner.status(i).stages["slow"] for i in range(20)]
    assert not [s for s in statuses if s.state == StageState.RUNNING]
    assert sorted(s.attempts for s in statuses).count(0) >= 18  # never started: attempt 0
    again = Runner(Pipeline("ctrlc", [slow]), open_store(f"sqlite:///{tmp_path / 'c.db'}"))
    again.run()
    assert all(again.status(i).stages["slow"].attempts == 1 for i in range(20)
               if statuses[i].attempts == 0)


def test_registration_survives_a_lost_connection(store_url):
    """Bug 15: a connection lost while registering or unregistering the runner is retried."""
    store = open_store(store_url)
    fails = Counter[str]()
    for name in ("register_runner", "unregister_runner"):
        real = getattr(store, name)

        def flaky(*args: Any, _real: Any = real, _name: str = name) -> Any:
            if fails[_name] < 2:
                fails[_name] += 1
                raise _LostReply("connection reset")
            return _real(*args)

        setattr(store, name, flaky)
    store.is_disconnect = lambda exc: isinstance(exc, _LostReply)  # type: ignore[method-assign]

    @stage()
    def one(item):
        return 1

    runner = Runner(Pipeline("reg", [one]), store)
    runner.submit({"id": "x"})
    assert runner.run().completed == 1
    assert fails == {"register_runner": 2, "unregister_runner": 2}


def test_a_result_the_store_refuses_even_as_a_failure_is_given_back(store_url):
    """If the store refuses a result and its failure record too, the claim is given back
    and run() ends with a StoreError naming it (no endless retry); the rest committed."""
    store = open_store(store_url)
    real_commit = store.commit

    def commit(shape: Any, owner: str, transitions: Any, *args: Any, **kwargs: Any) -> Any:
        if any(t.item_id == "bad" for t in transitions):
            raise ValueError("the driver refuses everything about 'bad'")
        return real_commit(shape, owner, transitions, *args, **kwargs)

    store.commit = commit  # type: ignore[method-assign]

    @stage()
    def one(item):
        return item["id"]

    runner = Runner(Pipeline("refused", [one]), store)
    runner.submit({"id": "bad"}, {"id": "good"})
    with pytest.raises(StoreError, match=r"refuses to record the results of \[\('bad', 'one', 1\)\]"):
        runner.run()
    assert runner.status("good").stages["one"].state == StageState.COMPLETED
    assert runner.status("bad").stages["one"].state == StageState.PENDING


class _StoreTrouble(Exception):
    """Stands for a database error that is not about a value (a lock held too long)."""


def test_store_trouble_ends_the_run_and_records_no_failure(store_url):
    """A commit failing for a reason other than a value (e.g. a lock held past the busy
    timeout) ends run() with a StoreError; the stages are not recorded as failed."""
    store = open_store(store_url)
    real_commit = store.commit
    calls = {"n": 0}

    def commit(shape: Any, owner: str, transitions: Any, *args: Any, **kwargs: Any) -> Any:
        if transitions:
            calls["n"] += 1
            raise _StoreTrouble("database is locked")
        return real_commit(shape, owner, transitions, *args, **kwargs)

    store.commit = commit  # type: ignore[method-assign]

    @stage()
    def one(item):
        return 1

    runner = Runner(Pipeline("trouble", [one]), store)
    runner.submit({"id": "x"})
    with pytest.raises(StoreError, match="database is locked"):
        runner.run()
    st = runner.status("x").stages["one"]
    assert st.state == StageState.PENDING and st.error != "failed"


def test_an_async_stage_that_swallows_its_cancellation_still_times_out():
    """A coroutine that catches CancelledError at its timeout does not hold the stage."""
    import asyncio

    @stage(timeout=0.3)
    async def stubborn(item):
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue  # ignores the cancellation

    runner = Runner(Pipeline("stubborn", [stubborn]), open_store("memory://"), grace=0.5)
    runner.submit({"id": "x"})
    started = time.monotonic()
    report = runner.run()
    # the grace period, then at most AsyncPool.SHUTDOWN_WAIT for the loop thread it keeps
    assert time.monotonic() - started < 8.0
    assert report.failed == 1
    assert runner.status("x").stages["stubborn"].error == "StageTimeout: timed out after 0.3 s"


def test_a_timed_out_thread_that_returns_late_retires_no_live_thread():
    """workers=1: stages that time out and never return use up the spare threads; one
    that returns late must not retire a thread that queued work needs."""
    release = threading.Event()

    @stage(timeout=0.3)
    def slow(item):
        if item["id"].startswith("hang"):
            release.wait(60)
        elif item["id"] == "late":
            time.sleep(1.0)
        return 1

    runner = Runner(Pipeline("retire", [slow]), open_store("memory://"), workers=1)
    runner.submit(*({"id": f"hang{i}"} for i in range(4)), {"id": "late"},
                  *({"id": f"q{i}"} for i in range(3)))
    try:
        report = runner.run()
    finally:
        release.set()
    assert report.failed == 5
    assert all(runner.status(f"q{i}").stages["slow"].state == StageState.COMPLETED
               for i in range(3))


def test_a_rollback_that_hangs_times_out_with_its_stage_timeout():
    """A rollback runs under its stage's timeout; past it, it is recorded as failed."""
    release = threading.Event()

    def undo(item):
        release.wait(60)

    @stage(timeout=0.3, rollback=undo)
    def book(item):
        return 1

    @stage(after=[book])
    def pay(item):
        raise RuntimeError("declined")

    runner = Runner(Pipeline("hangrb", [book, pay], on_failure="rollback"),
                    open_store("memory://"))
    runner.submit({"id": "x"})
    try:
        runner.run()
    finally:
        release.set()
    st = runner.status("x").stages["book"]
    assert st.state == StageState.COMPLETED
    assert "rollback failed: StageTimeout: rollback timed out after 0.3 s" in st.error


def test_run_returns_only_after_receivers_acted(store_url):
    """A receiver that approves on review_required: the same run() moves the item on."""
    @stage()
    def draft(item):
        return Review({"ok": True})

    @stage(after=[draft])
    def publish(item, ctx):
        return ctx.outputs["draft"]

    pipeline = Pipeline("autoapprove", [draft, publish])
    runner = Runner(pipeline, open_store(store_url))

    def approve(sender, item_id, stage, **kw):
        runner.approve(item_id, stage)

    signals.review_required.connect(approve, sender=pipeline, weak=False)
    try:
        runner.submit(*({"id": i} for i in range(5)))
        runner.run()
    finally:
        signals.review_required.disconnect(approve, sender=pipeline)
    assert runner.item_counts(exact=True) == {"completed": 5}


def test_an_executor_that_refuses_a_task_goes_through_the_retry_policy():
    """An error from the pool itself (not the stage) is retried like a stage error."""
    from concurrent.futures import ThreadPoolExecutor

    class Flaky(ThreadPoolExecutor):
        refused = 0

        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            if Flaky.refused == 0:
                Flaky.refused += 1
                raise RuntimeError("executor busy")
            return super().submit(fn, *args, **kwargs)

    @stage(retry=3)
    def one(item):
        return 1

    with Flaky(2) as pool:
        runner = Runner(Pipeline("flakyex", [one]), open_store("memory://"), executor=pool)
        runner.submit({"id": "x"})
        runner.run()
    st = runner.status("x").stages["one"]
    assert st.state == StageState.COMPLETED and st.attempts == 2


def test_two_runners_share_slow_work(store_url):
    """Two runners on one store, 60 items of slow stages: both execute stages (a runner
    claims what its workers can run before its next commit, not 128 ahead)."""
    if store_url == "memory://":
        pytest.skip("runners share a store across processes or threads: SQL stores")

    @stage()
    def slow(item):
        time.sleep(0.02)
        return 1

    pipeline = Pipeline("share", [slow])
    Runner(pipeline, open_store(store_url)).submit(*({"id": i} for i in range(60)))
    runners = [Runner(pipeline, open_store(store_url), workers=2) for _ in range(2)]
    threads = [threading.Thread(target=r.run, daemon=True) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    inspect_runner = Runner(pipeline, open_store(store_url))
    actors = Counter(h.actor for i in range(60) for h in inspect_runner.history(i)
                     if h.state == "completed")
    assert sum(actors.values()) == 60
    assert len(actors) == 2, actors


class _Output(dict):  # type: ignore[type-arg]
    """A stage output a weak reference can follow (a plain dict cannot)."""


def test_the_scheduler_keeps_no_output_of_a_finished_stage():
    """Once committed, a stage's output (here 10 KB each, 400 items through two stages)
    is held by nothing of the run, signals delivered included: memory follows the
    work in flight, not the items done (#19)."""
    import gc
    import weakref

    made: list[weakref.ref[_Output]] = []
    lock = threading.Lock()

    @stage()
    def first(item):
        out = _Output(blob="x" * 10_000, id=item["id"])
        with lock:
            made.append(weakref.ref(out))
        return out

    @stage(after=[first])
    def second(item, ctx):
        assert ctx.outputs["first"]["id"] == item["id"]
        out = _Output(n=len(ctx.outputs["first"]["blob"]))
        with lock:
            made.append(weakref.ref(out))
        return out

    def receiver(sender, **kw):
        assert kw["data"] is not None

    pipeline = Pipeline("outputs", [first, second])
    store = open_store("memory://")
    Runner(pipeline, store).submit(*({"id": i} for i in range(400)))
    store.prepare(pipeline)
    sched = Scheduler(pipeline, store, owner="test:outputs", workers=4, executor=None,
                      lease=30.0, grace=1.0)
    signals.stage_completed.connect(receiver, weak=False)  # the reporter keeps values too
    try:
        assert sched.run().completed == 800
    finally:
        signals.stage_completed.disconnect(receiver)
    gc.collect()
    assert len(made) == 800
    assert [r for r in made if r() is not None] == []
    assert store.counts(pipeline) == {"first": {"completed": 400}, "second": {"completed": 400}}
