"""The measured treadle workloads. Each function runs inside a fresh child
process (see ``_child.py``), takes the measurement's spec and returns a dict
of plain numbers.

W1, W4 and W5 use the same pipeline shape: five no-op stages in a line,
``s1 -> s2 -> s3 -> s4 -> s5``, each returning ``{"ok": 1}``. W2 is a fan-out
stage of 8 subtasks followed by a join; W3 is a diamond ending in a review
stage and a publish stage. Items are dicts ``{"id": i}``. Only public treadle
API is used.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from treadle import FanOut, Pipeline, Review, Runner, open_store, stage

from .measure import cpu_seconds, peak_rss_kb, repeat, timed, write_result

STAGES = ("s1", "s2", "s3", "s4", "s5")
PIPELINE_NAME = "bench_linear"


def linear_pipeline(hook: Callable[[], None] | None = None) -> Pipeline:
    """The 5-stage linear pipeline; ``hook()`` (if given) runs at the start of every stage."""
    fns = []
    for i, name in enumerate(STAGES):
        if hook is None:
            def run(item: Any) -> dict[str, int]:
                return {"ok": 1}
        else:
            def run(item: Any) -> dict[str, int]:
                hook()  # a closure, not a default argument: (item, x) would read as (item, ctx)
                return {"ok": 1}
        run.__name__ = run.__qualname__ = name
        fns.append(stage(name=name, after=[STAGES[i - 1]] if i else [])(run))
    return Pipeline(PIPELINE_NAME, fns)


def make_items(start: int, stop: int) -> list[dict[str, int]]:
    return [{"id": i} for i in range(start, stop)]


def _check_all(runner: Runner, state: str, n: int) -> None:
    counts = runner.counts()
    bad = {s: c for s, c in counts.items() if c.get(state, 0) != n}
    if bad:
        raise AssertionError(f"expected {n} {state} per stage, got {bad}")


# -- W1 linear ---------------------------------------------------------------------
def w1_linear(spec: dict[str, Any]) -> dict[str, Any]:
    """Submit N items and run them through the 5 stages to the end."""
    n, workers = int(spec["n"]), int(spec["workers"])
    pipeline = linear_pipeline()
    store = open_store(spec["url"])
    runner = Runner(pipeline, store, workers=workers)
    items = make_items(0, n)
    base_rss = peak_rss_kb()  # after imports, store open and the caller's item list
    submit_s, _ = timed(lambda: runner.submit(*items))
    run_s, report = timed(runner.run)
    transitions = n * len(STAGES)
    if report.completed != transitions:
        raise AssertionError(f"run completed {report.completed} stages, expected {transitions}")
    _check_all(runner, "completed", n)
    store.close()
    return {
        "n": n, "stages": len(STAGES), "workers": workers, "transitions": transitions,
        "submit_s": submit_s, "run_s": run_s, "wall_s": submit_s + run_s,
        "base_rss_kb": base_rss,
    }


# -- W2 fan-out -----------------------------------------------------------------------
FANOUT_WIDTH = 8
FANOUT_PIPELINE = "bench_fanout"


def _subtask(i: int) -> Callable[[], dict[str, int]]:
    def run() -> dict[str, int]:
        return {"v": i}
    run.__name__ = run.__qualname__ = f"s{i}"
    return run


SUBTASKS = {f"s{i}": _subtask(i) for i in range(FANOUT_WIDTH)}


def fanout_pipeline() -> Pipeline:
    """``fan`` returns ``FanOut`` of 8 no-op subtasks; ``join`` reads their outputs."""

    @stage(name="fan")
    def fan(item: Any) -> FanOut:
        return FanOut(dict(SUBTASKS))

    @stage(name="join", after=["fan"])
    def join(item: Any, ctx: Any) -> dict[str, int]:
        got = ctx.outputs["fan"]
        if len(got) != FANOUT_WIDTH:
            raise AssertionError(f"join saw {len(got)} subtask outputs")
        return {"n": len(got)}

    return Pipeline(FANOUT_PIPELINE, [fan, join])


def w2_fanout(spec: dict[str, Any]) -> dict[str, Any]:
    """Submit N items; each runs ``fan`` (8 subtasks) then ``join``."""
    n, workers = int(spec["n"]), int(spec["workers"])
    store = open_store(spec["url"])
    runner = Runner(fanout_pipeline(), store, workers=workers)
    items = make_items(0, n)
    base_rss = peak_rss_kb()
    submit_s, _ = timed(lambda: runner.submit(*items))
    run_s, report = timed(runner.run)
    if report.completed != 2 * n:
        raise AssertionError(f"run completed {report.completed} stages, expected {2 * n}")
    _check_all(runner, "completed", n)
    sample = runner.status(n - 1).stages["fan"]
    if len(sample.subtasks) != FANOUT_WIDTH or any(
            st.state.value != "completed" for st in sample.subtasks.values()):
        raise AssertionError(f"unexpected subtasks {sample.subtasks}")
    store.close()
    stage_completions, subtask_completions = 2 * n, FANOUT_WIDTH * n
    return {
        "n": n, "width": FANOUT_WIDTH, "workers": workers,
        "stage_completions": stage_completions, "subtask_completions": subtask_completions,
        "transitions": stage_completions + subtask_completions,
        "executed": report.executed,
        "submit_s": submit_s, "run_s": run_s, "wall_s": submit_s + run_s,
        "base_rss_kb": base_rss,
    }


# -- W3 diamond with a review gate ---------------------------------------------------
DIAMOND_PIPELINE = "bench_diamond"
DIAMOND_STAGES = ("a", "b", "c", "review", "publish")


def diamond_pipeline() -> Pipeline:
    """``a -> b``, ``a -> c``, ``b + c -> review`` (always asks for review) ``-> publish``."""

    @stage(name="a")
    def a(item: Any) -> dict[str, int]:
        return {"ok": 1}

    @stage(name="b", after=["a"])
    def b(item: Any) -> dict[str, int]:
        return {"ok": 1}

    @stage(name="c", after=["a"])
    def c(item: Any) -> dict[str, int]:
        return {"ok": 1}

    @stage(name="review", after=["b", "c"])
    def review(item: Any, ctx: Any) -> Review:
        return Review({"b": ctx.outputs["b"], "c": ctx.outputs["c"]})

    @stage(name="publish", after=["review"])
    def publish(item: Any, ctx: Any) -> dict[str, int]:
        if "b" not in ctx.outputs["review"]:
            raise AssertionError("publish did not see the approved review data")
        return {"ok": 1}

    return Pipeline(DIAMOND_PIPELINE, [a, b, c, review, publish])


def w3_diamond(spec: dict[str, Any]) -> dict[str, Any]:
    """Run to the review gate, approve half the items one by one, run again."""
    n, workers = int(spec["n"]), int(spec["workers"])
    half = n // 2
    store = open_store(spec["url"])
    runner = Runner(diamond_pipeline(), store, workers=workers)
    items = make_items(0, n)
    base_rss = peak_rss_kb()
    submit_s, _ = timed(lambda: runner.submit(*items))
    run1_s, report1 = timed(runner.run)
    if report1.completed != 3 * n or report1.awaiting_review != n:
        raise AssertionError(f"first run: {report1}")
    list_s, waiting = timed(lambda: runner.items(stage="review", state="awaiting_review", limit=None))
    if len(waiting) != n:
        raise AssertionError(f"items(review, awaiting_review) returned {len(waiting)}")

    def approve_half() -> None:
        for st in waiting[:half]:
            runner.approve(st.item_id, "review")

    approve_s, _ = timed(approve_half)
    run2_s, report2 = timed(runner.run)
    if report2.completed != half:
        raise AssertionError(f"second run: {report2}")
    counts = runner.counts()
    expect = {"a": {"completed": n}, "b": {"completed": n}, "c": {"completed": n},
              "review": {"completed": half, "awaiting_review": n - half},
              "publish": {"completed": half, "pending": n - half}}
    if counts != {k: {s: c for s, c in v.items() if c} for k, v in expect.items()}:
        raise AssertionError(f"unexpected counts {counts}")
    store.close()
    # Transitions: a, b, c completions and review -> awaiting_review (4 per item) in
    # the first run; one approval per approved item; publish for the approved half.
    t_run1, t_approve, t_run2 = 4 * n, half, half
    return {
        "n": n, "approved": half, "workers": workers,
        "transitions_run1": t_run1, "transitions_approve": t_approve,
        "transitions_run2": t_run2, "transitions": t_run1 + t_approve + t_run2,
        "submit_s": submit_s, "run1_s": run1_s, "list_s": list_s, "approve_s": approve_s,
        "run2_s": run2_s, "total_s": run1_s + list_s + approve_s + run2_s,
        "base_rss_kb": base_rss,
    }


# -- W4 status -----------------------------------------------------------------------
def w4_status(spec: dict[str, Any]) -> dict[str, Any]:
    """Time ``counts()`` and ``items(stage=, state=, limit=100)`` over many pending rows."""
    rows, repeats, batch = int(spec["rows"]), int(spec["repeats"]), int(spec.get("batch", 10_000))
    n = max(1, rows // len(STAGES))
    pipeline = linear_pipeline()
    store = open_store(spec["url"])
    runner = Runner(pipeline, store, workers=1)
    t0 = time.perf_counter()
    for start in range(0, n, batch):  # submitted, never run: every stage stays pending
        runner.submit(*make_items(start, min(n, start + batch)))
    build_s = time.perf_counter() - t0
    _check_all(runner, "pending", n)

    def many() -> None:
        got = runner.items(stage="s3", state="pending", limit=100)
        if len(got) != min(100, n):
            raise AssertionError(f"items(s3, pending) returned {len(got)}")

    def none() -> None:
        got = runner.items(stage="s3", state="failed", limit=100)
        if got:
            raise AssertionError(f"items(s3, failed) returned {len(got)}")

    result = {
        "rows": n * len(STAGES), "items": n, "build_s": build_s,
        "counts": repeat(runner.counts, repeats),
        "items_many": repeat(many, repeats),
        "items_none": repeat(none, repeats),
    }
    store.close()
    return result


# -- W5 resume -----------------------------------------------------------------------
def w5_build(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the resume store: N items, the first half run to completion, the rest pending."""
    n = int(spec["n"])
    half = n // 2
    store = open_store(spec["url"])
    runner = Runner(linear_pipeline(), store, workers=int(spec["workers"]))
    t0 = time.perf_counter()
    runner.submit(*make_items(0, half))
    report = runner.run()
    if report.completed != half * len(STAGES):
        raise AssertionError(f"build completed {report.completed} stages")
    runner.submit(*make_items(half, n))
    build_s = time.perf_counter() - t0
    counts = runner.counts()
    if counts["s5"].get("completed", 0) != half or counts["s1"].get("pending", 0) != n - half:
        raise AssertionError(f"unexpected build counts {counts}")
    store.close()
    return {"n": n, "completed_items": half, "pending_items": n - half, "build_s": build_s}


def w5_resume(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: open the store, run, and stop at the first stage executing.

    ``spec["t0"]`` is the parent's ``time.time()`` just before it started this
    process; the first stage to run writes the result and ends the process
    (the store is a throwaway copy, so the claims it leaves behind do not matter).
    """
    entered = time.time()  # treadle and this module are imported by now
    lock = threading.Lock()
    marks: dict[str, float] = {"entered": entered}

    def first_stage() -> None:
        with lock:  # the first caller reports and exits; others wait for the exit
            at = time.time()
            t0 = float(spec["t0"])
            write_result(spec["out"], {
                "n": int(spec["n"]),
                "first_stage_s": at - t0,
                "interpreter_s": float(spec["child_started"]) - t0,
                "imports_s": entered - float(spec["child_started"]),
                "open_store_s": marks["opened"] - entered,
                "run_to_first_stage_s": at - marks["opened"],
                "peak_rss_kb": peak_rss_kb(), "cpu_s": cpu_seconds(),
            })
            os._exit(0)

    store = open_store(spec["url"])
    runner = Runner(linear_pipeline(hook=first_stage), store, workers=int(spec["workers"]))
    marks["opened"] = time.time()
    runner.run()
    raise AssertionError("the run returned without executing any stage")


def w7_large(spec: dict[str, Any]) -> dict[str, Any]:
    """W7 large items (``w7_items.py``)."""
    from .w7_items import w7_large as run

    return run(spec)


KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "w1": w1_linear, "w2": w2_fanout, "w3": w3_diamond, "w4": w4_status,
    "w5_build": w5_build, "w5_resume": w5_resume, "w7": w7_large,
}
