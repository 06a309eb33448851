"""Nested pipelines: Spawn, waiting parents, settlement, retry, cancel, cycles."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from treadle import (
    ItemState,
    Pipeline,
    PipelineCycleError,
    PipelineDefinitionError,
    Runner,
    Spawn,
    StageState,
    open_store,
    stage,
)
from treadle.store.base import StateStore

from .nested.albums import ALBUMS, TRACKS, album, albums, tracks

pytestmark = pytest.mark.timeout(120)


def _run(store: StateStore, *items: Any) -> Runner:
    runner = Runner(albums, store, workers=4)
    runner.submit(*items)
    runner.run()
    return runner


def test_three_parents_five_children_complete_after_their_children(store: StateStore,
                                                                   tmp_path: Path,
                                                                   monkeypatch: Any) -> None:
    """Each parent waits for its 5 children, then completes with their outputs."""
    log = tmp_path / "log"
    monkeypatch.setenv("NESTED_LOG", str(log))
    runner = _run(store, *(album(a) for a in ALBUMS))
    children = Runner(tracks, store)
    for a in ALBUMS:
        status = runner.status(a)
        assert status.state == ItemState.COMPLETED
        split = status.stages["split"]
        assert split.state == StageState.COMPLETED
        ids = [f"{a}/t{n}" for n in range(TRACKS)]
        assert sorted(split.output) == ids
        assert split.output[f"{a}/t0"]["identify"] == {"title": f"{a} song 0".upper(),
                                                       "confidence": 0.9}
        assert status.stages["export"].output == {"tracks": ids}
        for child in ids:
            assert children.status(child).state == ItemState.COMPLETED
        # the parent completed after every child had: its history says so
        history = runner.history(a)
        done = [h for h in history if h.stage == "split" and h.state == "completed"]
        assert len(done) == 1 and done[0].actor == "children"
        last_child = max(h.at for c in ids for h in children.history(c) if h.state == "completed")
        assert done[0].at >= last_child
    runs = Counter(line.split()[0] for line in log.read_text().splitlines())
    assert runs == {"split": 3, "export": 3, "identify": 15, "check": 15}


def test_rejected_child_fails_the_parent_and_retry_reruns_only_it(store: StateStore,
                                                                 tmp_path: Path,
                                                                 monkeypatch: Any) -> None:
    """One rejected child fails its parent, naming it; retry of the parent reruns only it."""
    log = tmp_path / "log"
    monkeypatch.setenv("NESTED_LOG", str(log))
    runner = _run(store, album("album-1", low=(3,)), album("album-2"))
    children = Runner(tracks, store)
    assert runner.status("album-1").stages["split"].state == StageState.WAITING
    assert runner.status("album-1").state == ItemState.RUNNING
    assert [s.item_id for s in children.items(stage="check", state="awaiting_review")] == [
        "album-1/t3"]
    children.reject("album-1/t3", "check", reason="wrong album")
    status = runner.status("album-1")
    assert status.state == ItemState.FAILED
    assert status.stages["split"].state == StageState.FAILED
    assert "album-1/t3 rejected at check (wrong album)" in (status.stages["split"].error or "")
    assert status.stages["export"].state == StageState.PENDING
    assert runner.status("album-2").state == ItemState.COMPLETED

    before = log.read_text().splitlines()
    assert runner.retry("album-1") == [("album-1", "split")]
    assert runner.status("album-1").stages["split"].state == StageState.WAITING
    runner.run()
    again = log.read_text().splitlines()[len(before):]
    assert sorted(line.split()[:2] for line in again) == [["check", "album-1/t3"]]
    children.approve("album-1/t3", "check")
    runner.run()
    status = runner.status("album-1")
    assert status.state == ItemState.COMPLETED
    assert status.stages["split"].output["album-1/t3"]["check"]["confidence"] == 0.2


def test_failed_children_ignored_with_collect(store: StateStore) -> None:
    """on_child_failure="ignore" completes with the children that did; collect shapes it."""

    @stage()
    def work(item: dict[str, Any]) -> int:
        if item["n"] == 2:
            raise ValueError("two is bad")
        return int(item["n"]) * 10

    kids = Pipeline("kids", [work])

    @stage(spawns=kids, on_child_failure="ignore",
           collect=lambda done: sum(o["work"] for o in done.values()))
    def fan(item: dict[str, Any]) -> Spawn:
        return Spawn(kids, [{"id": n, "n": n} for n in range(4)])

    parents = Pipeline("parents", [fan])
    runner = Runner(parents, store)
    runner.submit({"id": "p"})
    runner.run()
    assert runner.status("p").stages["fan"].output == 0 + 10 + 30
    assert Runner(kids, store).status("p/2").state == ItemState.FAILED


def test_two_levels_and_explicit_ids(store: StateStore) -> None:
    """A child may spawn grandchildren; the top completes once the whole tree has."""

    @stage()
    def leaf(item: dict[str, Any]) -> str:
        return f"leaf {item['id']}"

    leaves = Pipeline("leaves", [leaf])

    @stage(spawns=leaves, collect=lambda done: sorted(done))
    def middle(item: dict[str, Any], ctx: Any) -> Spawn:
        return Spawn(leaves, [{"id": i} for i in range(2)],
                     ids=[f"{ctx.item_id}:{i}" for i in range(2)])

    middles = Pipeline("middles", [middle])

    @stage(spawns=[middles])
    def top(item: dict[str, Any]) -> Spawn:
        return Spawn("middles", [{"id": "m1"}, {"id": "m2"}])

    @stage(after=[top])
    def total(item: dict[str, Any], ctx: Any) -> int:
        return sum(len(v["middle"]) for v in ctx.outputs["top"].values())

    tops = Pipeline("tops", [top, total])
    assert [p.name for p in tops.tree()] == ["tops", "middles", "leaves"]
    runner = Runner(tops, store)
    runner.submit({"id": "x"})
    runner.run()
    status = runner.status("x")
    assert status.state == ItemState.COMPLETED
    assert status.stages["top"].output == {"x/m1": {"middle": ["x/m1:0", "x/m1:1"]},
                                           "x/m2": {"middle": ["x/m2:0", "x/m2:1"]}}
    assert status.stages["total"].output == 4
    assert [c[2] for c in store.children(tops, "x")] == ["x/m1", "x/m2"]
    assert store.parents("leaves", ["x/m1:0"]) == [("x/m1:0", "middles", "x/m1", "middle")]


def test_a_cycle_between_pipelines_is_a_definition_error() -> None:
    """A pipeline spawning (through another) into its own name is a PipelineCycleError."""

    @stage()
    def one(item: Any) -> None:
        return None

    a = Pipeline("a", [one])

    @stage(spawns=a)
    def two(item: Any) -> None:
        return None

    b = Pipeline("b", [two])

    @stage(spawns=b)
    def three(item: Any) -> None:
        return None

    with pytest.raises(PipelineCycleError, match="a -> b -> a") as err:
        Pipeline("a", [three])
    assert isinstance(err.value, PipelineDefinitionError)
    assert err.value.stage == "three"
    assert b.parents == {}  # the failed definition registered nothing

    @stage(spawns=b)
    def four(item: Any) -> None:
        return None

    with pytest.raises(PipelineCycleError, match="b -> b"):
        Pipeline("b", [four])


def test_spawn_into_an_undeclared_pipeline_fails_the_stage(store: StateStore) -> None:
    """Spawn must name a pipeline of @stage(spawns=...): otherwise the stage fails, no child."""

    @stage(spawns=tracks)
    def bad(item: Any) -> Spawn:
        return Spawn("elsewhere", [{"id": 1}])

    p = Pipeline("bad_spawner", [bad])
    runner = Runner(p, store)
    runner.submit({"id": "z"})
    runner.run()
    st = runner.status("z").stages["bad"]
    assert st.state == StageState.FAILED
    assert "does not declare" in (st.error or "")
    assert store.children(p, "z") == []


def test_cancel_of_the_parent_cancels_its_children(store: StateStore) -> None:
    """Cancelling a waiting parent cancels its unfinished children; finished ones stay."""
    runner = _run(store, album("album-1", low=(1, 2)))
    children = Runner(tracks, store)
    runner.cancel(["album-1"], reason="withdrawn")
    assert runner.status("album-1").state == ItemState.CANCELLED
    states = {f"album-1/t{n}": children.status(f"album-1/t{n}").state for n in range(TRACKS)}
    assert states == {"album-1/t0": ItemState.COMPLETED, "album-1/t1": ItemState.CANCELLED,
                      "album-1/t2": ItemState.CANCELLED, "album-1/t3": ItemState.COMPLETED,
                      "album-1/t4": ItemState.COMPLETED}


def test_children_history_names_the_parent(store: StateStore) -> None:
    """A child's submission is recorded with its parent (pipeline, item, stage)."""
    _run(store, album("album-1"))
    first = Runner(tracks, store).history("album-1/t0")[0]
    assert first.state == "submitted"
    assert first.details == {"parent": "album-1", "parent_pipeline": "albums",
                             "parent_stage": "split"}


def test_waiting_shows_in_counts(store: StateStore) -> None:
    """The waiting state is counted like any other stage state."""
    runner = _run(store, album("album-1", low=(0,)))
    assert runner.counts()["split"] == {"waiting": 1}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_runners_share_the_children(kind: str, tmp_path: Path, monkeypatch: Any,
                                        request: pytest.FixtureRequest) -> None:
    """Two runners on one store: every child runs once, every parent completes once."""
    url = (f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite"
           else request.getfixturevalue("postgres_url"))
    log = tmp_path / "log"
    monkeypatch.setenv("NESTED_LOG", str(log))
    monkeypatch.setenv("NESTED_SLOW", "0.01")
    first = Runner(albums, open_store(url), workers=3)
    first.submit(*(album(f"album-{n}") for n in range(6)))
    errors: list[BaseException] = []

    def go(runner: Runner) -> None:
        try:
            runner.run()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(r,))
               for r in (first, Runner(albums, open_store(url), workers=3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    assert not errors
    runs = Counter(tuple(line.split()[:2]) for line in log.read_text().splitlines())
    assert set(runs.values()) == {1}
    assert len(runs) == 6 * (2 + 2 * TRACKS)
    for n in range(6):
        assert first.status(f"album-{n}").state == ItemState.COMPLETED
        done = [h for h in first.history(f"album-{n}") if h.stage == "split"
                and h.state == "completed"]
        assert len(done) == 1
