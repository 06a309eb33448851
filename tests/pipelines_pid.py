"""Module-level (picklable) stages for the process-pool test."""

import os

from treadle import FanOut, Pipeline, SubTask, stage


def square(x: int) -> int:
    return x * x


@stage()
def where(item):
    return {"pid": os.getpid()}


@stage(after=[where])
def fan(item, ctx):
    return FanOut([SubTask(f"s{i}", square, i) for i in range(3)])


pipeline = Pipeline("pid", [where, fan])


def die(n: int) -> int:
    os._exit(1)  # the worker process dies: the pool breaks


@stage()
def split(item):
    return FanOut([SubTask("ok", square, 2), SubTask("dies", die, 2)])


breaking = Pipeline("breaking", [split])


@stage(timeout=3.0)
def nap(item):
    import time

    time.sleep(0.4)
    return {"pid": os.getpid()}


#: 2 process workers, many 0.4 s stages with a 3 s timeout: none may time out.
napping = Pipeline("napping", [nap])
