"""Fan-out resume: a fan-out cut short is rebuilt from its stored plan, not by its stage function.

A "crash" here is a runner that claimed the fan-out stage, started its
fan-out and committed one subtask, then vanished (its owner was never
registered, so the next run recovers its claim at once), exactly what the
store holds after a ``kill -9`` at that moment. The subprocess kill test is
tests/test_crash_fanout.py.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from treadle import FanOut, FanOutPlanError, Pipeline, Runner, StageState, SubTask, stage
from treadle.engine.subplan import planned, rebuild
from treadle.outcomes import SubTask as _SubTask
from treadle.store.fanout import FanOutStart, SubResult

DEAD = "dead-host:1:gone"
NAMES = ("mb", "discogs", "wiki")
CALLS: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    CALLS.clear()


def fetch(source: str, title: str, *, loud: bool = False) -> dict[str, Any]:
    """A subtask: one lookup of ``title`` at ``source`` (counted)."""
    CALLS[f"sub:{source}"] += 1
    return {"from": source, "title": title.upper() if loud else title}


class Sources:
    @staticmethod
    def lookup(source: str) -> str:
        return source


def subtasks_for(title: str, rebuildable: bool) -> list[SubTask]:
    if rebuildable:
        return [SubTask(n, fetch, n, title) for n in NAMES]
    return [SubTask(n, lambda n=n: fetch(n, title)) for n in NAMES]


def enrich_pipeline(rebuildable: bool) -> Pipeline:
    @stage()
    def enrich(item: dict[str, Any]) -> FanOut:
        CALLS["stage"] += 1
        return FanOut(subtasks_for(item["title"], rebuildable))

    @stage(after=[enrich])
    def join(item: dict[str, Any], ctx: Any) -> list[str]:
        return [ctx.outputs["enrich"][n]["from"] for n in NAMES]

    return Pipeline("fanplan", [enrich, join])


def crash_mid_fanout(runner: Runner, item_id: str, subtasks: list[SubTask],
                     plan: str | None) -> None:
    """What a runner killed mid fan-out leaves: its claim of ``enrich``, the fan-out
    started with ``plan``, the first subtask committed, the others running."""
    store, p = runner.store, runner.pipeline
    [claim] = store.commit(p, DEAD, [], 1, only=[item_id]).claims
    names = tuple(s.name for s in subtasks)
    store.commit(p, DEAD, [], 0, fanouts=[FanOutStart(item_id, "enrich", claim.attempt, names,
                                                      plan)])
    first = subtasks[0]
    out = json.dumps(first.fn(*first.args, **first.kwargs))
    res = store.commit(p, DEAD, [], 0, subtasks=[SubResult(item_id, "enrich", first.name, 1,
                                                           "completed", output=out)])
    assert len(res.sub_accepted) == 1
    CALLS.clear()


# -- the plan ----------------------------------------------------------------------------
def test_module_level_functions_with_json_arguments_have_a_plan() -> None:
    """SubTask(name, module-level fn, JSON args) and partials of it are written down and
    rebuilt as the same calls."""
    subs = [SubTask("a", fetch, "mb", "Abbey Road", loud=True),
            SubTask("b", functools.partial(fetch, "discogs", loud=True), "Help"),
            SubTask("c", Sources.lookup, "x"),
            SubTask("d", functools.partial(functools.partial(fetch, "wiki"), title="Let It Be"))]
    fanned = planned(subs)
    assert fanned.plan is not None and fanned.why_not is None
    rebuilt = rebuild(fanned.plan, "i1", "enrich").subtasks
    assert [(s.name, s.fn, s.args, dict(s.kwargs)) for s in rebuilt] == [
        ("a", fetch, ("mb", "Abbey Road"), {"loud": True}),
        ("b", fetch, ("discogs", "Help"), {"loud": True}),
        ("c", Sources.lookup, ("x",), {}),
        ("d", fetch, ("wiki",), {"title": "Let It Be"})]
    assert [s.fn(*s.args, **s.kwargs) for s in rebuilt] == [
        s.fn(*s.args, **s.kwargs) for s in subs]


def test_a_plan_carries_the_subtasks_rate_keys_and_rates() -> None:
    """A resumed fan-out keeps its per-key rates: they are written in the plan."""
    from treadle.limits import parse_rate

    subs = [SubTask("mb:1", fetch, "mb", "t"), SubTask("wiki:1", fetch, "wiki", "t")]
    fanned = planned(subs, {"mb:1": "mb"}, {"mb": parse_rate("2/s"), "discogs": None})
    assert fanned.plan is not None
    back = rebuild(fanned.plan, "i1", "enrich")
    assert [s.name for s in back.subtasks] == ["mb:1", "wiki:1"]
    assert back.keys == {"mb:1": "mb"}
    assert back.rates == {"mb": parse_rate("2/s"), "discogs": None}
    assert back.plan == fanned.plan


def _in_main(source: str) -> str:
    return source


_in_main.__module__ = "__main__"  # as if defined in the script being run


@pytest.mark.parametrize("sub, why", [
    (SubTask("x", lambda: 1), "not importable by name"),
    (SubTask("x", functools.partial(lambda t: t, "a")), "not importable by name"),
    (SubTask("x", Sources().lookup.__get__(object())), "not importable by name"),
    (SubTask("x", fetch, ("mb", "t")), "not plain JSON"),             # a tuple comes back a list
    (SubTask("x", fetch, "mb", {1: "t"}), "not plain JSON"),          # an int key comes back a str
    (SubTask("x", fetch, "mb", object()), "not plain JSON"),
    (SubTask("x", fetch, "mb", float("nan")), "not plain JSON"),
    (SubTask("x", functools.partial(fetch, name="n"), "mb"), "collides with SubTask"),
    (SubTask("x", _in_main, "mb"), "(__main__)"),
])
def test_subtasks_that_cannot_be_rebuilt_from_data_have_no_plan(sub: _SubTask, why: str) -> None:
    """A lambda, a closure, a bound method or arguments a JSON round trip would change
    leave the fan-out without a plan, saying which subtask and why."""
    fanned = planned([SubTask("ok", fetch, "mb", "t"), sub])
    assert fanned.plan is None
    assert fanned.why_not is not None and "'x'" in fanned.why_not and why in fanned.why_not


def test_a_closure_in_the_mapping_form_has_no_plan_a_function_has_one() -> None:
    """FanOut({name: callable}): a module-level function is rebuildable, a closure is not."""
    from treadle.engine.worker import subtasks_of

    assert planned(subtasks_of(FanOut({"a": functools.partial(fetch, "mb", "t")}), "s")).plan
    assert planned(subtasks_of(FanOut({"a": lambda: 1}), "s")).plan is None


# -- resume --------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_fanout_cut_short_resumes_without_its_stage_function(store: Any) -> None:
    """After a crash mid fan-out, the rebuildable subtasks are rebuilt from the stored plan:
    the stage function does not run again, the committed subtask keeps its output, only
    the others run, once, and the stage completes as its second attempt."""
    runner = Runner(enrich_pipeline(rebuildable=True), store, workers=2)
    runner.submit({"id": "t1", "title": "Help"}, {"id": "t2", "title": "Yesterday"})
    subs = subtasks_for("Help", True)
    crash_mid_fanout(runner, "t1", subs, planned(subs).plan)
    report = runner.run()
    assert report.items == {"completed": 2}
    assert CALLS == {"stage": 1, "sub:mb": 1, "sub:discogs": 2, "sub:wiki": 2}  # t2: all three
    st = runner.status("t1").stages
    assert st["enrich"].attempts == 2 and st["join"].output == list(NAMES)
    assert st["enrich"].output == {n: {"from": n, "title": "Help"} for n in NAMES}
    assert {n: s.attempts for n, s in st["enrich"].subtasks.items()} == {
        "mb": 1, "discogs": 2, "wiki": 2}
    ran = Counter((h.subtask, h.state) for h in runner.history("t1") if h.subtask)
    assert ran[("mb", "completed")] == ran[("discogs", "completed")] == 1
    assert ran[("mb", "running")] == 1  # never claimed again


@pytest.mark.timeout(60)
def test_a_resume_under_a_foreign_executor_rebuilds_in_the_runner(store: Any) -> None:
    """With an executor of the user's (here a thread pool; a Dask cluster alike) the plan
    is rebuilt in the runner's process and only the subtasks go to the executor."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        runner = Runner(enrich_pipeline(rebuildable=True), store, executor=pool)
        runner.submit({"id": "t1", "title": "Help"})
        subs = subtasks_for("Help", True)
        crash_mid_fanout(runner, "t1", subs, planned(subs).plan)
        assert runner.run().items == {"completed": 1}
    assert CALLS == {"sub:discogs": 1, "sub:wiki": 1}


@pytest.mark.timeout(60)
def test_without_a_plan_the_stage_function_rebuilds_the_fanout(store: Any, caplog: Any) -> None:
    """Closures cannot be stored: after a crash the stage function runs again (today's
    behaviour), the committed subtask still keeps its output, and the runner warns once
    for the stage however many items fan out."""
    runner = Runner(enrich_pipeline(rebuildable=False), store, workers=2)
    runner.submit(*({"id": f"t{k}", "title": "Help"} for k in range(3)))
    subs = subtasks_for("Help", False)
    assert planned(subs).plan is None
    crash_mid_fanout(runner, "t0", subs, None)
    with caplog.at_level(logging.WARNING, logger="treadle.runner"):
        assert runner.run().items == {"completed": 3}
    assert CALLS == {"stage": 3, "sub:mb": 2, "sub:discogs": 3, "sub:wiki": 3}
    assert runner.status("t0").stages["enrich"].attempts == 2
    warned = [r.getMessage() for r in caplog.records if "cannot be stored" in r.getMessage()]
    assert len(warned) == 1 and "'enrich'" in warned[0] and "not importable" in warned[0]


@pytest.mark.timeout(60)
def test_a_plan_naming_a_function_gone_fails_the_stage_and_retry_rebuilds(
        store: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """A code change between crash and resume that removes a subtask's function fails the
    stage with FanOutPlanError naming it (no hang, nothing else touched); a retry calls
    the stage function, which rebuilds the FanOut from the current code."""
    (tmp_path / "gone_lookups.py").write_text(
        "def lookup(source, title):\n    return {'from': source, 'title': title}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    gone = importlib.import_module("gone_lookups")
    runner = Runner(enrich_pipeline(rebuildable=True), store, workers=2)
    runner.submit({"id": "t1", "title": "Help"})
    old = [SubTask("mb", fetch, "mb", "Help"), *(SubTask(n, gone.lookup, n, "Help")
                                                 for n in NAMES[1:])]
    plan = planned(old).plan
    assert plan is not None and "gone_lookups:lookup" in plan
    crash_mid_fanout(runner, "t1", old, plan)
    monkeypatch.delitem(sys.modules, "gone_lookups")
    (tmp_path / "gone_lookups.py").unlink()
    report = runner.run()
    assert report.items == {"failed": 1} and CALLS == {}
    enrich = runner.status("t1").stages["enrich"]
    assert enrich.state == StageState.FAILED and enrich.attempts == 2
    assert enrich.error is not None and enrich.error.startswith("FanOutPlanError: ")
    assert "'gone_lookups:lookup'" in enrich.error and "'discogs'" in enrich.error
    assert "cannot be imported" in enrich.error and "retry" in enrich.error
    assert enrich.subtasks["mb"].state == "completed"
    runner.retry("t1", stage="enrich")
    assert runner.run().items == {"completed": 1}
    assert CALLS == {"stage": 1, "sub:discogs": 1, "sub:wiki": 1}  # mb kept its output
    assert runner.status("t1").stages["join"].output == list(NAMES)


@pytest.mark.parametrize("plan, what", [
    ("{not json", "is unreadable"),
    ('{"v": 99, "subtasks": []}', "format 99"),
    ('{"v": 1, "subtasks": [{"name": "x"}]}', "is unreadable"),
    ('{"v": 1, "subtasks": [{"name": "x", "fn": "tests.test_fanplan:NAMES", "args": [],'
     ' "kwargs": {}}]}', "a tuple, not a function"),
    ('{"v": 1, "subtasks": [{"name": "x", "fn": "tests.test_fanplan:nothing", "args": [],'
     ' "kwargs": {}}]}', "cannot be imported any more (AttributeError"),
])
def test_a_bad_plan_is_a_named_error(plan: str, what: str) -> None:
    """An unreadable plan, one of an unknown format, or one naming something that is not
    a function raises FanOutPlanError naming the item and stage."""
    with pytest.raises(FanOutPlanError) as info:
        rebuild(plan, "i1", "enrich")
    assert what in str(info.value) and "'enrich' of item 'i1'" in str(info.value)
    assert isinstance(info.value, ImportError)
    assert (info.value.item_id, info.value.stage) == ("i1", "enrich")


@pytest.mark.timeout(120)
def test_a_schema_6_store_is_upgraded_and_resumes_fanouts(sql_url: str) -> None:
    """A store left at schema 6 (before plans; no step 7 here) gains the plan table when
    opened, keeps its items, and then resumes a fan-out cut short from its plan."""
    from treadle import open_store
    from treadle.store.schema import SCHEMA_VERSION

    runner = Runner(enrich_pipeline(rebuildable=True), open_store(sql_url))
    runner.submit({"id": "old", "title": "Help"})
    with runner.store.transaction() as tx:  # type: ignore[attr-defined]
        tx._exec("DROP TABLE treadle_fanout_plan")
        tx._exec("UPDATE treadle_meta SET value='6' WHERE key='schema_version'")
    runner.store.close()
    store = open_store(sql_url)
    assert store._read(  # type: ignore[attr-defined]
        "SELECT value FROM treadle_meta WHERE key='schema_version'") == [(str(SCHEMA_VERSION),)]
    runner = Runner(enrich_pipeline(rebuildable=True), store)
    subs = subtasks_for("Help", True)
    crash_mid_fanout(runner, "old", subs, planned(subs).plan)
    assert runner.run().items == {"completed": 1}
    assert CALLS == {"sub:discogs": 1, "sub:wiki": 1}
    store.close()
