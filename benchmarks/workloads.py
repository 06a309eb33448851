"""The measured treadle workloads. Each function runs inside a fresh child
process (see ``_child.py``), takes the measurement's spec and returns a dict
of plain numbers.

Every workload uses the same pipeline shape: five no-op stages in a line,
``s1 -> s2 -> s3 -> s4 -> s5``, each returning ``{"ok": 1}``; items are dicts
``{"id": i}``. Only public treadle API is used.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from treadle import Pipeline, Runner, open_store, stage

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


KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "w1": w1_linear, "w4": w4_status, "w5_build": w5_build, "w5_resume": w5_resume,
}
