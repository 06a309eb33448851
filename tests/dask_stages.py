"""Stages for the Dask tests: they run in Dask worker processes.

Each execution appends ``item stage start end pid`` to the file named by the
item's ``log`` field (O_APPEND: whole lines from any process).
"""

from __future__ import annotations

import os
import time
from typing import Any

from treadle import FanOut, Pipeline, Review, SubTask, stage


def _log(item: dict[str, Any], what: str, started: float) -> None:
    line = f"{item['id']} {what} {started:.4f} {time.time():.4f} {os.getpid()}\n"
    fd = os.open(item["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def square(item: dict[str, Any], n: int) -> int:
    started = time.time()
    if item["id"] == "bad" and n == 2:
        raise ValueError("no square for bad/2")
    _log(item, f"square{n}", started)
    return n * n


@stage(retry=2)
def load(item, ctx):
    started = time.time()
    if item["id"] == "flaky" and ctx.attempt == 1:
        raise ConnectionError("first attempt fails")
    _log(item, "load", started)
    return {"n": len(item["id"]), "pid": os.getpid()}


@stage(after=[load])
def fan(item):
    return FanOut([SubTask(f"s{n}", square, item, n) for n in (1, 2, 3)])


@stage(after=[load], timeout=1.5)
def maybe_slow(item):
    started = time.time()
    if item["id"] == "slow":
        time.sleep(4)
    _log(item, "maybe_slow", started)
    return "quick"


@stage(after=[fan, maybe_slow])
def check(item, ctx):
    return Review({"total": sum(ctx.outputs["fan"].values())}, message="check the total")


pipeline = Pipeline("dasked", [load, fan, maybe_slow, check])


@stage()
def work(item):
    started = time.time()
    time.sleep(item.get("sleep", 0.3))
    _log(item, "work", started)
    return os.getpid()


@stage(after=[work])
def gpu(item):
    started = time.time()
    time.sleep(0.3)
    _log(item, "gpu", started)
    return "rendered"


simple = Pipeline("dask_simple", [work, gpu])
