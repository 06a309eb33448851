"""Regression tests for bugs found in review (each names the behaviour it protects)."""

from __future__ import annotations

import threading
import time

from treadle import Pipeline, Runner, StageState, open_store, stage

from . import pipelines_pid


def test_rerun_resets_readiness_of_pending_descendants(store):
    """After rerun, a pending downstream stage waits for its rerun dependency again."""
    seen: list[dict] = []
    fail = [True]

    @stage()
    def a(item):
        return {"v": 1}

    @stage(after=[a])
    def b(item, ctx):
        seen.append(dict(ctx.outputs))
        if fail[0]:
            raise RuntimeError("b fails once")
        return ctx.outputs["a"]["v"] + 1

    runner = Runner(Pipeline("rr", [a, b]), store, workers=1)
    runner.submit({"id": "i1"})
    runner.run()
    runner.retry("i1")
    fail[0] = False
    runner.rerun("i1", from_stage="a")
    runner.run()
    assert seen[-1] == {"a": {"v": 1}}
    order = [(h.stage, h.state) for h in runner.history("i1") if h.state in ("running", "completed")]
    assert order[-4:] == [("a", "running"), ("a", "completed"), ("b", "running"), ("b", "completed")]


def test_retry_waits_for_dependencies_added_since(store):
    """retry() of a stage that gained a dependency waits for that dependency."""
    @stage()
    def a(item):
        return 1

    @stage(after=[a])
    def b(item, ctx):
        raise RuntimeError("first version fails")

    runner = Runner(Pipeline("grow", [a, b]), store)
    runner.submit({"id": "x"})
    runner.run()

    @stage()
    def n(item):
        return 2

    @stage(after=[a, n], name="b")
    def b2(item, ctx):
        return ctx.outputs["a"] + ctx.outputs["n"]

    runner2 = Runner(Pipeline("grow", [a, n, b2]), store)
    runner2.retry("x")
    runner2.run()
    assert runner2.status("x").stages["b"].output == 3


def test_timeout_counts_from_the_start_not_from_the_queue(store):
    """Stages queued behind others are not timed out before they start."""
    @stage(timeout=1.0)
    def slow(item):
        time.sleep(0.3)
        return "ok"

    runner = Runner(Pipeline("tq", [slow]), store, workers=1)
    runner.submit(*({"id": f"i{n}"} for n in range(6)))
    report = runner.run()
    assert report.failed == 0 and runner.counts()["slow"] == {"completed": 6}


def test_removed_stage_does_not_leave_stale_item_states(store):
    """After a failing stage is removed from the pipeline, the item counts as completed."""
    @stage()
    def a(item):
        return 1

    @stage(after=[a])
    def b(item):
        raise RuntimeError("b fails")

    Runner(Pipeline("shrink", [a, b]), store).submit({"id": "x"})
    Runner(Pipeline("shrink", [a, b]), store).run()
    runner = Runner(Pipeline("shrink", [a]), store)
    report = runner.run()
    assert report.items == {"completed": 1} and report.ok


def test_a_broken_process_pool_fails_the_subtask_instead_of_hanging(tmp_path):
    """A subtask that kills its worker process fails; run() returns."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as pool:
        runner = Runner(pipelines_pid.breaking, open_store(f"sqlite:///{tmp_path / 'b.db'}"),
                        executor=pool)
        runner.submit({"id": "x"})
        done = threading.Event()
        threading.Thread(target=lambda: (runner.run(), done.set()), daemon=True).start()
        assert done.wait(30), "run() hung on a broken pool"
    st = runner.status("x").stages["split"]
    assert st.state == StageState.FAILED
    assert "BrokenProcessPool" in st.subtasks["dies"].error


def test_nul_characters_in_errors_are_stored(store):
    """An exception message with a NUL byte is stored (escaped) instead of breaking the run."""
    @stage()
    def parse(item):
        raise ValueError("bad byte \x00 here")

    runner = Runner(Pipeline("nul", [parse]), store)
    runner.submit({"id": "x"})
    report = runner.run()
    assert report.failed == 1
    assert runner.status("x").stages["parse"].error == "ValueError: bad byte \\x00 here"


def test_item_cache_overflow_does_not_lose_items_of_the_batch():
    """When the item-JSON cache overflows mid-run, every claimed item is still found."""
    import json

    from treadle.store.itemcache import entry_size

    @stage()
    def s1(item):
        return {"ok": 1}

    store = open_store("memory://?item_cache=600")
    runner = Runner(Pipeline("cache", [s1]), store, workers=4)
    runner.submit(*({"id": i} for i in range(10)))
    store.item_cache.put("cache", {str(i): json.dumps({"id": i}) for i in range(3)})
    assert len(store.item_cache) == 600 // entry_size("0", '{"id": 0}')  # it overflowed
    assert runner.run().completed == 10
