"""The pipeline the crash tests run in subprocesses (see tests/test_crash.py).

A diamond: ``a -> b``, ``a -> c``, ``b + c -> d``, ``d -> e`` (``e`` only
with ``tail=True``). Every stage, when it starts, appends one line
``item_id stage attempt pid`` to a side-effect log (``O_APPEND``, one
``write``, then ``fsync``), then sleeps a little, then checks its inputs and
returns a deterministic output built from the item id and its upstream
outputs. A stage whose inputs are not what its dependencies produced raises,
so a broken data dependency shows up as a failed stage.
"""

from __future__ import annotations

import os
import random
from typing import Any

from treadle import Pipeline, stage

NAME = "crash"


def expected_outputs(item_id: str, tail: bool = True) -> dict[str, Any]:
    """The output every stage of ``item_id`` must end up with."""
    a = f"A({item_id})"
    b = f"B({a})"
    c = f"C({a})"
    d = {"b": b, "c": c, "d": f"D({item_id})"}
    out: dict[str, Any] = {"a": a, "b": b, "c": c, "d": d}
    if tail:
        out["e"] = {"d": d, "e": f"E({item_id})"}
    return out


def stage_names(tail: bool = True) -> list[str]:
    return ["a", "b", "c", "d", "e"] if tail else ["a", "b", "c", "d"]


def build(log_path: str | None = None, *, sleep_min: float = 0.0, sleep_max: float = 0.0,
          tail: bool = True) -> Pipeline:
    """The crash pipeline. ``log_path=None`` builds it for inspection only."""

    rng = random.Random()

    def effect(ctx: Any) -> None:
        """Record that this (item, stage, attempt) started, durably; then dawdle."""
        if log_path is None:
            raise RuntimeError("this pipeline was built for inspection only")
        line = f"{ctx.item_id} {ctx.stage} {ctx.attempt} {os.getpid()}\n".encode()
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if sleep_max > 0:
            ctx.cancelled.wait(rng.uniform(sleep_min, sleep_max))

    def check(ctx: Any, name: str) -> Any:
        want = expected_outputs(ctx.item_id, tail)[name]
        got = ctx.outputs.get(name)
        if got != want:
            raise AssertionError(f"{ctx.item_id}/{ctx.stage}: input {name}={got!r}, expected {want!r}")
        return got

    @stage()
    def a(item: dict, ctx: Any) -> str:
        effect(ctx)
        return f"A({item['id']})"

    @stage(after=[a])
    def b(item: dict, ctx: Any) -> str:
        effect(ctx)
        return f"B({check(ctx, 'a')})"

    @stage(after=[a])
    def c(item: dict, ctx: Any) -> str:
        effect(ctx)
        return f"C({check(ctx, 'a')})"

    @stage(after=[b, c])
    def d(item: dict, ctx: Any) -> dict:
        effect(ctx)
        return {"b": check(ctx, "b"), "c": check(ctx, "c"), "d": f"D({item['id']})"}

    @stage(after=[d])
    def e(item: dict, ctx: Any) -> dict:
        effect(ctx)
        return {"d": check(ctx, "d"), "e": f"E({item['id']})"}

    return Pipeline(NAME, [a, b, c, d, e] if tail else [a, b, c, d])


def items(n: int) -> list[dict[str, str]]:
    return [{"id": f"i{k:04d}"} for k in range(n)]
