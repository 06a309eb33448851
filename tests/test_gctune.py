"""A run raises Python's default GC thresholds while it runs and restores them
(treadle/engine/gctune.py); a process's own thresholds are left alone."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator

import pytest

from treadle import Pipeline, Runner, StoreError, open_store, stage
from treadle.engine.gctune import DEFAULTS, THRESHOLDS, fewer_collections

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _gc_state() -> Iterator[None]:
    saved, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*saved)
    if enabled:
        gc.enable()
    else:
        gc.disable()


def _seen_by_a_stage(store_url: str) -> list[tuple[int, int, int]]:
    seen: list[tuple[int, int, int]] = []

    @stage()
    def look(item):
        seen.append(gc.get_threshold())
        return {"ok": 1}

    runner = Runner(Pipeline("gc", [look]), open_store(store_url))
    runner.submit({"id": "a"}, {"id": "b"})
    report = runner.run()
    assert report.completed == 2
    return seen


def test_a_run_holds_the_raised_thresholds_and_restores_the_defaults(tmp_path):
    gc.set_threshold(*DEFAULTS)
    seen = _seen_by_a_stage(f"sqlite:///{tmp_path}/gc.db")
    assert seen == [THRESHOLDS, THRESHOLDS]
    assert gc.get_threshold() == DEFAULTS


def test_a_run_also_restores_them_when_it_fails(monkeypatch):
    gc.set_threshold(*DEFAULTS)

    @stage()
    def one(item):
        return {"ok": 1}

    store = open_store("memory://")
    runner = Runner(Pipeline("gcfail", [one]), store)
    runner.submit({"id": "a"})

    def broken(*args, **kwargs):
        assert gc.get_threshold() == THRESHOLDS
        raise OSError("disk on fire")

    monkeypatch.setattr(store, "commit", broken)
    with pytest.raises(StoreError, match="disk on fire"):
        runner.run()
    assert gc.get_threshold() == DEFAULTS


def test_thresholds_the_process_chose_are_kept(tmp_path):
    gc.set_threshold(1234, 5, 6)
    assert _seen_by_a_stage("memory://") == [(1234, 5, 6)] * 2
    assert gc.get_threshold() == (1234, 5, 6)


def test_a_disabled_collector_stays_disabled_with_its_thresholds(tmp_path):
    gc.set_threshold(*DEFAULTS)
    gc.disable()
    assert _seen_by_a_stage("memory://") == [DEFAULTS] * 2
    assert not gc.isenabled() and gc.get_threshold() == DEFAULTS


def test_overlapping_runs_restore_the_defaults_only_when_the_last_one_ends():
    gc.set_threshold(*DEFAULTS)
    first_in, release = threading.Event(), threading.Event()
    during: list[tuple[int, int, int]] = []

    def first() -> None:
        with fewer_collections():
            first_in.set()
            release.wait(10)

    t = threading.Thread(target=first)
    t.start()
    assert first_in.wait(10)
    with fewer_collections():
        release.set()
        t.join(10)
        during.append(gc.get_threshold())  # the first run ended; this one still runs
    assert during == [THRESHOLDS]
    assert gc.get_threshold() == DEFAULTS


def test_garbage_in_cycles_is_still_collected_during_a_run():
    """A stage that drops an object in a reference cycle (a parsed document with parent
    links) must not make the run hold thousands of them: young collections stay as
    frequent as Python's own (a young threshold of 50,000 held all 2,000 here)."""
    gc.set_threshold(*DEFAULTS)
    freed: list[int] = []
    held: list[int] = []  # cycles made but not yet freed, seen by each call

    class Node:
        parent: object

    @stage()
    def parse(item):
        held.append(int(item["id"]) - len(freed))
        doc = Node()
        doc.parent = doc  # a cycle: only the cyclic collector frees it
        weakref.finalize(doc, freed.append, 1)
        return {"ok": 1}

    runner = Runner(Pipeline("cycles", [parse]), open_store("memory://"), workers=1)
    runner.submit(*[{"id": str(i)} for i in range(2000)])
    assert runner.run().completed == 2000
    assert max(held) < 500
