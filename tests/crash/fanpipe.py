"""The pipeline of the fan-out resume kill test (tests/test_crash_fanout.py).

``fan -> join``: ``fan`` returns a FanOut of four subtasks, ``join`` checks
what they returned. With ``mode="plan"`` the subtasks are
``SubTask(name, lookup, item_id, name)``, a module-level function with JSON
arguments, so a fan-out cut short is rebuilt from its stored plan; with
``mode="closure"`` they are closures, so it is rebuilt by calling ``fan``
again. The stage function and every subtask append one line ``item key
attempt pid`` to the log named by ``$FANRESUME_LOG`` before they work
(``key`` is ``fan`` or ``fan/<subtask>``; a subtask is not told its attempt:
``0``).
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from treadle import FanOut, Pipeline, SubTask, stage

NAME = "fanresume"
SUBTASKS = ("s0", "s1", "s2", "s3")


def effect(key: str, item_id: str, attempt: int) -> None:
    """Record, durably, that ``key`` of ``item_id`` starts in this process (one short
    append: lines of concurrent writers never interleave)."""
    with open(os.environ["FANRESUME_LOG"], "a") as log:
        log.write(f"{item_id} {key} {attempt} {os.getpid()}\n")
        log.flush()
        os.fsync(log.fileno())


def lookup(item_id: str, name: str) -> str:
    """One subtask: logs, dawdles up to ``$FANRESUME_SLEEP`` seconds, answers."""
    effect(f"fan/{name}", item_id, 0)
    pause = float(os.environ.get("FANRESUME_SLEEP", "0"))
    if pause > 0:
        time.sleep(random.uniform(0.0, pause))
    return f"{name}({item_id})"


def expected(item_id: str) -> dict[str, str]:
    return {n: f"{n}({item_id})" for n in SUBTASKS}


def build(mode: str) -> Pipeline:
    """The pipeline; ``mode`` is ``plan`` (rebuildable subtasks) or ``closure``."""

    @stage()
    def fan(item: dict[str, Any], ctx: Any) -> FanOut:
        effect("fan", item["id"], ctx.attempt)
        if mode == "plan":
            return FanOut([SubTask(n, lookup, item["id"], n) for n in SUBTASKS])
        return FanOut({n: (lambda n=n: lookup(item["id"], n)) for n in SUBTASKS})

    @stage(after=[fan])
    def join(item: dict[str, Any], ctx: Any) -> list[str]:
        if ctx.outputs["fan"] != expected(item["id"]):
            raise AssertionError(f"{item['id']}: fan output {ctx.outputs['fan']!r}")
        return sorted(ctx.outputs["fan"].values())

    return Pipeline(NAME, [fan, join])


def items(n: int) -> list[dict[str, str]]:
    return [{"id": f"i{k:04d}"} for k in range(n)]
