"""``treadle.instrument``: hooks around every run of user code, in its own thread or task."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from treadle import FanOut, Pipeline, Runner, instrument, open_store, stage
from treadle.verdicts import Accepted, Rejected

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def seen() -> Iterator[list[tuple[Any, ...]]]:
    got: list[tuple[Any, ...]] = []
    inside = threading.local()

    @contextlib.contextmanager
    def record(execution: instrument.Execution) -> Iterator[None]:
        inside.current = execution
        try:
            yield
        finally:
            got.append((execution.kind, execution.stage, execution.subtask, execution.attempt,
                        execution.outcome, execution.error, threading.current_thread().name))

    record.inside = inside  # type: ignore[attr-defined]
    instrument.add(record)
    yield got
    instrument.remove(record)


def test_every_kind_of_run_is_wrapped_with_its_outcome(seen):
    """Stages, subtasks, gates and rollbacks each pass through the instrument, in the
    worker thread, with their outcome and error."""
    tries = {"n": 0}

    def gate(item, output, ctx):
        return Accepted() if ctx.attempt > 1 else Rejected("again")

    @stage(gate=gate, retry=2)
    def draft(item, ctx):
        return ctx.attempt

    @stage(after=[draft], rollback=lambda item: None)
    def fan(item):
        return FanOut({"ok": lambda: 1})

    @stage(after=[fan])
    def boom(item):
        tries["n"] += 1
        raise ValueError("boom")

    runner = Runner(Pipeline("inst", [draft, fan, boom], on_failure="rollback"),
                    open_store("memory://"))
    runner.submit({"id": "x"})
    runner.run()
    kinds = [(k, st, sub, a, out) for k, st, sub, a, out, _, _ in seen]
    assert ("gate", "draft", None, 1, "rejected") in kinds
    assert ("stage", "draft", None, 1, "pending") in kinds
    assert ("gate", "draft", None, 2, "accepted") in kinds
    assert ("stage", "draft", None, 2, "completed") in kinds
    assert ("stage", "fan", None, 1, "fanout") in kinds
    assert ("subtask", "fan", "ok", 1, "completed") in kinds
    assert ("stage", "boom", None, 1, "failed") in kinds
    assert ("rollback", "fan", None, 1, "rolled_back") in kinds
    errors = {(k, st): e for k, st, _, _, _, e, _ in seen}
    assert errors[("stage", "boom")] == "ValueError: boom"
    assert all(name.startswith("treadle-") for *_, name in seen)


def test_instruments_wrap_coroutines_on_the_event_loop(seen):
    """An async stage is wrapped inside its task; a timeout shows as a failed attempt."""
    @stage(timeout=0.2)
    async def slow(item):
        await asyncio.sleep(0 if item["id"] == "fast" else 5)
        return 1

    runner = Runner(Pipeline("ainst", [slow]), open_store("memory://"))
    runner.submit({"id": "fast"}, {"id": "slow"})
    runner.run()
    outcomes = sorted(out for _, _, _, _, out, _, _ in seen)
    assert outcomes == ["cancelled", "completed"]
    assert {name for *_, name in seen} == {"treadle-async"}


def test_a_broken_instrument_never_breaks_a_stage():
    """An instrument that raises on entry or exit is logged and ignored."""
    @contextlib.contextmanager
    def broken(execution: instrument.Execution) -> Iterator[None]:
        raise RuntimeError("instrument bug")
        yield  # pragma: no cover

    class BadExit:
        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: Any) -> None:
            raise RuntimeError("exit bug")

    @stage()
    def fine(item):
        return 1

    instrument.add(broken)
    instrument.add(lambda execution: BadExit())
    try:
        runner = Runner(Pipeline("broken", [fine]), open_store("memory://"))
        runner.submit({"id": "x"})
        assert runner.run().completed == 1
    finally:
        instrument._instruments.clear()
